"""insert_many: checked rows, no tracked objects, all or nothing (COPY on PostgreSQL)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Integer, String, text
from sqlalchemy.engine import Connection
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from asyncdal import Database
from asyncdal.errors import ConflictError, InvalidDataError, InvalidQueryError
from asyncdal.models import Post, User
from asyncdal.users import UserUnitOfWork
from tests.support import count_statements


async def test_insert_many_inserts_dicts_and_new_objects_without_tracking_them(
    db: Database[UserUnitOfWork],
) -> None:
    given = User(name="Obj", age=40, email="obj@example.com")
    async with db.unit_of_work() as uow:
        n = await uow.users.insert_many(
            [{"name": "Ann", "age": 30}, given, {"name": "Bob", "age": 31, "email": None}]
        )
        assert n == 3
        assert len(uow.session.identity_map) == 0
        assert given not in uow.session
        assert given.id is None
        await uow.commit()
    async with db.unit_of_work(read_only=True) as uow:
        stored = await uow.users.list(order_by="name")
    assert [(u.name, u.age, u.email) for u in stored] == [
        ("Ann", 30, None),
        ("Bob", 31, None),
        ("Obj", 40, "obj@example.com"),
    ]


async def test_insert_many_applies_defaults_and_the_version_start_as_a_flush_would(
    db: Database[UserUnitOfWork],
) -> None:
    async with db.unit_of_work() as uow:
        await uow.users.insert_many([{"name": "Ann", "age": 30}])
        flushed = await uow.users.add(User(name="Flushed", age=30))
        await uow.commit()
    async with db.unit_of_work(read_only=True) as uow:
        bulk = (await uow.users.list(name="Ann"))[0]
        (raw,) = (
            await uow.session.execute(
                text("SELECT version, created_at, updated_at FROM users WHERE name = 'Ann'")
            )
        ).all()
    assert bulk.version == flushed.version == 1
    assert isinstance(bulk.created_at, datetime)
    assert isinstance(bulk.updated_at, datetime)
    assert raw[0] == 1
    assert raw[1] is not None
    assert raw[2] is not None
    # The bulk row is updatable like any other: its version is what the ORM expects.
    async with db.unit_of_work() as uow:
        again = await uow.users.get_one(bulk.id)
        again.age = 31
        await uow.commit()
    assert again.version == 2


async def test_insert_many_stores_values_exactly_as_a_flush_does(
    db: Database[UserUnitOfWork],
) -> None:
    when = datetime(2024, 2, 29, 13, 14, 15, 161718, tzinfo=UTC)
    values = {"age": 7, "email": "same@example.com", "created_at": when, "updated_at": when}
    async with db.unit_of_work() as uow:
        await uow.users.insert_many([{"name": "bulk", **values}])
        await uow.users.add(User(name="flush", **{**values, "email": "other@example.com"}))
        await uow.commit()
    async with db.unit_of_work(read_only=True) as uow:
        raw = (
            await uow.session.execute(
                text("SELECT name, created_at, updated_at FROM users ORDER BY name")
            )
        ).all()
        loaded = await uow.users.list(order_by="name")
    assert raw[0][1:] == raw[1][1:]  # the same stored form, down to the text on SQLite
    assert loaded[0].created_at == loaded[1].created_at
    assert (loaded[0].name, loaded[1].name) == ("bulk", "flush")


async def test_insert_many_accepts_any_iterable_and_counts_across_batches(
    db: Database[UserUnitOfWork],
) -> None:
    rows = ({"name": f"u{i}", "age": i % 100} for i in range(2_345))
    async with db.unit_of_work() as uow:
        assert await uow.users.insert_many(rows, batch_size=500) == 2_345
        assert await uow.users.insert_many([]) == 0
        await uow.commit()
    async with db.unit_of_work(read_only=True) as uow:
        assert await uow.users.count() == 2_345


async def test_insert_many_works_for_any_mapped_model(db: Database[UserUnitOfWork]) -> None:
    async with db.unit_of_work() as uow:
        author = await uow.users.add(User(name="Author", age=50))
        n = await uow.posts.insert_many(
            {"author_id": author.id, "title": f"t{i}"} for i in range(5)
        )
        await uow.commit()
    assert n == 5
    async with db.unit_of_work(read_only=True) as uow:
        assert await uow.repository(Post).count(author_id=author.id) == 5


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        ({"name": "X", "age": 1, "colour": "red"}, InvalidQueryError),
        ({"name": "X", "age": 1, "version": 5}, InvalidQueryError),
        ({"name": "X", "age": 1, "posts": []}, InvalidQueryError),
        ({"name": "X", "age": 151}, InvalidDataError),
        ({"name": "", "age": 1}, InvalidDataError),
        ({"name": "X" * 101, "age": 1}, InvalidDataError),
        ({"name": "X", "age": "1"}, InvalidDataError),
        ({"name": "X", "age": 1, "email": "\udc80"}, InvalidDataError),
        ("not a row", InvalidQueryError),
        (Post(title="wrong model"), InvalidQueryError),
    ],
)
async def test_insert_many_checks_rows_like_objects_and_keeps_nothing_after_an_error(
    db: Database[UserUnitOfWork], bad: Any, error: type[Exception]
) -> None:
    def rows() -> Iterator[Any]:
        for i in range(250):
            yield {"name": f"ok {i}", "age": 20}
        yield bad

    async with db.unit_of_work() as uow:
        with pytest.raises(error):
            # Batches of 100: two were sent before the bad row was read.
            await uow.users.insert_many(rows(), batch_size=100)
        assert await uow.users.count() == 0  # the unit of work goes on, without them
        await uow.users.add(User(name="after", age=1))
        await uow.commit()
    async with db.unit_of_work(read_only=True) as uow:
        assert [u.name for u in await uow.users.list()] == ["after"]


async def test_a_bad_first_row_sends_nothing(db: Database[UserUnitOfWork]) -> None:
    async with db.unit_of_work() as uow:
        with count_statements(db.engine) as sent, pytest.raises(InvalidDataError):
            await uow.users.insert_many([{"name": "X", "age": -1}, {"name": "Y", "age": 1}])
        assert sent == []


async def test_a_conflict_in_a_later_batch_undoes_the_whole_call(
    db: Database[UserUnitOfWork],
) -> None:
    async with db.unit_of_work() as uow:
        await uow.users.add(User(name="Taken", age=1, email="taken@example.com"))
        rows = [{"name": f"u{i}", "age": 1, "email": f"u{i}@example.com"} for i in range(300)]
        rows.append({"name": "dup", "age": 1, "email": "taken@example.com"})
        with pytest.raises(ConflictError):
            await uow.users.insert_many(rows, batch_size=100)
        assert await uow.users.count() == 1
        await uow.commit()
    async with db.unit_of_work(read_only=True) as uow:
        assert await uow.users.count() == 1


async def test_insert_many_refuses_a_mapping_and_a_bad_batch_size(
    db: Database[UserUnitOfWork],
) -> None:
    async with db.unit_of_work() as uow:
        with pytest.raises(InvalidQueryError, match="iterable of rows"):
            one_row: Any = {"name": "X", "age": 1}
            await uow.users.insert_many(one_row)
        with pytest.raises(InvalidQueryError, match="batch_size"):
            await uow.users.insert_many([{"name": "X", "age": 1}], batch_size=0)


class _Scratch(DeclarativeBase):
    pass


class Tagged(_Scratch):
    """Defaults only Python knows (no server defaults): insert_many must apply them itself."""

    __tablename__ = "bulk_tagged"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    label: Mapped[str] = mapped_column(String(20))
    source: Mapped[str] = mapped_column(String(20), default=lambda: "python")
    shout: Mapped[str] = mapped_column(
        String(20), default=lambda ctx: ctx.get_current_parameters()["label"].upper()
    )
    counter: Mapped[int] = mapped_column(Integer)

    __mapper_args__ = {"version_id_col": counter}  # noqa: RUF012 - read once by the mapper


@pytest.fixture
async def tagged(
    committing_db: Database[UserUnitOfWork],
) -> AsyncIterator[Database[UserUnitOfWork]]:
    def create(connection: Connection) -> None:
        _Scratch.metadata.create_all(connection)

    def drop(connection: Connection) -> None:
        _Scratch.metadata.drop_all(connection)

    async with committing_db.engine.begin() as connection:
        await connection.run_sync(create)
    try:
        yield committing_db
    finally:
        async with committing_db.engine.begin() as connection:
            await connection.run_sync(drop)


async def test_insert_many_applies_python_only_defaults_and_the_version_start(
    tagged: Database[UserUnitOfWork],
) -> None:
    async with tagged.unit_of_work() as uow:
        assert await uow.repository(Tagged).insert_many([{"label": "a"}, {"label": "b"}]) == 2
        await uow.commit()
    async with tagged.unit_of_work(read_only=True) as uow:
        rows = await uow.repository(Tagged).list(order_by="label")
    assert [(r.label, r.source, r.shout, r.counter) for r in rows] == [
        ("a", "python", "A", 1),
        ("b", "python", "B", 1),
    ]
