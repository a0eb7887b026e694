"""Cancellation: a task cancelled anywhere inside a unit of work leaves nothing behind.

1,000 tasks per backend are cancelled at random points (before the transaction, mid-query,
mid-flush, mid-commit, after it). ``CancelledError`` must come out untouched, and afterwards no
connection is checked out, no backend idles in a transaction (SQLite: the file's write lock is
free) and every unit of work is all or nothing. A cancel during COMMIT leaves the outcome
unknown (committed or not), but never half of it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Literal

import pytest
from sqlalchemy import func, select, text

from asyncdal import Database
from asyncdal.errors import QueryTimeoutError
from asyncdal.models import User
from asyncdal.users import UserUnitOfWork
from tests.faults._helpers_core import (
    eventually,
    no_transaction_left_open,
    pg_activity,
)
from tests.support import Backend

TASKS = 1000
CONCURRENCY = 25
PREFIX = "cancel-"
MESSAGE = "fault-injection: cancelled on purpose"

FIGURES = logging.getLogger("tests.faults.figures")  # shown with --log-cli-level=INFO

Phase = Literal["start", "query", "flush", "commit", "committed", "after"]


@pytest.fixture
async def mine(
    backend: Backend, db: Database[UserUnitOfWork]
) -> AsyncIterator[Database[UserUnitOfWork]]:
    """A Database of this file's own (``db`` empties the tables first)."""
    database = backend.database(
        application_name="asyncdal-faults-cancel",
        pool_size=CONCURRENCY,
        max_overflow=0,
        sqlite_busy_timeout=3,  # a leaked write transaction fails fast instead of hanging
    )
    try:
        yield database
    finally:
        await database.dispose()


async def _worker(
    db: Database[UserUnitOfWork],
    tag: str,
    phases: dict[str, Phase],
    caught: dict[str, object],
    cancel_inside: float | None = None,
) -> None:
    """Two rows in one unit of work, then park so that the cancellation always lands.

    ``cancel_inside`` arms the cancellation once the unit of work is entered (so it lands in
    the query, the flushes or the COMMIT rather than in the queue for a connection).
    """
    task = asyncio.current_task()
    assert task is not None
    try:
        phases[tag] = "start"
        async with db.unit_of_work() as uow:
            if cancel_inside is not None:
                asyncio.get_running_loop().call_later(cancel_inside, task.cancel, MESSAGE)
            phases[tag] = "query"
            await uow.users.count(name=tag)
            phases[tag] = "flush"
            await uow.users.add(User(name=tag, age=1))
            await uow.users.add(User(name=tag, age=2))
            phases[tag] = "commit"
            await uow.commit()
            phases[tag] = "committed"
        phases[tag] = "after"
        await asyncio.Event().wait()
    except BaseException as error:
        caught[tag] = error
        raise


async def _typical_duration(db: Database[UserUnitOfWork]) -> float:
    """How long a worker's unit of work takes once entered, at full concurrency (to aim the
    cancellations): SQLite runs the writers one by one, PostgreSQL all at once."""
    phases: dict[str, Phase] = {}
    tags = [f"warmup-{i}" for i in range(CONCURRENCY)]
    started = time.perf_counter()
    tasks = [asyncio.create_task(_worker(db, tag, phases, {})) for tag in tags]

    async def finished() -> bool:
        return all(phases.get(tag) == "after" for tag in tags)

    ok = await eventually(finished, within=30, interval=0.001)
    elapsed = time.perf_counter() - started
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert ok, f"the warm-up units of work did not finish: {phases}"
    async with db.unit_of_work() as uow:
        await uow.session.execute(text("DELETE FROM users"))
        await uow.commit()
    return elapsed / CONCURRENCY if db.backend == "sqlite" else elapsed


