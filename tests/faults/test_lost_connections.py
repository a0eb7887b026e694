"""Lost connections: backends killed in the pool or mid-transaction, and a server restart.

Idle pooled connections the server dropped are replaced silently (engine.py's checkout check; no
pre-ping). A connection lost mid-transaction is a ``ConnectionLostError`` (a ``RetryableError``)
with nothing committed. A restart under load fails the in-flight units of work with typed errors
only, and every unit of work that reported success is in the database.
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Any, Literal

import asyncpg
import pytest
from sqlalchemy import text

from asyncdal import Database, DatabaseSettings
from asyncdal.errors import (
    CommitOutcomeUnknownError,
    ConnectionLostError,
    DataAccessError,
    RetryableError,
    UnavailableError,
)
from asyncdal.models import User
from asyncdal.users import UserUnitOfWork
from tests._figures import Figure
from tests.faults._cluster import Cluster, NewDatabase, backend_pids, terminate
from tests.support import pg_admin_dsn

pytestmark = pytest.mark.postgres


def _database(url: str, app_name: str, **settings: Any) -> Database[UserUnitOfWork]:
    return Database(
        DatabaseSettings(url, application_name=app_name, **settings), unit_of_work=UserUnitOfWork
    )


async def _fill_pool(db: Database[UserUnitOfWork], connections: int) -> None:
    """Check out ``connections`` connections at once, use them, and give them all back."""
    everyone_in = asyncio.Barrier(connections)

    async def hold() -> None:
        async with db.unit_of_work() as uow:
            await uow.users.count()
            await everyone_in.wait()

    await asyncio.gather(*(hold() for _ in range(connections)))


async def _names(db: Database[UserUnitOfWork]) -> list[str]:
    async with db.unit_of_work(read_only=True) as uow:
        return [user.name for user in await uow.users.list(order_by="id")]


async def _sleep(uow: UserUnitOfWork, seconds: float) -> None:
    """``pg_sleep`` through the unit of work's error translation (``uow.session`` is raw)."""
    await uow.execute("pg_sleep", lambda s: s.execute(text("SELECT pg_sleep(:s)"), {"s": seconds}))


async def _own_pid(uow: UserUnitOfWork) -> int:
    pid: int = (await uow.session.execute(text("SELECT pg_backend_pid()"))).scalar_one()
    return pid


@pytest.mark.parametrize("killed", ["one", "all"])
async def test_backends_killed_while_idle_in_the_pool_are_replaced_without_an_error(
    killed: Literal["one", "all"], new_database: NewDatabase, app_name: str, figure: Figure
) -> None:
    url = await new_database()
    dsn = pg_admin_dsn(url)
    pool_size = 4
    db = _database(url, app_name, pool_size=pool_size, max_overflow=0, pool_pre_ping=False)
    try:
        await _fill_pool(db, pool_size)
        pooled = await backend_pids(dsn, app_name)
        assert len(pooled) == pool_size
        victims = pooled if killed == "all" else pooled[:1]
        assert sorted(await terminate(dsn, app_name, victims)) == sorted(victims)

        # Every pooled connection is handed out at once, then again one at a time: each dead
        # one must be noticed at checkout and replaced, never surface to the caller.
        async def work(i: int, read_only: bool) -> None:
            async with db.unit_of_work(read_only=read_only) as uow:
                if read_only:
                    await uow.users.count()
                else:
                    await uow.users.add(User(name=f"after-kill-{i}", age=30))
                    await uow.commit()

        await asyncio.gather(*(work(i, read_only=i % 2 == 1) for i in range(pool_size)))
        for i in range(pool_size, 2 * pool_size):
            await work(i, read_only=i % 2 == 1)

        now = await backend_pids(dsn, app_name)
        assert not set(now) & set(victims), "a killed backend is still in use"
        assert len(now) == pool_size
        assert db.pool_status().checked_out == 0
        written = await _names(db)
        assert sorted(written) == sorted(f"after-kill-{i}" for i in range(0, 2 * pool_size, 2))
        figure(
            f"{len(victims)}/{pool_size} pooled backends killed, "
            f"{2 * pool_size}/{2 * pool_size} later units of work succeeded, 0 errors seen"
        )
    finally:
        await db.dispose()


