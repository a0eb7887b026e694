"""Replicas that fail: stopped, hanging (SIGSTOP), all gone, and a recovery conflict.

A replica that fails at checkout is out of rotation for ``replica_retry_after`` seconds and the
unit of work that met the failure opens on another node, so the caller sees no error.
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Any

import asyncpg
import pytest
from sqlalchemy import event, text

from asyncdal import Database
from asyncdal.errors import UnavailableError
from asyncdal.users import UserUnitOfWork
from tests._figures import Figure
from tests.faults._cluster import free_port
from tests.scaleout._helpers import Servers, port_of, wait_until_replayed
from tests.scaleout.conftest import MakeDb

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def _connect_attempts(db: Database[UserUnitOfWork], node: str) -> list[float]:
    """The times at which ``db`` tries to open a connection to ``node`` (reads and checks)."""
    attempts: list[float] = []

    def record(*_: Any) -> None:
        attempts.append(time.monotonic())

    event.listen(db.engines[node].sync_engine, "do_connect", record)
    return attempts


async def _first_attempt_since(attempts: list[float], since: float, within: float = 10) -> float:
    """The first connect attempt at or after ``since`` (polled: attempts come from events)."""
    deadline = time.monotonic() + within
    found = [t for t in attempts if t >= since]
    while not found:
        assert time.monotonic() < deadline, "nothing tried the stopped replica"
        await asyncio.sleep(0.05)
        found = [t for t in attempts if t >= since]
    return found[0]


async def _read(db: Database[UserUnitOfWork]) -> int:
    async with db.unit_of_work(read_only=True) as uow:
        return await port_of(uow)


async def test_a_replica_stopped_mid_run_costs_no_read_an_error_and_is_not_tried_again(
    make_db: MakeDb, clean: Servers, figure: Figure
) -> None:
    # No health check after the first: only the reads themselves can find the replica gone.
    db = await make_db(replica_check_interval=3600, replica_retry_after=3600)
    stopped = clean.topology.replicas[0]
    attempts = _connect_attempts(db, "replica1")
    ports: collections.Counter[int] = collections.Counter()
    try:
        for _ in range(100):
            ports[await _read(db)] += 1
        await asyncio.to_thread(stopped.stop)
        stopped_at = time.monotonic()
        for _ in range(100):
            ports[await _read(db)] += 1
    finally:
        await asyncio.to_thread(stopped.start)
    after_stop = [t for t in attempts if t >= stopped_at]
    assert sum(ports.values()) == 200  # every read returned: none raised
    assert ports[stopped.port] == 50  # the first 100 alternated; the last 100 never got it
    assert len(after_stop) == 1, f"{len(after_stop)} connect attempts after the stop"
    figure(
        f"replica1 stopped after read 100 of 200: 200/200 reads succeeded, the read that met "
        f"it was opened on replica2; 1 connect attempt to replica1 after the stop, none again "
        f"(replica_retry_after {db.settings.replica_retry_after:.0f} s)"
    )


async def test_a_failed_replica_is_probed_again_only_after_retry_after_and_then_comes_back(
    make_db: MakeDb, clean: Servers, figure: Figure
) -> None:
    retry_after = 2.0
    db = await make_db(replica_retry_after=retry_after, replica_check_interval=0.1)
    stopped = clean.topology.replicas[0]
    attempts = _connect_attempts(db, "replica1")
    await _read(db)  # starts the health checks
    try:
        stopping = time.monotonic()  # the check may notice while pg_ctl still runs
        await asyncio.to_thread(stopped.stop)
        marked_down = await _first_attempt_since(attempts, stopping)
        await asyncio.sleep(max(0.0, marked_down + retry_after + 0.5 - time.monotonic()))
        early = [t for t in attempts if marked_down + 0.5 < t < marked_down + retry_after]
        late = [t for t in attempts if t >= marked_down + retry_after]
    finally:
        await asyncio.to_thread(stopped.start)
    await wait_until_replayed(clean)
    back = time.monotonic()
    while stopped.port not in {await _read(db) for _ in range(4)}:
        assert time.monotonic() - back < retry_after + 2, "the replica never came back"
    assert early == [], f"probed {len(early)} times within replica_retry_after"
    assert late, "the replica was never probed again after replica_retry_after"
    figure(
        f"replica1 down: 0 probes within replica_retry_after={retry_after:.0f} s, "
        f"{len(late)} in the 0.5 s after it; back in rotation "
        f"{time.monotonic() - back:.2f} s after it restarted"
    )


async def test_a_hanging_replica_costs_the_first_read_one_connect_timeout_and_then_nothing(
    make_db: MakeDb, clean: Servers, figure: Figure
) -> None:
    connect_timeout = 1.0
    hanging = clean.topology.replicas[0]
    # A fresh Database: no pooled connection to the replica, so reads must connect to it.
    db = await make_db(connect_timeout=connect_timeout, replica_retry_after=30)
    with hanging.stopped_postmaster():
        started = time.monotonic()
        first_port = await _read(db)
        first = time.monotonic() - started
        later: list[float] = []
        later_ports: set[int] = set()
        for _ in range(20):
            started = time.monotonic()
            later_ports.add(await _read(db))
            later.append(time.monotonic() - started)
    assert first_port == clean.replica_ports[1]
    assert first < connect_timeout + 0.5, f"first read took {first:.2f} s"
    assert later_ports == {clean.replica_ports[1]}
    assert max(later) < 0.25, f"a later read waited {max(later):.2f} s"
    figure(
        f"replica1 SIGSTOPped: first read succeeded in {first:.2f} s (connect_timeout "
        f"{connect_timeout:.1f} s), the next 20 in at most {max(later) * 1000:.0f} ms each, "
        "all on replica2"
    )


@pytest.mark.parametrize("fallback", ["primary", "raise"])
async def test_with_every_replica_down_reads_fall_back_as_configured(
    make_db: MakeDb, clean: Servers, fallback: str
) -> None:
    gone = tuple(f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/x" for _ in range(2))
    db = await make_db(replica_urls=gone, replica_fallback=fallback)
    for _ in range(3):
        if fallback == "primary":
            assert await _read(db) == clean.primary_port
        else:
            with pytest.raises(UnavailableError, match="replica_fallback is 'raise'"):
                await _read(db)
    statuses = db.pool_statuses()  # (the primary's may be lent to the health check right now)
    assert statuses["replica1"].checked_out == statuses["replica2"].checked_out == 0


async def test_a_recovery_conflict_is_retried_on_a_replica_by_run_in_transaction(
    make_db: MakeDb, clean: Servers, app_name: str, figure: Figure
) -> None:
    db = await make_db()
    primary = await asyncpg.connect(clean.primary_dsn)
    try:
        await primary.execute(
            "INSERT INTO users (name, age, created_at, updated_at, version) "
            "SELECT 'conflict ' || i, 1, now(), now(), 1 FROM generate_series(1, 200) i"
        )
        await wait_until_replayed(clean)
        attempts: list[tuple[int, str | None]] = []

        async def count_slowly(uow: UserUnitOfWork) -> int:
            port = await port_of(uow)
            try:
                if not attempts:  # the first attempt holds its snapshot while VACUUM runs
                    statement = "SELECT count(*) FROM users, pg_sleep(5) WHERE age = 1"
                else:
                    statement = "SELECT count(*) FROM users"
                found: int = (await uow.session.execute(text(statement))).scalar_one()
            except Exception as error:
                attempts.append((port, getattr(getattr(error, "orig", None), "sqlstate", None)))
                raise
            attempts.append((port, None))
            return found

        reading = asyncio.ensure_future(db.run_in_transaction(count_slowly, read_only=True))
        await _until_running(clean, app_name, "pg_sleep")
        await primary.execute("DELETE FROM users")
        await primary.execute("VACUUM users")
        counted = await asyncio.wait_for(reading, timeout=10)
    finally:
        await primary.close()
    assert [code for _, code in attempts] == ["40001", None]
    assert all(port in clean.replica_ports for port, _ in attempts)
    assert counted == 0  # the retry read after the DELETE had been replayed
    figure(
        f"recovery conflict (VACUUM on the primary, max_standby_streaming_delay 100ms): "
        f"attempt 1 on port {attempts[0][0]} failed 40001, run_in_transaction(read_only=True) "
        f"retried it on port {attempts[1][0]}: 2 attempts, no error"
    )


async def _until_running(servers: Servers, app_name: str, fragment: str) -> None:
    """Until one of the replicas runs a query of ours containing ``fragment``."""
    deadline = time.monotonic() + 5
    while True:
        for replica in servers.topology.replicas:
            connection = await asyncpg.connect(replica.dsn())
            try:
                running = await connection.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 "
                    "AND state = 'active' AND query LIKE $2",
                    app_name,
                    f"%{fragment}%",
                )
            finally:
                await connection.close()
            if running:
                return
        assert time.monotonic() < deadline, "the slow read never started on a replica"
        await asyncio.sleep(0.02)
