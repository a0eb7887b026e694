"""``db.dispose(timeout=...)``: a graceful shutdown. New units of work are refused at once, those
in flight may finish until the timeout, the rest are cancelled and rolled back, and every
connection is closed: nothing committed is lost, nothing half done is committed."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import pytest
from sqlalchemy import text

from asyncdal import Database
from asyncdal.errors import UnavailableError
from asyncdal.models import User
from asyncdal.users import UserUnitOfWork
from tests.faults._helpers_core import pg_activity
from tests.support import Backend


def _database(backend: Backend) -> Database[UserUnitOfWork]:
    return backend.database(application_name=f"asyncdal-dispose-{uuid.uuid4().hex[:8]}")


async def _names(backend: Backend) -> set[str]:
    async with backend.shared.unit_of_work(read_only=True) as uow:
        return {user.name for user in await uow.users.list()}


async def _write(db: Database[UserUnitOfWork], name: str, hold: float) -> str:
    """Add a user, keep the transaction open ``hold`` seconds, commit."""
    async with db.unit_of_work() as uow:
        await uow.users.add(User(name=name, age=1))
        await asyncio.sleep(hold)
        await uow.commit()
    return name


async def test_new_units_of_work_are_refused_at_once_while_shutting_down(backend: Backend) -> None:
    db = _database(backend)
    in_flight = asyncio.create_task(_write(db, f"w-{uuid.uuid4().hex[:6]}", 0.5))
    await asyncio.sleep(0.1)
    closing = asyncio.create_task(db.dispose(timeout=5))
    await asyncio.sleep(0)
    started = time.monotonic()
    with pytest.raises(UnavailableError, match="shutting down"):
        async with db.unit_of_work(read_only=True):
            pass
    assert time.monotonic() - started < 0.1
    await closing
    assert await in_flight  # finished within the timeout


async def test_work_that_finishes_within_the_timeout_commits(backend: Backend) -> None:
    db = _database(backend)
    name = f"within-{uuid.uuid4().hex[:6]}"
    writer = asyncio.create_task(_write(db, name, 0.3))
    await asyncio.sleep(0.1)
    await db.dispose(timeout=5)
    assert writer.done()
    assert await writer == name
    assert name in await _names(backend)


async def test_work_outliving_the_timeout_is_cancelled_rolled_back_and_told_so(
    backend: Backend,
) -> None:
    db = _database(backend)
    name = f"late-{uuid.uuid4().hex[:6]}"
    writer = asyncio.create_task(_write(db, name, 30))
    await asyncio.sleep(0.1)
    started = time.monotonic()
    await db.dispose(timeout=0.2)
    assert time.monotonic() - started < 3
    with pytest.raises(UnavailableError, match="outlived"):
        await writer
    assert name not in await _names(backend)
    assert db.metrics().pools["primary"].checked_out == 0
    assert db.metrics().units_of_work.failed == {"UnavailableError": 1}


@pytest.mark.only_backend("postgres")
async def test_a_statement_running_at_the_deadline_is_cancelled_and_no_backend_is_left(
    backend: Backend,
) -> None:
    db = _database(backend)
    name = f"sleeper-{uuid.uuid4().hex[:6]}"

    async def sleeper() -> None:
        async with db.unit_of_work() as uow:
            await uow.users.add(User(name=name, age=1))
            await uow.session.execute(text("SELECT pg_sleep(30)"))
            await uow.commit()

    task = asyncio.create_task(sleeper())
    await asyncio.sleep(0.3)
    assert len(await pg_activity(db)) == 1
    await db.dispose(timeout=0.2)
    with pytest.raises(UnavailableError):
        await task
    assert await pg_activity(db) == []
    assert name not in await _names(backend)


async def test_a_mixed_shutdown_keeps_what_finished_and_reports_it(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    db = _database(backend)
    tag = uuid.uuid4().hex[:6]
    quick = [asyncio.create_task(_write(db, f"quick-{tag}-{n}", 0.2)) for n in range(5)]
    slow = [asyncio.create_task(_write(db, f"slow-{tag}-{n}", 30)) for n in range(5)]
    await asyncio.sleep(0.1)
    with caplog.at_level(logging.INFO, logger="asyncdal"):
        await db.dispose(timeout=1.5)
    outcomes = await asyncio.gather(*quick, *slow, return_exceptions=True)
    assert outcomes[:5] == [f"quick-{tag}-{n}" for n in range(5)]
    assert all(isinstance(outcome, UnavailableError) for outcome in outcomes[5:])
    names = {name for name in await _names(backend) if tag in name}
    assert names == {f"quick-{tag}-{n}" for n in range(5)}
    assert "10 units of work in flight, 5 finished, 5 cancelled" in caplog.text
    if backend.name == "postgres":
        assert await pg_activity(db) == []


async def test_dispose_without_a_timeout_leaves_the_database_usable(backend: Backend) -> None:
    db = _database(backend)
    await db.dispose()
    async with db.unit_of_work(read_only=True) as uow:
        await uow.users.count()
    await db.dispose(timeout=0)
    with pytest.raises(UnavailableError):
        async with db.unit_of_work(read_only=True):
            pass


async def test_a_cancellation_from_elsewhere_stays_a_cancellation(backend: Backend) -> None:
    db = _database(backend)
    writer = asyncio.create_task(_write(db, f"x-{uuid.uuid4().hex[:6]}", 30))
    await asyncio.sleep(0.1)
    writer.cancel()  # the caller's own cancellation, before the shutdown's
    await db.dispose(timeout=0.2)
    with pytest.raises(asyncio.CancelledError):
        await writer