@pytest.mark.parametrize("when", ["between statements", "during a statement", "before commit"])
async def test_a_backend_killed_mid_transaction_raises_connection_lost_and_commits_nothing(
    when: str, new_database: NewDatabase, app_name: str, figure: Figure
) -> None:
    url = await new_database()
    dsn = pg_admin_dsn(url)
    db = _database(url, app_name, pool_size=2)
    try:
        with pytest.raises(ConnectionLostError) as raised:
            async with db.unit_of_work() as uow:
                await uow.users.add(User(name="lost", age=40))  # flushed: the row is on the server
                pid = await _own_pid(uow)
                if when == "between statements":
                    await terminate(dsn, app_name, [pid])
                    await uow.users.count()
                elif when == "before commit":
                    # COMMIT is never sent on a connection the driver knows is closed, so
                    # this is a plain lost connection, not an unknown commit outcome.
                    await terminate(dsn, app_name, [pid])
                    await _wait_until_driver_closed(uow)
                else:
                    sleeping = asyncio.ensure_future(_sleep(uow, 30))
                    await _wait_until_active(dsn, app_name, pid)
                    await terminate(dsn, app_name, [pid])
                    await sleeping
                await uow.commit()

        assert isinstance(raised.value, RetryableError)
        assert raised.value.__cause__ is not None  # the driver's error, chained
        assert db.pool_status().checked_out == 0
        assert await _names(db) == [], "a unit of work whose connection was lost committed"
        async with db.unit_of_work() as uow:  # the pool hands out a live connection again
            await uow.users.add(User(name="next", age=41))
            await uow.commit()
        assert await _names(db) == ["next"]
        figure(f"killed {when}: {type(raised.value).__name__}, 0 rows committed")
    finally:
        await db.dispose()


async def _wait_until_driver_closed(uow: UserUnitOfWork) -> None:
    connection = await uow.session.connection()
    raw = await connection.get_raw_connection()
    for _ in range(200):
        if raw.driver_connection is not None and raw.driver_connection.is_closed():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the driver never noticed the terminated backend")


async def _wait_until_active(dsn: str, app_name: str, pid: int) -> None:
    """Wait until backend ``pid`` runs a statement (so the kill lands mid-statement)."""
    admin = await asyncpg.connect(dsn, server_settings={"application_name": f"{app_name}-probe"})
    try:
        for _ in range(200):
            state = await admin.fetchval(
                "SELECT state FROM pg_stat_activity WHERE application_name = $1 AND pid = $2",
                app_name,
                pid,
            )
            if state == "active":
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"backend {pid} never started its statement")
    finally:
        await admin.close()


async def test_run_in_transaction_retries_a_connection_killed_mid_transaction(
    new_database: NewDatabase, app_name: str, figure: Figure
) -> None:
    url = await new_database()
    dsn = pg_admin_dsn(url)
    db = _database(url, app_name, pool_size=2)
    attempts: list[type[BaseException] | None] = []

    async def add_once(uow: UserUnitOfWork) -> int:
        user = await uow.users.add(User(name="retried", age=50))
        if not attempts:
            attempts.append(ConnectionLostError)
            await terminate(dsn, app_name, [await _own_pid(uow)])
        else:
            attempts.append(None)
        await uow.users.count()  # the first attempt's connection is gone by now
        return user.id

    try:
        user_id = await db.run_in_transaction(add_once, attempts=3, idempotent=False)
        assert attempts == [ConnectionLostError, None]
        async with db.unit_of_work(read_only=True) as uow:
            stored = await uow.users.list()
        assert [(user.id, user.name) for user in stored] == [(user_id, "retried")]
        figure(f"{len(attempts)} attempts, 1 row committed")
    finally:
        await db.dispose()


