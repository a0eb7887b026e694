"""The fast paths change nothing but the speed.

The same random sequences of writes (adds, changes, deletes, savepoints, rollbacks, conflicts,
stale copies, related objects) run on two databases of one backend, one with the fast paths on
and one with them off, step by step. After every step both must have sent the same SQL with the
same parameters, hold the same rows as stored (SQLite's text form of a datetime included), and
leave every object the step touched in the same ORM state. The clock that column defaults read
is replaced by a counter, restarted for each side, so timestamps compare exactly too.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import delete, event

from asyncdal import Database, DatabaseSettings, models
from asyncdal.migrations import upgrade
from asyncdal.users import UserUnitOfWork
from tests.conftest import clean
from tests.integration._fastpath_ops import OPS, Gadget, Scratch, World, rows
from tests.support import Backend, create_pg_database, drop_pg_database

SEEDS = range(6)
STEPS = 40


class Clock:
    """Stands in for ``datetime`` in ``asyncdal.models``: a tick per call from a fixed start."""

    def __init__(self) -> None:
        self.start = datetime(2030, 1, 1, tzinfo=UTC)
        self.ticks = 0

    def restart(self, step: int) -> None:
        self.start = datetime(2030, 1, 1, tzinfo=UTC) + timedelta(seconds=step)
        self.ticks = 0

    def now(self, tz: Any = None) -> datetime:
        self.ticks += 1
        return (self.start + timedelta(microseconds=self.ticks)).astimezone(tz)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(models, "datetime", fake)
    return fake


@pytest.fixture(scope="module")
async def pair(
    backend: Backend, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[Database[UserUnitOfWork], Database[UserUnitOfWork]]]:
    """Two migrated databases of the backend: fast paths off, then on."""
    urls: list[str] = []
    made: list[Database[UserUnitOfWork]] = []
    try:
        for fast in (False, True):
            if backend.name == "sqlite":
                path = tmp_path_factory.mktemp("differential") / f"fast-{fast}.db"
                urls.append(f"sqlite+aiosqlite:///{path}")
            else:
                urls.append(await create_pg_database("asyncdal_differential"))
            settings = DatabaseSettings(
                urls[-1], application_name="asyncdal-differential", fast_paths=fast
            )
            made.append(Database(settings, unit_of_work=UserUnitOfWork))
            await upgrade(made[-1])
            async with made[-1].engine.begin() as connection:
                await connection.run_sync(Scratch.metadata.create_all)
        yield made[0], made[1]
    finally:
        for db in made:
            await db.dispose()
        for url in urls:
            if backend.name == "postgres":
                await drop_pg_database(url)


@contextmanager
def statements(db: Database[UserUnitOfWork]) -> Iterator[list[tuple[str, Any]]]:
    sent: list[tuple[str, Any]] = []

    def record(*args: Any) -> None:
        sent.append((args[2], args[3]))

    event.listen(db.engine.sync_engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        event.remove(db.engine.sync_engine, "before_cursor_execute", record)


async def test_fast_paths_leave_the_same_sql_rows_and_objects_as_the_flush(
    pair: tuple[Database[UserUnitOfWork], Database[UserUnitOfWork]],
    clock: Clock,
    taken: dict[str, int],
) -> None:
    steps = 0
    for seed in SEEDS:
        worlds = [World(db) for db in pair]
        for world in worlds:
            await clean(world.db)
            async with world.db.engine.begin() as connection:
                await connection.execute(delete(Gadget))
        plan = random.Random(seed)
        for step in range(STEPS):
            op = plan.choice(OPS)
            op_seed = plan.getrandbits(64)
            seen = []
            for world in worlds:
                clock.restart(step)
                with statements(world.db) as sent:
                    outcome = await op(world, random.Random(op_seed))
                seen.append({"outcome": outcome, "sql": sent, "rows": await rows(world.db)})
            where = f"seed {seed}, step {step} ({op.__name__})"
            flush, fast = seen
            assert fast["outcome"] == flush["outcome"], where
            assert fast["sql"] == flush["sql"], where
            assert fast["rows"] == flush["rows"], where
            steps += 1
    # The fast side really took the fast paths, often (the flush side never does).
    assert taken["insert"] > steps // 2, taken
    assert taken["update"] > steps // 8, taken
