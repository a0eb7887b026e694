"""SQLite contention: many writers on one file, none fails, none is lost; readers never wait.

64 tasks x 10 read-modify-write increments of one counter: the final value is exact and no
"database is locked" surfaces (each increment is one plain unit of work, no retry to hide it).
Readers are not blocked while a writer holds its transaction; ``foreign_keys`` is on for every
pooled connection.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from asyncdal import Database, DatabaseSettings
from asyncdal.errors import ConflictError
from asyncdal.models import Post, User
from asyncdal.users import UserUnitOfWork
from tests.faults._helpers_core import sql

FIGURES = logging.getLogger("tests.faults.figures")  # shown with --log-cli-level=INFO
TASKS, ROUNDS = 64, 10
APP = "asyncdal-faults-sqlite"

pytestmark = pytest.mark.sqlite


def _database(path: Path, **settings: Any) -> Database[UserUnitOfWork]:
    url = f"sqlite+aiosqlite:///{path}"
    settings.setdefault("application_name", APP)
    return Database(DatabaseSettings(url, **settings), unit_of_work=UserUnitOfWork)


@pytest.fixture
async def counter_file(tmp_path: Path) -> Path:
    """A fresh SQLite file with one counter row at 0."""
    path = tmp_path / "contention.db"
    async with _database(path) as db, db.engine.begin() as connection:
        await connection.execute(text("CREATE TABLE counter (id INTEGER PRIMARY KEY, n INTEGER)"))
        await connection.execute(text("INSERT INTO counter VALUES (1, 0)"))
    return path


async def _hammer(dbs: list[Database[UserUnitOfWork]]) -> tuple[int, list[BaseException]]:
    async def increments(db: Database[UserUnitOfWork]) -> None:
        for _ in range(ROUNDS):
            async with db.unit_of_work() as uow:
                n = (await sql(uow, "SELECT n FROM counter WHERE id = 1")).scalar_one()
                await asyncio.sleep(0)  # give every other task its chance to interleave
                await sql(uow, "UPDATE counter SET n = :n WHERE id = 1", n=n + 1)
                await uow.commit()

    results = await asyncio.gather(
        *(increments(dbs[i % len(dbs)]) for i in range(TASKS)), return_exceptions=True
    )
    async with dbs[0].unit_of_work(read_only=True) as uow:
        final = (await sql(uow, "SELECT n FROM counter WHERE id = 1")).scalar_one()
    return int(final), [r for r in results if isinstance(r, BaseException)]


@pytest.mark.parametrize("databases", [1, 2], ids=["one-database", "two-databases-one-file"])
async def test_concurrent_increments_on_one_file_are_exact_and_never_locked(
    counter_file: Path, databases: int
) -> None:
    """Two ``Database`` objects on one file stand for two processes: no shared in-process
    queue, only ``BEGIN IMMEDIATE`` and the busy timeout keep them apart."""
    dbs = [_database(counter_file, pool_size=8) for _ in range(databases)]
    try:
        final, failures = await _hammer(dbs)
    finally:
        await asyncio.gather(*(db.dispose() for db in dbs))
    expected = TASKS * ROUNDS
    locked = [f for f in failures if "locked" in str(f)]
    figures = (
        f"{expected - (expected - final)}/{expected} increments, final {final}, "
        f"{len(locked)} 'database is locked', {len(failures)} failures {failures[:3]}"
    )
    FIGURES.info("sqlite contention[%d db]: %s", databases, figures)
    assert failures == [], figures
    assert final == expected, figures


async def test_readers_are_not_blocked_while_a_writer_holds_its_transaction(
    counter_file: Path,
) -> None:
    async with _database(counter_file) as db:
        writing = asyncio.Event()
        read_done = asyncio.Event()

        async def writer() -> None:
            async with db.unit_of_work() as uow:
                await sql(uow, "UPDATE counter SET n = 42 WHERE id = 1")
                writing.set()
                await read_done.wait()  # hold the write transaction until the read is done
                await uow.commit()

        task = asyncio.create_task(writer())
        await writing.wait()
        async with asyncio.timeout(5), db.unit_of_work(read_only=True) as uow:
            seen = (await sql(uow, "SELECT n FROM counter WHERE id = 1")).scalar_one()
        assert not task.done()  # the writer was still in its transaction during the read
        read_done.set()
        await task
        assert seen == 0  # the last committed value, not the writer's uncommitted one


async def test_foreign_keys_are_on_for_every_pooled_connection(tmp_path: Path) -> None:
    source = tmp_path / "fk.db"
    async with _database(source, pool_size=4, max_overflow=0) as db:
        async with db.engine.begin() as connection:
            await connection.run_sync(User.metadata.create_all)
        for _round in range(2):  # fresh connections, then again after the pool is rebuilt
            held = [db.unit_of_work(read_only=True) for _ in range(4)]
            for uow in held:
                await uow.__aenter__()
            try:
                assert db.pool_status().checked_out == 4
                flags = [(await sql(uow, "PRAGMA foreign_keys")).scalar_one() for uow in held]
            finally:
                for uow in held:
                    await uow.__aexit__(None, None, None)
            assert flags == [1, 1, 1, 1]
            with pytest.raises(ConflictError):
                async with db.unit_of_work() as uow:
                    await uow.posts.add(Post(author_id=123456, title="orphan"))
            await db.dispose()
