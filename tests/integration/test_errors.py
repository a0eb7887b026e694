"""Driver errors surface as the asyncdal tree, for real, on both backends."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import exc as sa_exc

from asyncdal import Database, DatabaseSettings
from asyncdal.errors import ConflictError, InvalidDataError, UnavailableError
from asyncdal.models import Post, User
from asyncdal.users import UserUnitOfWork
from tests.support import Backend


async def test_duplicate_unique_value_is_a_conflict_and_the_next_unit_of_work_works(
    db: Database[UserUnitOfWork],
) -> None:
    async with db.unit_of_work() as uow:
        await uow.users.add(User(name="A", age=1, email="taken@example.com"))
        await uow.commit()
    with pytest.raises(ConflictError, match=r"UserRepository.add\(\) failed") as caught:
        async with db.unit_of_work() as uow:
            await uow.users.add(User(name="B", age=2, email="taken@example.com"))
            await uow.commit()
    assert isinstance(caught.value.__cause__, sa_exc.IntegrityError)
    async with db.unit_of_work() as uow:
        await uow.users.add(User(name="C", age=3, email="free@example.com"))
        await uow.commit()
    async with db.unit_of_work(read_only=True) as uow:
        assert sorted(u.name for u in await uow.users.list()) == ["A", "C"]


async def test_missing_foreign_key_target_is_a_conflict(db: Database[UserUnitOfWork]) -> None:
    with pytest.raises(ConflictError) as caught:
        async with db.unit_of_work() as uow:
            await uow.posts.add(Post(author_id=987654, title="orphan"))
    assert caught.value.__cause__ is not None


async def test_null_in_a_required_column_is_invalid_data(db: Database[UserUnitOfWork]) -> None:
    with pytest.raises(InvalidDataError):
        async with db.unit_of_work() as uow:
            await uow.posts.add(Post(title="no author"))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("name", "x" * 101, "at most 100 characters"),
        ("age", 151, "between 0 and 150"),
        ("age", -1, "between 0 and 150"),
        ("name", "nul\x00byte", "NUL byte"),
    ],
)
async def test_value_the_database_would_reject_is_invalid_data_on_both_backends(
    db: Database[UserUnitOfWork], field: str, value: object, message: str
) -> None:
    async with db.unit_of_work() as uow:
        user = await uow.users.add(User(name="ok", age=1))
        with pytest.raises(InvalidDataError, match=message):
            await uow.users.update(user, **{field: value})
        await uow.commit()
    async with db.unit_of_work(read_only=True) as uow:
        assert (await uow.users.get_one(user.id)).name == "ok"


@pytest.mark.postgres
async def test_unreachable_port_is_unavailable_quickly() -> None:
    db = Database(DatabaseSettings("postgresql+asyncpg://postgres@127.0.0.1:1/test"))
    started = time.monotonic()
    try:
        with pytest.raises(UnavailableError, match=r"__aenter__ failed"):
            async with db.unit_of_work():
                pass
    finally:
        await db.dispose()
    assert time.monotonic() - started < db.settings.connect_timeout


@pytest.mark.postgres
async def test_missing_postgres_database_is_unavailable(pg_server_url: str) -> None:
    db = Database(Backend.replace_database(pg_server_url, "asyncdal_no_such_database"))
    try:
        with pytest.raises(UnavailableError, match="3D000"):
            async with db.unit_of_work():
                pass
    finally:
        await db.dispose()


@pytest.mark.sqlite
async def test_unopenable_sqlite_path_is_unavailable() -> None:
    db = Database("sqlite+aiosqlite:////nonexistent-dir/for/asyncdal.db")
    try:
        with pytest.raises(UnavailableError):
            async with db.unit_of_work():
                pass
    finally:
        await db.dispose()


async def test_after_a_database_error_the_unit_of_work_says_it_has_ended(
    committing_db: Database[UserUnitOfWork],
) -> None:
    from asyncdal.errors import UnitOfWorkStateError

    async with committing_db.unit_of_work() as uow:
        await uow.users.add(User(name="A", age=1, email="once@example.com"))
        with pytest.raises(ConflictError):
            await uow.users.add(User(name="B", age=1, email="once@example.com"))
        with pytest.raises(UnitOfWorkStateError, match=r"UserRepository.count\(\).*rolled back"):
            await uow.users.count()
    assert committing_db.pool_status().checked_out == 0
    async with committing_db.unit_of_work(read_only=True) as uow:
        assert await uow.users.count() == 0