@pytest.mark.slow
async def test_a_server_restart_under_50_concurrent_units_of_work_loses_no_reported_success(
    cluster: Cluster, new_database: NewDatabase, app_name: str, figure: Figure
) -> None:
    url = await new_database(cluster.url())
    db = _database(url, app_name, pool_size=10, max_overflow=50, pool_timeout=10, connect_timeout=3)
    units, spread, hold = 50, 1.2, 0.4
    outcomes: dict[int, BaseException | None] = {}
    entered: dict[int, float] = {}
    restart_window: list[float] = []

    async def unit(i: int) -> None:
        await asyncio.sleep(i * spread / units)
        entered[i] = time.monotonic()
        try:
            async with db.unit_of_work() as uow:
                await uow.users.add(User(name=f"unit-{i}", age=i))
                await _sleep(uow, hold)
                await uow.commit()
        except Exception as error:
            outcomes[i] = error
        else:
            outcomes[i] = None

    async def restart() -> None:
        await asyncio.sleep(spread / 2)
        restart_window.append(time.monotonic())
        await asyncio.to_thread(cluster.restart)
        restart_window.append(time.monotonic())

    try:
        await _fill_pool(db, 10)
        await asyncio.gather(restart(), *(unit(i) for i in range(units)))
        # Later units of work succeed: the pool's dead connections are replaced silently.
        later = await asyncio.gather(
            *(_add(db, f"later-{i}") for i in range(10)), return_exceptions=True
        )
        assert later == [None] * 10, f"units of work after the restart failed: {later}"

        failures = {i: error for i, error in outcomes.items() if error is not None}
        raw = {i: error for i, error in failures.items() if not isinstance(error, DataAccessError)}
        assert not raw, f"raw driver errors leaked: {raw}"
        expected = (ConnectionLostError, CommitOutcomeUnknownError, UnavailableError)
        odd = {i: error for i, error in failures.items() if not isinstance(error, expected)}
        assert not odd, f"unexpected error classes during a restart: {odd}"
        assert all(error.__cause__ is not None for error in failures.values())
        assert failures, "the restart hit no unit of work in flight: the test proved nothing"
        succeeded = {f"unit-{i}" for i, error in outcomes.items() if error is None}
        # Usually a dozen; none when the restart outlasts the spread on a very slow machine.
        after = [i for i, at in entered.items() if at > restart_window[1]]
        assert all(outcomes[i] is None for i in after), {i: outcomes[i] for i in after}
        stored = set(await _names(db))
        assert succeeded, "not one of the 50 units of work succeeded"
        assert succeeded <= stored, f"reported success but missing: {succeeded - stored}"
        unknown = {
            f"unit-{i}" for i, e in failures.items() if isinstance(e, CommitOutcomeUnknownError)
        }
        # Nothing appears that was not reported committed, save an unknown COMMIT outcome.
        assert stored - {f"later-{i}" for i in range(10)} <= succeeded | unknown
        kinds = collections.Counter(type(error).__name__ for error in failures.values())
        figure(
            f"restart ({restart_window[1] - restart_window[0]:.2f} s) under {units} concurrent: "
            f"{len(failures)} "
            f"failed typed ({', '.join(f'{k} x{n}' for k, n in sorted(kinds.items()))}), "
            f"{len(succeeded)} succeeded, {len(succeeded & stored)}/{len(succeeded)} present, "
            f"{len(after)}/{len(after)} begun after the restart and 10/10 later ones succeeded"
        )
    finally:
        await db.dispose()


async def _add(db: Database[UserUnitOfWork], name: str) -> None:
    async with db.unit_of_work() as uow:
        await uow.users.add(User(name=name, age=1))
        await uow.commit()
