"""Unit-of-work and repository rules that hold before any SQL: checked over an in-memory fake
session that records what it was asked to do (no database is involved)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from asyncdal import Repository, UnitOfWork
from asyncdal.errors import InvalidQueryError, UnitOfWorkStateError
from asyncdal.models import User
from asyncdal.uow import State
from asyncdal.users import UserRepository, UserUnitOfWork


class FakeSession:
    """Stands in for AsyncSession: records calls, sends nothing anywhere."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def connection(self) -> None:
        self.calls.append("connection")

    async def close(self) -> None:
        self.calls.append("close")

    def expunge_all(self) -> None:
        self.calls.append("expunge_all")

    async def flush(self) -> None:
        self.calls.append("flush")

    async def run_sync(self, fn: Callable[[Any], Any]) -> Any:
        return fn(SyncFake(self.calls))

    async def rollback(self) -> None:
        self.calls.append("rollback")

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"unexpected session call: {name}")


class SyncFake:
    """Stands in for the sync Session that run_sync() hands its function."""

    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    def flush(self) -> None:
        self.calls.append("flush")

    def commit(self) -> None:
        self.calls.append("commit")

    def in_transaction(self) -> bool:
        return False


class FakeFactory:
    def __init__(self) -> None:
        self.sessions: list[FakeSession] = []

    def __call__(self) -> FakeSession:
        self.sessions.append(FakeSession())
        return self.sessions[-1]


def _uow(read_only: bool = False) -> tuple[UserUnitOfWork, FakeFactory]:
    factory = FakeFactory()
    sessions = cast(async_sessionmaker[AsyncSession], factory)
    return UserUnitOfWork(sessions, read_only=read_only), factory


async def test_leaving_without_commit_closes_without_committing() -> None:
    uow, factory = _uow()
    async with uow:
        inside = uow.state
    assert inside is State.ACTIVE
    assert factory.sessions[0].calls == ["connection", "expunge_all", "close"]
    assert uow.state is State.CLOSED


async def test_exception_inside_closes_and_propagates() -> None:
    uow, factory = _uow()
    with pytest.raises(KeyError):
        async with uow:
            raise KeyError("boom")
    assert factory.sessions[0].calls[-1] == "close"


async def test_commit_flushes_then_commits_and_ends_the_unit_of_work() -> None:
    uow, factory = _uow()
    async with uow:
        await uow.commit()
        assert uow.state is State.COMMITTED
        with pytest.raises(UnitOfWorkStateError, match="committed: it has ended"):
            await uow.commit()
    assert factory.sessions[0].calls == ["connection", "flush", "commit", "close"]


async def test_repository_used_after_the_unit_of_work_ended_raises() -> None:
    uow, _ = _uow()
    async with uow:
        users = uow.users
    with pytest.raises(UnitOfWorkStateError, match=r"cannot call UserRepository.list\(\)"):
        await users.list()


async def test_repository_before_entering_raises() -> None:
    uow, _ = _uow()
    with pytest.raises(UnitOfWorkStateError, match="not entered yet"):
        await uow.users.count()


async def test_unit_of_work_cannot_be_entered_twice() -> None:
    uow, _ = _uow()
    async with uow:
        pass
    with pytest.raises(UnitOfWorkStateError, match="cannot enter"):
        async with uow:
            pass


async def test_read_only_unit_of_work_refuses_writes_before_any_sql() -> None:
    uow, factory = _uow(read_only=True)
    async with uow:
        with pytest.raises(UnitOfWorkStateError, match="read-only"):
            await uow.users.add(User(name="x", age=1))
    assert "flush" not in factory.sessions[0].calls


@pytest.mark.parametrize(
    "kwargs",
    [
        {"nme": "x"},
        {"posts": "x"},
        {"__class__": "x"},
        {"metadata": "x"},
        {"name; DROP TABLE users": "x"},
        {"a" * 10_000: "x"},
    ],
)
async def test_unknown_filter_name_raises_before_any_sql(kwargs: dict[str, Any]) -> None:
    uow, factory = _uow()
    async with uow:
        with pytest.raises(InvalidQueryError, match="unknown filter"):
            await uow.users.list(**kwargs)
    assert factory.sessions[0].calls == ["connection", "expunge_all", "close"]


@pytest.mark.parametrize("order_by", ["nme", "-nme", "posts", "__class__", 42])
async def test_unknown_order_by_raises_before_any_sql(order_by: Any) -> None:
    uow, _ = _uow()
    async with uow:
        with pytest.raises(InvalidQueryError, match="order_by"):
            await uow.users.list(order_by=order_by)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"limit": -1}, "limit must be an integer >= 0"),
        ({"offset": "3"}, "offset must be an integer >= 0"),
        ({"limit": True}, "limit must be an integer >= 0"),
        ({"load": ["nope"]}, "unknown relationship 'nope'"),
        ({"load": ["name"]}, "unknown relationship 'name'"),
    ],
)
async def test_bad_list_arguments_are_refused(kwargs: dict[str, Any], message: str) -> None:
    uow, _ = _uow()
    async with uow:
        with pytest.raises(InvalidQueryError, match=message):
            await uow.users.list(**kwargs)


async def test_raw_string_filter_is_refused() -> None:
    uow, _ = _uow()
    async with uow:
        with pytest.raises(InvalidQueryError, match="filters must be SQLAlchemy expressions"):
            await uow.users.list(cast(Any, "1=1"))


async def test_update_with_unknown_field_changes_nothing() -> None:
    uow, _ = _uow()
    user = User(name="Ann", age=3)
    async with uow:
        with pytest.raises(InvalidQueryError, match="unknown field 'agee'"):
            await uow.users.update(user, name="Bob", agee=4)
    assert user.name == "Ann"


async def test_wrong_object_type_is_refused() -> None:
    uow, _ = _uow()
    async with uow:
        with pytest.raises(InvalidQueryError, match="expects a User, got str"):
            await uow.users.add(cast(Any, "not a user"))


def test_repository_without_model_says_how_to_declare_one() -> None:
    class Nameless(Repository[User]):
        pass

    uow, _ = _uow()
    with pytest.raises(InvalidQueryError, match="add `model = YourModel`"):
        Nameless(uow)


def test_unmapped_class_is_refused() -> None:
    uow, _ = _uow()
    with pytest.raises(InvalidQueryError, match="not a mapped class"):
        uow.repository(int)


def test_repository_subclass_is_cached_per_unit_of_work() -> None:
    uow, _ = _uow()
    assert uow.repository(UserRepository) is uow.users
    assert isinstance(UnitOfWork, type)
