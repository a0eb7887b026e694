"""Race-free get-or-create: INSERT ... ON CONFLICT DO NOTHING RETURNING, then read the winner."""

from __future__ import annotations

import asyncio

import pytest

from asyncdal import Database
from asyncdal.errors import InvalidDataError, InvalidQueryError, UnitOfWorkStateError
from asyncdal.models import User
from asyncdal.users import UserUnitOfWork
from tests.support import count_statements


async def test_get_or_create_creates_once_then_finds(db: Database[UserUnitOfWork]) -> None:
    async with db.unit_of_work() as uow:
        made, created = await uow.users.get_or_create(
            email="ann@example.com", defaults={"name": "Ann", "age": 30}
        )
        assert created
        assert made in uow.session
        assert (made.name, made.version) == ("Ann", 1)
        await uow.commit()
    async with db.unit_of_work() as uow:
        found, created = await uow.users.get_or_create(
            email="ann@example.com", defaults={"name": "Other", "age": 99}
        )
        assert not created
        assert (found.id, found.name, found.age) == (made.id, "Ann", 30)


async def test_get_or_create_returns_the_loaded_object_of_an_existing_row(
    db: Database[UserUnitOfWork],
) -> None:
    async with db.unit_of_work() as uow:
        loaded = await uow.users.add(User(name="Bob", age=20, email="bob@example.com"))
        found, created = await uow.users.get_or_create(
            email="bob@example.com", defaults={"name": "B", "age": 1}
        )
        assert found is loaded
        assert not created


@pytest.mark.parametrize(
    ("key", "defaults", "error"),
    [
        ({"name": "Ann"}, {"age": 1}, InvalidQueryError),  # not unique
        ({"email": "a@example.com", "name": "Ann"}, {"age": 1}, InvalidQueryError),
        ({}, {"name": "Ann", "age": 1}, InvalidQueryError),
        ({"email": "a@example.com"}, {"colour": "red"}, InvalidQueryError),
        ({"email": "a@example.com"}, {"email": "b@example.com"}, InvalidQueryError),
        ({"email": "a@example.com"}, {"name": "Ann", "age": -1}, InvalidDataError),
        ({"email": "x" * 400}, {"name": "Ann", "age": 1}, InvalidDataError),
        ({"email": None}, {"name": "Ann", "age": 1}, InvalidQueryError),
    ],
)
async def test_get_or_create_checks_key_and_values_before_any_sql(
    db: Database[UserUnitOfWork],
    key: dict[str, object],
    defaults: dict[str, object],
    error: type[Exception],
) -> None:
    async with db.unit_of_work() as uow:
        with count_statements(db.engine) as sent, pytest.raises(error):
            await uow.users.get_or_create(defaults=defaults, **key)
        assert sent == []


async def test_get_or_create_refuses_a_read_only_unit_of_work(
    db: Database[UserUnitOfWork],
) -> None:
    async with db.unit_of_work(read_only=True) as uow:
        with pytest.raises(UnitOfWorkStateError, match="read-only"):
            await uow.users.get_or_create(email="a@example.com", defaults={"name": "A", "age": 1})


async def test_64_concurrent_get_or_create_calls_create_exactly_once(
    committing_db: Database[UserUnitOfWork],
) -> None:
    async def get_or_create(index: int) -> tuple[int, bool]:
        async with committing_db.unit_of_work() as uow:
            user, created = await uow.users.get_or_create(
                email="race@example.com", defaults={"name": f"caller {index}", "age": 30}
            )
            await uow.commit()
            return user.id, created

    results = await asyncio.gather(*(get_or_create(i) for i in range(64)), return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    assert errors == []
    outcomes = [r for r in results if isinstance(r, tuple)]
    assert sum(created for _, created in outcomes) == 1
    assert len({user_id for user_id, _ in outcomes}) == 1
    async with committing_db.unit_of_work(read_only=True) as uow:
        assert await uow.users.count() == 1


async def test_get_or_create_after_the_other_inserter_rolls_back_creates_the_row(
    committing_db: Database[UserUnitOfWork],
) -> None:
    # The first transaction inserts the key and holds it; the second waits on it (PostgreSQL:
    # the unique index; SQLite: the write lock). When the first rolls back, the second must
    # create the row itself, not come back empty-handed.
    holding = asyncio.Event()

    async def first() -> None:
        async with committing_db.unit_of_work() as uow:
            await uow.users.get_or_create(
                email="gone@example.com", defaults={"name": "A", "age": 1}
            )
            holding.set()
            await asyncio.sleep(0.3)
            await uow.rollback()

    async def second() -> tuple[int, bool]:
        await holding.wait()
        async with committing_db.unit_of_work() as uow:
            user, created = await uow.users.get_or_create(
                email="gone@example.com", defaults={"name": "B", "age": 2}
            )
            await uow.commit()
            return user.id, created

    _, (user_id, created) = await asyncio.gather(first(), second())
    assert created
    async with committing_db.unit_of_work(read_only=True) as uow:
        stored = await uow.users.get_one(user_id)
        assert stored.name == "B"
