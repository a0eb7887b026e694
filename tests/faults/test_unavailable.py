"""Unavailable: a database that is down, unreachable, misnamed or out of pooled connections.

``Database(...)`` opens nothing; the first unit of work raises ``UnavailableError`` within the
connect timeout, and the same ``Database`` works once the server is up. An exhausted pool raises
``UnavailableError`` after ``pool_timeout`` and leaves the holders' units of work alone.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from asyncdal import Database, DatabaseSettings
from asyncdal.errors import UnavailableError
from asyncdal.models import User
from asyncdal.users import UserUnitOfWork
from tests._figures import Figure
from tests.faults._cluster import Cluster, NewDatabase, backend_pids, free_port
from tests.support import PG_URL, Backend, pg_admin_dsn, require_postgres

pytestmark = pytest.mark.postgres


def _database(url: str, app_name: str, **settings: Any) -> Database[UserUnitOfWork]:
    return Database(
        DatabaseSettings(url, application_name=app_name, **settings), unit_of_work=UserUnitOfWork
    )


async def _first_unit_of_work(db: Database[UserUnitOfWork]) -> tuple[UnavailableError, float]:
    """Open a unit of work that must fail; the error and how long it took."""
    started = time.monotonic()
    with pytest.raises(UnavailableError) as raised:
        async with db.unit_of_work() as uow:
            await uow.users.count()
    return raised.value, time.monotonic() - started


async def _names(db: Database[UserUnitOfWork]) -> list[str]:
    async with db.unit_of_work(read_only=True) as uow:
        return sorted(user.name for user in await uow.users.list())


async def test_constructing_a_database_opens_no_connection(
    new_database: NewDatabase, app_name: str
) -> None:
    url = await new_database(migrate=False)
    db = _database(url, app_name)
    try:
        await asyncio.sleep(0.1)
        assert await backend_pids(pg_admin_dsn(url), app_name) == []
        status = db.pool_status()
        assert (status.checked_in, status.checked_out) == (0, 0)
    finally:
        await db.dispose()


async def test_a_database_down_at_start_raises_unavailable_then_works_once_the_server_is_up(
    cluster: Cluster, new_database: NewDatabase, app_name: str, figure: Figure
) -> None:
    url = await new_database(cluster.url())
    await asyncio.to_thread(cluster.stop)
    connect_timeout = 2.0
    db = _database(url, app_name, connect_timeout=connect_timeout)  # lazy: the server is down
    try:
        error, took = await _first_unit_of_work(db)
        assert took < connect_timeout, f"UnavailableError after {took:.2f} s"
        assert error.__cause__ is not None
        assert db.pool_status().checked_out == 0
        await _first_unit_of_work(db)  # still down: still typed, still no leak

        await asyncio.to_thread(cluster.start)
        async with db.unit_of_work() as uow:
            await uow.users.add(User(name="up again", age=20))
            await uow.commit()
        assert await _names(db) == ["up again"]
        figure(
            f"down at start: {type(error.__cause__).__name__} -> UnavailableError in "
            f"{took * 1000:.0f} ms (connect_timeout {connect_timeout} s); same Database works "
            "once the server is up"
        )
    finally:
        await db.dispose()


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port that accepts TCP connections and never says a word (a hung server)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)  # the kernel completes the handshakes; nobody ever answers
        yield listener.getsockname()[1]


async def test_a_server_that_never_answers_raises_unavailable_after_the_connect_timeout(
    silent_server: int, app_name: str, figure: Figure
) -> None:
    connect_timeout = 0.5
    url = f"postgresql+asyncpg://postgres@127.0.0.1:{silent_server}/asyncdal"
    db = _database(url, app_name, connect_timeout=connect_timeout)
    try:
        error, took = await _first_unit_of_work(db)
        assert connect_timeout * 0.9 <= took < connect_timeout + 2.0, f"took {took:.2f} s"
        assert db.pool_status().checked_out == 0
        figure(f"silent server: UnavailableError after {took:.2f} s (connect_timeout 0.5 s)")
        assert error.__cause__ is not None
    finally:
        await db.dispose()


@pytest.mark.parametrize("target", ["closed port", "wrong database name"])
async def test_an_unreachable_database_raises_unavailable_quickly(
    target: str, app_name: str, figure: Figure
) -> None:
    if target == "closed port":
        url = f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/asyncdal"
    else:
        await require_postgres()  # the server must answer, so that only the name is wrong
        url = Backend.replace_database(PG_URL, "asyncdal_faults_no_such_database")
    connect_timeout = 5.0
    db = _database(url, app_name, connect_timeout=connect_timeout)
    try:
        error, took = await _first_unit_of_work(db)
        # Refused and "database does not exist" are answers, not silence: no waiting for the
        # connect timeout.
        assert took < 1.0, f"{target}: UnavailableError only after {took:.2f} s"
        assert error.__cause__ is not None
        assert db.pool_status().checked_out == 0
        figure(f"{target}: UnavailableError in {took * 1000:.0f} ms ({error})")
    finally:
        await db.dispose()


async def test_an_exhausted_pool_raises_unavailable_after_pool_timeout_and_spares_the_holders(
    new_database: NewDatabase, app_name: str, figure: Figure
) -> None:
    url = await new_database()
    pool_timeout, holders = 0.5, 3
    db = _database(url, app_name, pool_size=2, max_overflow=1, pool_timeout=pool_timeout)
    all_in = asyncio.Barrier(holders + 1)
    release = asyncio.Event()

    async def hold(i: int) -> None:
        async with db.unit_of_work() as uow:
            await uow.users.add(User(name=f"holder-{i}", age=30))
            await all_in.wait()
            await release.wait()
            await uow.users.count()  # the holder's connection still works after the timeout
            await uow.commit()

    tasks = [asyncio.ensure_future(hold(i)) for i in range(holders)]
    try:
        await all_in.wait()
        assert db.pool_status().checked_out == holders
        error, took = await _first_unit_of_work(db)
        assert pool_timeout * 0.9 <= took < pool_timeout + 2.0, f"took {took:.2f} s"
        assert error.__cause__ is not None
        assert db.pool_status().checked_out == holders
        release.set()
        await asyncio.gather(*tasks)
        assert db.pool_status().checked_out == 0
        assert await _names(db) == [f"holder-{i}" for i in range(holders)]
        figure(
            f"pool of {holders} exhausted: UnavailableError after {took:.2f} s "
            f"(pool_timeout {pool_timeout} s), {holders}/{holders} holders committed"
        )
    finally:
        release.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await db.dispose()
