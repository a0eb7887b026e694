"""Hostile input: bad names never reach the database; hostile values are bound, or refused alike.

Names (keyword filters, ``order_by``, ``update()`` fields, ``load``) are checked against the
mapper first: ``InvalidQueryError`` with 0 statements sent. Values are bound parameters, stored
and read back verbatim, or refused with the same typed error on both backends, and the
connection stays usable afterwards.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from asyncdal import Database
from asyncdal.errors import InvalidDataError, InvalidQueryError
from asyncdal.models import User
from asyncdal.users import UserUnitOfWork
from tests.faults._helpers_core import eventually, pg_activity
from tests.support import Backend, count_statements

BAD_NAMES = [
    "nme",
    "name; DROP TABLE users",
    "name --",
    "__class__",
    "__dict__",
    "metadata",
    "registry",
    "_sa_instance_state",
    "posts",  # a relationship, not a column
    "",
    "n" * 10_000,
]
HOSTILE_TEXT = ["' OR 1=1 --", "%_", "%", "_", "Robert'); DROP TABLE users;--", "\\", "名前 ✓"]
TEN_MB = "x" * 10_000_000


async def _no_sql(
    db: Database[UserUnitOfWork], call: Callable[[UserUnitOfWork], Awaitable[Any]]
) -> list[str]:
    """Run ``call`` in a unit of work expecting InvalidQueryError; the statements it sent."""
    async with db.unit_of_work() as uow:
        user = await uow.users.add(User(name="victim", age=1))
        with count_statements(db.engine) as statements, pytest.raises(InvalidQueryError):
            await call(uow)
        assert user.name == "victim"
    return statements


@pytest.mark.parametrize("name", BAD_NAMES, ids=lambda n: repr(n)[:24])
async def test_unknown_names_are_refused_before_any_sql(
    db: Database[UserUnitOfWork], name: str
) -> None:
    equals: dict[str, Any] = {name: 1}
    calls: list[Callable[[UserUnitOfWork], Awaitable[Any]]] = [
        lambda uow: uow.users.list(**equals),
        lambda uow: uow.users.count(**{name: "x"}),
        lambda uow: uow.users.exists(**{name: None}),
        lambda uow: uow.users.list(order_by=name),
        lambda uow: uow.users.list(order_by=["id", f"-{name}"]),
    ]
    if name != "posts":  # the one relationship name: a valid thing to load
        calls.append(lambda uow: uow.users.list(load=(name,)))
    sent = {i: await _no_sql(db, call) for i, call in enumerate(calls)}
    assert all(statements == [] for statements in sent.values()), sent

    async with db.unit_of_work() as uow:  # update() refuses too, and changes nothing
        user = await uow.users.add(User(name="kept", age=1))
        with count_statements(db.engine) as statements, pytest.raises(InvalidQueryError):
            await uow.users.update(user, **{name: "x"})
        assert statements == []
        assert (user.name, user.age) == ("kept", 1)
        assert await uow.users.count() == 1  # the table is there, the connection works


@pytest.mark.parametrize("column", ["id", "name"])
async def test_load_refuses_a_column_name(db: Database[UserUnitOfWork], column: str) -> None:
    assert await _no_sql(db, lambda uow: uow.users.list(load=(column,))) == []


async def test_hostile_text_is_stored_verbatim_and_matches_only_itself(
    db: Database[UserUnitOfWork],
) -> None:
    async with db.unit_of_work() as uow:
        await uow.users.add_many([User(name=v, age=1) for v in HOSTILE_TEXT])
        await uow.users.add(User(name="bystander", age=1))
        await uow.commit()
    async with db.unit_of_work(read_only=True) as uow:
        for value in HOSTILE_TEXT:
            assert [u.name for u in await uow.users.list(name=value)] == [value]
            assert await uow.users.count(User.name == value) == 1
        assert await uow.users.list(name="' OR '1'='1") == []
        assert await uow.users.list(name="%bystander%") == []
        assert await uow.users.count() == len(HOSTILE_TEXT) + 1


def _user(**values: Any) -> User:
    return User(**{"name": "ok", "age": 1, **values})


@pytest.mark.parametrize(
    "values",
    [
        {"name": "a\x00b"},
        {"name": "\ud800"},
        {"name": TEN_MB},
        {"name": "x" * 101},
        {"name": ""},
        {"email": "e" * 321},
        {"email": "\udfff@example.com"},
        {"age": 2**63},
        {"age": -(2**63) - 1},
        {"age": 151},
        {"age": -1},
        {"age": True},
        {"age": "30"},
    ],
    ids=lambda v: f"{next(iter(v))}={next(iter(v.values()))!r}"[:30],
)
async def test_values_a_backend_would_refuse_are_refused_alike_before_any_sql(
    db: Database[UserUnitOfWork], values: dict[str, Any]
) -> None:
    async with db.unit_of_work() as uow:
        user = await uow.users.add(User(name="existing", age=30))
        with count_statements(db.engine) as statements:
            with pytest.raises(InvalidDataError):
                await uow.users.add(_user(**values))
            with pytest.raises(InvalidDataError):
                await uow.users.update(user, **values)
        assert statements == []
        await uow.commit()  # the unit of work and its connection go on
    async with db.unit_of_work(read_only=True) as uow:
        again = await uow.users.get_one(user.id)
    assert (again.name, again.age, again.email) == ("existing", 30, None)


@pytest.mark.parametrize(
    "value",
    [2**63, -(2**63) - 1, "\ud800", "a\x00b"],
    ids=["2**63", "-2**63-1", "lone-surrogate", "nul-byte"],
)
@pytest.mark.parametrize("read_only", [True, False], ids=["read-only", "read-write"])
async def test_unbindable_filter_values_are_a_typed_error_and_leave_no_transaction_open(
    backend: Backend, db: Database[UserUnitOfWork], value: Any, read_only: bool
) -> None:
    """asyncpg refuses these while binding, client side, after the statement went out: the
    connection must not go back to the pool with the server still inside that statement (it
    would hold its locks, and a TRUNCATE or a migration would wait on it for ever)."""
    mine = backend.database(application_name="asyncdal-faults-hostile", pool_size=1)
    column = "age" if isinstance(value, int) else "name"
    try:
        async with mine.unit_of_work(read_only=read_only) as uow:
            with pytest.raises(InvalidDataError):
                await uow.users.list(**{column: value})
        if backend.name == "postgres":
            # The connection is replaced: its backend may take a moment to see the socket close
            # on a busy machine, while one left pooled inside a statement stays busy for good.
            async def no_busy_backend() -> bool:
                return all(a.state == "idle" for a in await pg_activity(mine))

            assert await eventually(no_busy_backend, within=2), (
                "a pooled connection was left inside a statement",
                await pg_activity(mine),
            )
        async with mine.unit_of_work(read_only=True) as uow:
            assert await uow.users.count() == 0
        assert mine.pool_status().checked_out == 0
    finally:
        await mine.dispose()


async def test_ten_megabytes_as_a_filter_value_matches_nothing(
    db: Database[UserUnitOfWork],
) -> None:
    async with db.unit_of_work(read_only=True) as uow:
        assert await uow.users.list(name=TEN_MB) == []
        assert await uow.users.count() == 0
