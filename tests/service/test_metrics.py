"""``db.metrics()``: pools, connection wait, units of work by outcome, retries, slow units."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest

from asyncdal import Database, DatabaseSettings
from asyncdal.errors import ConflictError, NotFoundError, RetryableError
from asyncdal.metrics import Histogram
from asyncdal.models import User
from asyncdal.users import UserUnitOfWork
from tests.faults._helpers_core import eventually
from tests.support import Backend


async def test_units_of_work_are_counted_by_outcome(backend: Backend) -> None:
    db = backend.database()
    email = f"{uuid.uuid4().hex[:8]}@example.com"
    try:
        async with db.unit_of_work() as uow:
            user = await uow.users.add(User(name="a", age=1, email=email))
            await uow.commit()
        async with db.unit_of_work() as uow:  # left without commit
            await uow.users.add(User(name="b", age=1))
        async with db.unit_of_work(read_only=True) as uow:
            await uow.users.get_one(user.id)
        with pytest.raises(ConflictError):
            async with db.unit_of_work() as uow:
                await uow.users.add(User(name="c", age=1, email=email))
        with pytest.raises(NotFoundError):
            async with db.unit_of_work(read_only=True) as uow:
                await uow.users.get_one(-1)
        units = db.metrics().units_of_work
    finally:
        await db.dispose()
    assert (units.committed, units.rolled_back, units.read_only) == (1, 1, 1)
    assert units.failed == {"ConflictError": 1, "NotFoundError": 1}
    assert units.duration.count == 5
    assert units.in_flight == 0


async def test_connection_wait_is_measured_for_every_unit_of_work(backend: Backend) -> None:
    db = backend.database(pool_size=2, max_overflow=0)

    async def read() -> None:
        async with db.unit_of_work(read_only=True) as uow:
            await uow.users.count()
            await asyncio.sleep(0.05)

    try:
        await asyncio.gather(*(read() for _ in range(8)))
        wait = db.metrics().connection_wait
    finally:
        await db.dispose()
    assert wait.count == 8
    assert wait.p50 is not None
    assert wait.p99 is not None
    assert wait.max is not None
    assert 0 < wait.p50 <= wait.p99 <= wait.max
    assert wait.max >= 0.1  # the last pair waited for two pairs before them (50 ms each)
    assert sum(n for _, n in wait.buckets) == 8


async def _waiting(db: Database[UserUnitOfWork], n: int) -> bool:
    snapshot = db.metrics()
    return snapshot.pools["primary"].waiting == n and snapshot.units_of_work.waiting == n


async def test_tasks_waiting_for_a_connection_are_counted(backend: Backend) -> None:
    db = backend.database(pool_size=1, max_overflow=0, pool_timeout=10)
    release = asyncio.Event()

    async def read() -> None:
        async with db.unit_of_work(read_only=True) as uow:
            await uow.users.count()
            await release.wait()

    holder = asyncio.create_task(read())
    try:
        assert await eventually(lambda: _waiting(db, 0), within=5)
        waiters = [asyncio.create_task(read()) for _ in range(3)]
        assert await eventually(lambda: _waiting(db, 3), within=5)
        snapshot = db.metrics()
        assert snapshot.pools["primary"].checked_out == 1
        assert snapshot.units_of_work.in_flight == 4
        release.set()
        await asyncio.gather(holder, *waiters)
        assert db.metrics().units_of_work.waiting == 0
    finally:
        release.set()
        await db.dispose()


async def test_retries_are_counted_by_reason(backend: Backend) -> None:
    db = backend.database()
    attempts = 0

    async def flaky(uow: UserUnitOfWork) -> None:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            raise RetryableError("transient, for the test")
        await uow.users.count()

    try:
        await db.run_in_transaction(flaky, attempts=3, base_delay=0)
        snapshot = db.metrics()
    finally:
        await db.dispose()
    assert snapshot.retries == {"RetryableError": 2}
    assert snapshot.units_of_work.failed == {"RetryableError": 2}
    assert snapshot.units_of_work.committed == 1


async def test_units_slower_than_the_threshold_are_counted(backend: Backend) -> None:
    db = backend.database(slow_unit_of_work_ms=100)
    try:
        async with db.unit_of_work(read_only=True):
            pass
        async with db.unit_of_work(read_only=True):
            await asyncio.sleep(0.15)
        units = db.metrics().units_of_work
    finally:
        await db.dispose()
    assert (units.slow, units.slow_threshold) == (1, 0.1)


async def test_with_metrics_off_only_the_pools_are_measured(backend: Backend) -> None:
    db = backend.database(metrics=False)
    try:
        async with db.unit_of_work(read_only=True) as uow:
            await uow.users.count()
        snapshot = db.metrics()
    finally:
        await db.dispose()
    assert snapshot.enabled is False
    assert snapshot.connection_wait.count == 0
    assert snapshot.units_of_work.read_only == 0
    assert snapshot.pools["primary"].size >= 1


async def test_a_snapshot_is_plain_json(backend: Backend) -> None:
    db = backend.database()
    try:
        async with db.unit_of_work(read_only=True) as uow:
            await uow.users.count()
        exported = json.loads(json.dumps(db.metrics().as_dict()))
    finally:
        await db.dispose()
    assert exported["units_of_work"]["read_only"] == 1
    assert exported["pools"]["primary"]["checked_out"] == 0


def test_histogram_percentiles_are_within_a_sixteenth_of_the_truth() -> None:
    histogram = Histogram()
    values = [n * 7919 % 1_000_003 + 1 for n in range(1, 10_001)]  # spread over 1 ns .. 1 ms
    for value in values:
        histogram.record(value)
    ordered = sorted(values)
    for q in (0.5, 0.99):
        exact = ordered[int(len(ordered) * q) - 1] / 1e9
        found = histogram.quantile(q)
        assert found is not None
        assert abs(found - exact) <= exact / 16 + 1e-9
    assert histogram.summary().max == max(values) / 1e9


def test_the_metrics_settings_are_read_from_the_environment() -> None:
    settings = DatabaseSettings.from_env(
        {
            "DATABASE_URL": "sqlite+aiosqlite:///x.db",
            "ASYNCDAL_SLOW_UNIT_OF_WORK_MS": "250",
            "ASYNCDAL_METRICS": "false",
        }
    )
    assert (settings.slow_unit_of_work_ms, settings.metrics) == (250.0, False)