async def test_cancelling_units_of_work_at_random_points_leaves_nothing_behind(
    mine: Database[UserUnitOfWork],
) -> None:
    rng = random.Random(4)
    window = await _typical_duration(mine) * 1.5
    phases: dict[str, Phase] = {}
    caught: dict[str, object] = {}
    outcomes: dict[str, bool] = {}
    for first in range(0, TASKS, CONCURRENCY):
        batch: dict[str, asyncio.Task[None]] = {}
        for i in range(first, min(first + CONCURRENCY, TASKS)):
            tag = f"{PREFIX}{i}"
            if rng.random() < 0.2:  # cancelled anywhere, the queue for a connection included
                task = asyncio.create_task(_worker(mine, tag, phases, caught))
                asyncio.get_running_loop().call_later(rng.uniform(0, window), task.cancel, MESSAGE)
            else:
                inside = rng.uniform(0, window)
                task = asyncio.create_task(_worker(mine, tag, phases, caught, inside))
            batch[tag] = task
        await asyncio.gather(*batch.values(), return_exceptions=True)
        outcomes.update({tag: task.cancelled() for tag, task in batch.items()})

    async with mine.unit_of_work(read_only=True) as uow:
        rows = dict(
            (
                await uow.session.execute(
                    select(User.name, func.count())
                    .where(User.name.startswith(PREFIX))
                    .group_by(User.name)
                )
            ).all()
        )
    landed = Counter(phases.values())
    cancelled = sum(outcomes.values())
    untouched = sum(
        1
        for error in caught.values()
        if type(error) is asyncio.CancelledError and error.args == (MESSAGE,)
    )
    partial = sorted(tag for tag, n in rows.items() if n != 2)
    lost = sorted(t for t, p in phases.items() if p in ("committed", "after") and t not in rows)
    leaked = sorted(t for t, p in phases.items() if p in ("start", "query", "flush") and t in rows)
    clean = await eventually(lambda: no_transaction_left_open(mine), within=2)
    figures = (
        f"{cancelled}/{TASKS} cancelled, {untouched} CancelledError untouched, "
        f"landed {dict(landed)}, committed {len(rows)}, partial {len(partial)}, "
        f"lost after commit {len(lost)}, committed before COMMIT {len(leaked)}, "
        f"pool {mine.pool_status()}, nothing left open: {clean}"
    )
    FIGURES.info("cancellation[%s]: %s", mine.backend, figures)
    assert cancelled == TASKS, figures
    assert untouched == TASKS, figures
    assert (partial, lost, leaked) == ([], [], []), figures
    assert clean, figures
    # The random cancels must really have hit the inside of units of work, not only the edges.
    assert min(landed["query"], landed["flush"], landed["commit"]) > 0, figures
    async with mine.unit_of_work() as uow:  # and the pool still serves working connections
        await uow.users.add(User(name="after-the-storm", age=1))
        await uow.commit()


@pytest.mark.only_backend("postgres")
@pytest.mark.parametrize("how", ["asyncio.timeout", "unit_of_work(timeout=...)"])
async def test_timeout_around_a_unit_of_work_stops_the_query_on_the_server(
    backend: Backend, how: str
) -> None:
    mine = backend.database(application_name="asyncdal-faults-cancel-query")
    try:
        expected = TimeoutError if how == "asyncio.timeout" else QueryTimeoutError
        with pytest.raises(expected):
            if how == "asyncio.timeout":
                async with asyncio.timeout(0.3), mine.unit_of_work() as uow:
                    await uow.session.execute(text("SELECT pg_sleep(30)"))
            else:
                async with mine.unit_of_work(timeout=0.3) as uow:
                    await uow.session.execute(text("SELECT pg_sleep(30)"))

        async def query_gone() -> bool:
            return not [
                a for a in await pg_activity(mine) if "pg_sleep" in a.query and a.state == "active"
            ]

        assert await eventually(query_gone, within=1.0), await pg_activity(mine)
        assert await eventually(lambda: no_transaction_left_open(mine), within=1.0)
        async with mine.unit_of_work(read_only=True) as uow:
            assert (await uow.session.execute(text("SELECT 1"))).scalar_one() == 1
    finally:
        await mine.dispose()


async def test_timeout_while_holding_a_transaction_rolls_it_back_and_frees_its_locks(
    backend: Backend, db: Database[UserUnitOfWork]
) -> None:
    mine = backend.database(application_name="asyncdal-faults-cancel-abandon")
    try:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3), mine.unit_of_work() as uow:
                await uow.users.add(User(name="abandoned", age=1))
                await asyncio.sleep(30)
        assert await eventually(lambda: no_transaction_left_open(mine), within=1.0)
        # Another writer gets through at once, and sees nothing of the abandoned work.
        async with asyncio.timeout(5), db.unit_of_work() as uow:
            assert await uow.users.count(name="abandoned") == 0
            await uow.users.add(User(name="next", age=1))
            await uow.commit()
    finally:
        await mine.dispose()
