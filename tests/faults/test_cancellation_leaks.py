"""Cancellation leaks no driver connection: every one a unit of work opened is closed, or pooled.

1,000 units of work on SQLite (400 on PostgreSQL) are cancelled at random points on a pool that
replaces its connection at every checkout (``pool_recycle`` of a microsecond), so the
cancellations land while a connection is being opened and closed as well as mid-statement and
mid-COMMIT. Every driver connection opened meanwhile is counted, and held, so one dropped without
``close()`` stays visible as open instead of being finalized by the garbage collector: the count
does not depend on Python 3.13's ``ResourceWarning`` for an unclosed ``sqlite3.Connection``.
Afterwards the only open connections are the ones the pool holds, none once it is disposed, and
no close is left waiting forever.
"""

from __future__ import annotations

import asyncio
import gc
import random
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from asyncdal import Database
from asyncdal.models import User
from asyncdal.users import UserUnitOfWork
from tests.faults._helpers_core import eventually, pg_activity, sqlite_path
from tests.support import Backend

#: Cancellations per backend: the SQLite leak (aiosqlite's cancelled connect) showed in 41 to 112
#: of 1,000; a fresh PostgreSQL backend per checkout costs ~20 ms, so there fewer cover the same
#: windows (connect, statement, COMMIT, close) in a third of the time.
TASKS = {"sqlite": 1000, "postgresql": 400}
CONCURRENCY = 25
APP = "asyncdal-faults-leaks"


class _CountedSQLite(sqlite3.Connection):
    """A ``sqlite3.Connection`` that knows whether ``close()`` was called on it."""

    closed = False

    def close(self) -> None:
        self.closed = True
        super().close()


class Census:
    """Every driver connection our engine opened during the test, held until the end."""

    def __init__(self, is_open: Callable[[Any], bool]) -> None:
        self.opened: list[Any] = []
        self._is_open = is_open

    def still_open(self) -> int:
        return sum(1 for connection in self.opened if self._is_open(connection))


@pytest.fixture
async def mine(backend: Backend) -> AsyncIterator[Database[UserUnitOfWork]]:
    database = backend.database(
        application_name=APP,
        pool_size=CONCURRENCY,
        max_overflow=0,
        pool_recycle=1e-6,  # a fresh connection at every checkout: open and close get cancelled
        sqlite_busy_timeout=3,
    )
    try:
        yield database
    finally:
        await database.dispose()


@pytest.fixture
def census(mine: Database[UserUnitOfWork], monkeypatch: pytest.MonkeyPatch) -> Census:
    """Counts the driver connections ``mine`` opens, by wrapping the driver's own ``connect``
    (what aiosqlite's worker thread and SQLAlchemy's asyncpg dialect call)."""
    if mine.backend == "sqlite":
        path = sqlite_path(mine)
        counted = Census(lambda connection: not connection.closed)
        real_sqlite_connect: Callable[..., sqlite3.Connection] = sqlite3.connect

        def sqlite_connect(database: Any, *args: Any, **kwargs: Any) -> sqlite3.Connection:
            if str(database) != path:
                return real_sqlite_connect(database, *args, **kwargs)
            connection = real_sqlite_connect(database, *args, factory=_CountedSQLite, **kwargs)
            counted.opened.append(connection)
            return connection

        monkeypatch.setattr(sqlite3, "connect", sqlite_connect)
        return counted

    counted = Census(lambda connection: not connection.is_closed())
    real_pg_connect: Callable[..., Awaitable[asyncpg.Connection]] = asyncpg.connect

    async def pg_connect(*args: Any, **kwargs: Any) -> asyncpg.Connection:
        connection = await real_pg_connect(*args, **kwargs)
        if kwargs.get("server_settings", {}).get("application_name") == APP:
            counted.opened.append(connection)
        return connection

    monkeypatch.setattr(asyncpg, "connect", pg_connect)
    return counted


async def _unit_of_work(
    db: Database[UserUnitOfWork], tag: str, *, read_only: bool, park: bool = True
) -> None:
    """A read, then (read-write) a write and COMMIT; then wait, so that the cancel always lands.

    Read-only units of work skip the SQLite writers' queue, so theirs are the connections
    opened all at once, at the start of a batch, where many cancellations land."""
    async with db.unit_of_work(read_only=read_only) as uow:
        await uow.users.count(name=tag)
        if not read_only:
            await uow.users.add(User(name=tag, age=1))
            await uow.commit()
    if park:
        await asyncio.Event().wait()


async def _typical_duration(db: Database[UserUnitOfWork], *, read_only: bool) -> float:
    """Wall time of a batch of uncancelled units of work: the window the cancels aim at."""
    started = time.perf_counter()
    await asyncio.gather(
        *(
            _unit_of_work(db, f"warmup-{i}", read_only=read_only, park=False)
            for i in range(CONCURRENCY)
        )
    )
    return time.perf_counter() - started


async def test_cancelling_units_of_work_leaves_no_driver_connection_open_beyond_the_pool(
    mine: Database[UserUnitOfWork], census: Census, caplog: pytest.LogCaptureFixture
) -> None:
    rng = random.Random(12)
    tasks_here = TASKS[mine.backend]
    windows = {ro: await _typical_duration(mine, read_only=ro) for ro in (False, True)}
    cancelled = 0
    for first in range(0, tasks_here, CONCURRENCY):
        tasks = []
        for i in range(first, first + CONCURRENCY):
            read_only = rng.random() < 0.5
            task = asyncio.create_task(_unit_of_work(mine, f"leak-{i}", read_only=read_only))
            cancel_at = rng.uniform(0, windows[read_only])
            asyncio.get_running_loop().call_later(cancel_at, task.cancel)
            tasks.append(task)
        await asyncio.gather(*tasks, return_exceptions=True)
        cancelled += sum(task.cancelled() for task in tasks)

    pool = mine.pool_status()

    def figures() -> str:
        return (
            f"{cancelled}/{tasks_here} cancelled, {len(census.opened)} connections opened, "
            f"{census.still_open()} still open, pool {pool}"
        )

    async def at_most(limit: int) -> bool:
        return census.still_open() <= limit

    async def server_agrees() -> bool:
        return mine.backend == "sqlite" or len(await pg_activity(mine)) == census.still_open()

    assert cancelled == tasks_here, figures()
    assert len(census.opened) > tasks_here // 4, figures()  # connections were opened meanwhile
    assert pool.checked_out == 0, figures()
    # An open that completes after its caller gave up is closed then: allow it a moment. An
    # invalidated connection's slot returns to the pool empty, so it holds at most checked_in.
    # The server ends the backend of a connection closed mid-query only when that query is done
    # and it reads the socket again: on a busy machine (CI runs two suites at once) that can take
    # seconds, so the server is given longer than the client.
    assert await eventually(lambda: at_most(pool.checked_in), within=2), figures()
    assert await eventually(server_agrees, within=10), (figures(), await pg_activity(mine))

    await mine.dispose()
    assert await eventually(lambda: at_most(0), within=2), "after dispose: " + figures()
    assert await eventually(server_agrees, within=10), (figures(), await pg_activity(mine))
    # Nor a close left waiting forever behind a stopped driver thread (asyncio reports such a
    # task only when it is collected).
    gc.collect()
    abandoned = [r for r in caplog.records if r.getMessage().startswith("Task was destroyed")]
    assert not abandoned, [r.getMessage() for r in abandoned]
