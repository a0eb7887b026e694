"""uow.on_commit(fn): after a successful COMMIT only, in order, once; a failing hook is logged."""

from __future__ import annotations

import asyncio
import logging

import pytest

from asyncdal import Database
from asyncdal.errors import ConflictError, RetryableError, UnitOfWorkStateError
from asyncdal.models import User
from asyncdal.uow import State
from asyncdal.users import UserUnitOfWork


async def test_hooks_run_after_commit_in_registration_order_plain_and_async(
    db: Database[UserUnitOfWork],
) -> None:
    ran: list[str] = []

    async def later() -> None:
        await asyncio.sleep(0)
        ran.append("async")

    async with db.unit_of_work() as uow:
        await uow.users.add(User(name="Ann", age=30))
        uow.on_commit(lambda: ran.append("first"))
        uow.on_commit(later)
        uow.on_commit(lambda: ran.append("last"))
        assert ran == []
        await uow.commit()
        assert ran == ["first", "async", "last"]
        assert uow.state is State.COMMITTED
    assert ran == ["first", "async", "last"]


async def test_hooks_see_the_committed_data(db: Database[UserUnitOfWork]) -> None:
    seen: list[int] = []

    async def count() -> None:
        async with db.unit_of_work(read_only=True) as other:
            seen.append(await other.users.count())

    async with db.unit_of_work() as uow:
        await uow.users.add(User(name="Ann", age=30))
        uow.on_commit(count)
        await uow.commit()
    assert seen == [1]


async def test_hooks_never_run_after_rollback_or_leaving_without_commit(
    db: Database[UserUnitOfWork],
) -> None:
    ran: list[str] = []
    async with db.unit_of_work() as uow:
        uow.on_commit(lambda: ran.append("rolled back"))
        await uow.rollback()
    async with db.unit_of_work() as uow:
        uow.on_commit(lambda: ran.append("left"))
    with pytest.raises(KeyError):
        async with db.unit_of_work() as uow:
            uow.on_commit(lambda: ran.append("raised"))
            raise KeyError("boom")
    assert ran == []


async def test_hooks_never_run_after_a_failed_commit(db: Database[UserUnitOfWork]) -> None:
    ran: list[str] = []
    async with db.unit_of_work() as uow:
        await uow.users.add(User(name="Ann", age=30, email="ann@example.com"))
        await uow.commit()
    async with db.unit_of_work() as uow:
        uow.session.add(User(name="Dup", age=30, email="ann@example.com"))
        uow.on_commit(lambda: ran.append("failed"))
        with pytest.raises(ConflictError):
            await uow.commit()
    assert ran == []


async def test_hooks_never_run_when_the_task_is_cancelled_before_commit_ends(
    committing_db: Database[UserUnitOfWork],
) -> None:
    ran: list[str] = []
    inside = asyncio.Event()

    async def work() -> None:
        async with committing_db.unit_of_work() as uow:
            await uow.users.add(User(name="Ann", age=30))
            uow.on_commit(lambda: ran.append("cancelled"))
            inside.set()
            await asyncio.sleep(10)
            await uow.commit()

    task = asyncio.create_task(work())
    await inside.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert ran == []
    assert committing_db.pool_status().checked_out == 0


async def test_run_in_transaction_runs_only_the_committing_attempts_hooks_once(
    db: Database[UserUnitOfWork],
) -> None:
    ran: list[int] = []
    attempts = 0

    async def fn(uow: UserUnitOfWork) -> None:
        nonlocal attempts
        attempts += 1
        attempt = attempts
        await uow.users.add(User(name=f"attempt {attempt}", age=30))
        uow.on_commit(lambda: ran.append(attempt))
        if attempt < 3:
            raise RetryableError("try again")

    await db.run_in_transaction(fn, attempts=5, base_delay=0)
    assert ran == [3]
    async with db.unit_of_work(read_only=True) as uow:
        assert [u.name for u in await uow.users.list()] == ["attempt 3"]


async def test_a_failing_hook_is_logged_and_the_others_still_run(
    db: Database[UserUnitOfWork], caplog: pytest.LogCaptureFixture
) -> None:
    ran: list[str] = []

    def broken_hook() -> None:
        raise RuntimeError("hook failed")

    async def broken_async_hook() -> None:
        raise ValueError("async hook failed")

    async with db.unit_of_work() as uow:
        await uow.users.add(User(name="Ann", age=30))
        uow.on_commit(broken_hook)
        uow.on_commit(broken_async_hook)
        uow.on_commit(lambda: ran.append("after"))
        with caplog.at_level(logging.ERROR, logger="asyncdal"):
            await uow.commit()  # does not raise: the transaction has committed
    assert ran == ["after"]
    logged = [r for r in caplog.records if r.name == "asyncdal"]
    assert len(logged) == 2
    assert "broken_hook" in logged[0].getMessage()
    assert "broken_async_hook" in logged[1].getMessage()
    assert logged[0].exc_info is not None
    async with db.unit_of_work(read_only=True) as uow:
        assert await uow.users.count() == 1


async def test_a_hook_may_open_a_writing_unit_of_work(
    committing_db: Database[UserUnitOfWork],
) -> None:
    async def write_again() -> None:
        async with asyncio.timeout(5):  # SQLite: the write lock must already be free
            async with committing_db.unit_of_work() as other:
                await other.users.add(User(name="from hook", age=1))
                await other.commit()

    async with committing_db.unit_of_work() as uow:
        await uow.users.add(User(name="first", age=1))
        uow.on_commit(write_again)
        await uow.commit()
    assert committing_db.pool_status().checked_out == 0
    async with committing_db.unit_of_work(read_only=True) as uow:
        assert sorted(u.name for u in await uow.users.list()) == ["first", "from hook"]


async def test_on_commit_needs_an_active_unit_of_work_and_a_callable(
    db: Database[UserUnitOfWork],
) -> None:
    uow = db.unit_of_work()
    with pytest.raises(UnitOfWorkStateError):
        uow.on_commit(lambda: None)
    async with uow:
        with pytest.raises(ValueError, match="callable"):
            uow.on_commit("not callable")  # type: ignore[arg-type]  # on purpose
        await uow.commit()
    with pytest.raises(UnitOfWorkStateError):
        uow.on_commit(lambda: None)
