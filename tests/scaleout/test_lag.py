"""A replica lagging more than ``replica_max_lag_bytes`` of WAL is skipped until it catches up."""

from __future__ import annotations

import asyncio
import collections
import time

import asyncpg
import pytest

from asyncdal import Database
from asyncdal.users import UserUnitOfWork
from tests._figures import Figure
from tests.scaleout._helpers import Servers, port_of, replay_paused
from tests.scaleout.conftest import MakeDb

pytestmark = pytest.mark.postgres

MAX_LAG = 64 * 1024


async def _reads(db: Database[UserUnitOfWork], count: int) -> collections.Counter[int]:
    ports: collections.Counter[int] = collections.Counter()
    for _ in range(count):
        async with db.unit_of_work(read_only=True) as uow:
            ports[await port_of(uow)] += 1
    return ports


async def test_a_replica_lagging_beyond_the_limit_is_skipped_until_it_catches_up(
    make_db: MakeDb, clean: Servers, figure: Figure
) -> None:
    db = await make_db(replica_max_lag_bytes=MAX_LAG, replica_check_interval=0.05)
    lagging, healthy = clean.replica_ports
    assert set(await _reads(db, 10)) == {lagging, healthy}
    primary = await asyncpg.connect(clean.primary_dsn)
    try:
        async with replay_paused(clean.topology.replicas[0].dsn()):
            before = await primary.fetchval("SELECT pg_current_wal_lsn()")
            await primary.execute(
                "INSERT INTO users (name, age, created_at, updated_at, version) "
                "SELECT 'lag ' || i, 1, now(), now(), 1 FROM generate_series(1, 2000) i"
            )
            written = await primary.fetchval("SELECT pg_current_wal_lsn()") - before
            assert written > MAX_LAG
            await asyncio.sleep(0.3)  # a few check intervals
            while_lagging = await _reads(db, 20)
        resumed = time.monotonic()
        while lagging not in await _reads(db, 2):
            assert time.monotonic() - resumed < 5, "the replica never came back into rotation"
            await asyncio.sleep(0.02)
        back_after = time.monotonic() - resumed
    finally:
        await primary.close()
    assert while_lagging == {healthy: 20}
    figure(
        f"replica1 paused, {written // 1024} kB of WAL behind (limit {MAX_LAG // 1024} kB): "
        f"0/20 reads on it; back in rotation {back_after:.2f} s after replay resumed "
        "(check interval 0.05 s)"
    )
