"""``db.ping()``: the round trip to the primary, or ``UnavailableError`` within the connect
timeout."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import text

from asyncdal import Database, DatabaseSettings
from asyncdal.errors import UnavailableError
from tests.faults._cluster import free_port
from tests.support import Backend


async def test_ping_returns_the_round_trip_in_seconds(backend: Backend) -> None:
    db = backend.database()
    try:
        first = await db.ping()
        second = await db.ping()
    finally:
        await db.dispose()
    assert 0 < first < 5
    assert 0 < second < 5


async def test_ping_of_a_closed_port_raises_unavailable_at_once() -> None:
    db = Database(DatabaseSettings(f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/x"))
    started = time.monotonic()
    with pytest.raises(UnavailableError, match="ping"):
        await db.ping()
    assert time.monotonic() - started < 2
    await db.dispose()


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port that accepts connections and never says a word."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()


async def test_ping_of_a_silent_server_raises_unavailable_within_the_connect_timeout(
    silent_server: int,
) -> None:
    url = f"postgresql+asyncpg://postgres@127.0.0.1:{silent_server}/x"
    db = Database(DatabaseSettings(url, connect_timeout=0.5))
    started = time.monotonic()
    with pytest.raises(UnavailableError):
        await db.ping()
    assert time.monotonic() - started < 1.5
    await db.dispose()


async def test_ping_with_every_connection_busy_raises_within_the_connect_timeout(
    backend: Backend,
) -> None:
    # pool_timeout is 30 s: only ping's own bound (connect_timeout) ends the wait early.
    db = backend.database(pool_size=1, max_overflow=0, pool_timeout=30, connect_timeout=0.5)
    try:
        async with db.unit_of_work(read_only=True):
            started = time.monotonic()
            with pytest.raises(UnavailableError, match="connect_timeout"):
                await db.ping()
            assert time.monotonic() - started < 1.5
        assert await db.ping() > 0
    finally:
        await db.dispose()


async def test_ping_of_sqlite_in_a_missing_directory_raises_unavailable(tmp_path: object) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path}/no/such/dir/x.db")
    with pytest.raises(UnavailableError):
        await db.ping()
    await db.dispose()


async def test_ping_of_in_memory_sqlite_leaves_a_writers_transaction_alone() -> None:
    db = Database("sqlite+aiosqlite:///:memory:")
    try:
        async with db.unit_of_work() as uow:
            await uow.session.execute(text("CREATE TABLE t (x INTEGER)"))
            await uow.session.execute(text("INSERT INTO t VALUES (1)"))
            pinged = asyncio.create_task(db.ping())
            await asyncio.sleep(0.05)
            assert not pinged.done()  # it waits for the writer: one shared connection
            await uow.commit()
        assert await pinged > 0
        async with db.unit_of_work(read_only=True) as uow:
            assert await uow.session.scalar(text("SELECT count(*) FROM t")) == 1
    finally:
        await db.dispose()


async def test_ping_after_a_shutdown_raises_unavailable(backend: Backend) -> None:
    db = backend.database()
    await db.dispose(timeout=0)
    with pytest.raises(UnavailableError, match="shutting down"):
        await db.ping()
