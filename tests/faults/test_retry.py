"""Transaction retry: ``run_in_transaction`` re-runs the whole unit of work on RetryableError only.

Proof on the real servers: 50 concurrent SERIALIZABLE read-modify-write increments of one counter
end at exactly +50; an A,B / B,A deadlock pair both finish; a stale cached statement after DDL,
SQLite busy and a connection lost mid-transaction are retried; a unique violation, a cancellation
and a connection lost during COMMIT (unless the work is idempotent) are not.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from asyncdal import Database
from asyncdal.errors import (
    CommitOutcomeUnknownError,
    ConfigurationError,
    ConflictError,
    RetryableError,
)
from asyncdal.models import User
from asyncdal.users import UserUnitOfWork
from tests.faults._helpers_core import (
    PROBE_APP,
    pg_activity,
    sql,
    sqlite_path,
)
from tests.support import Backend, pg_admin_dsn

FIGURES = logging.getLogger("tests.faults.figures")  # shown with --log-cli-level=INFO
INCREMENTS = 50


@pytest.fixture
async def mine(
    backend: Backend, db: Database[UserUnitOfWork]
) -> AsyncIterator[Database[UserUnitOfWork]]:
    """A Database of this file's own (``db`` empties the tables first)."""
    database = backend.database(application_name="asyncdal-faults-retry")
    try:
        yield database
    finally:
        await database.dispose()


async def _new_user(db: Database[UserUnitOfWork], name: str, age: int = 0) -> int:
    async with db.unit_of_work() as uow:
        user = await uow.users.add(User(name=name, age=age))
        await uow.commit()
    return user.id


async def _age(db: Database[UserUnitOfWork], user_id: int) -> int:
    async with db.unit_of_work(read_only=True) as uow:
        return (await uow.users.get_one(user_id)).age


async def test_concurrent_serializable_increments_all_land_exactly_once(
    mine: Database[UserUnitOfWork],
) -> None:
    counter = await _new_user(mine, "counter")
    calls = 0

    async def increment(uow: UserUnitOfWork) -> None:
        nonlocal calls
        calls += 1
        # Plain SQL, no version column: only the isolation level stands between two
        # concurrent read-modify-writes and a lost update.
        value = (await sql(uow, "SELECT age FROM users WHERE id = :id", id=counter)).scalar_one()
        await asyncio.sleep(0.005)  # widen the race window
        await sql(uow, "UPDATE users SET age = :age WHERE id = :id", age=value + 1, id=counter)

    results = await asyncio.gather(
        *(
            mine.run_in_transaction(
                increment,
                attempts=200,
                isolation_level="SERIALIZABLE",
                base_delay=0.002,
                max_delay=0.05,
            )
            for _ in range(INCREMENTS)
        ),
        return_exceptions=True,
    )
    failures = [r for r in results if isinstance(r, BaseException)]
    final = await _age(mine, counter)
    figures = (
        f"{INCREMENTS - len(failures)}/{INCREMENTS} committed, final +{final}, "
        f"{calls} attempts ({calls - INCREMENTS} retried), failures {failures[:3]}"
    )
    FIGURES.info("retry[%s]: %s", mine.backend, figures)
    assert failures == [], figures
    assert final == INCREMENTS, figures
    if mine.backend == "postgresql":
        # The race really happened: SERIALIZABLE refused some attempts and they were re-run.
        assert calls > INCREMENTS, figures


async def test_unknown_isolation_level_is_refused(mine: Database[UserUnitOfWork]) -> None:
    with pytest.raises(ConfigurationError, match="isolation_level"):
        mine.unit_of_work(isolation_level="CHAOS")  # type: ignore[arg-type]  # on purpose


@pytest.mark.only_backend("postgres")
async def test_deadlocked_pair_both_finish(
    backend: Backend, mine: Database[UserUnitOfWork]
) -> None:
    a, b = await _new_user(mine, "a"), await _new_user(mine, "b")
    both_hold_their_first = asyncio.Barrier(2)
    calls = {"ab": 0, "ba": 0}

    def transfer(
        label: str, first: int, second: int
    ) -> Callable[[UserUnitOfWork], Awaitable[None]]:
        async def fn(uow: UserUnitOfWork) -> None:
            calls[label] += 1
            bump = "UPDATE users SET age = age + 1 WHERE id = :id"
            await sql(uow, bump, id=first)
            if calls[label] == 1:  # only the first attempts meet: that is the deadlock
                async with asyncio.timeout(10):
                    await both_hold_their_first.wait()
            await sql(uow, bump, id=second)

        return fn

    ab = mine.run_in_transaction(transfer("ab", a, b), attempts=3)
    ba = mine.run_in_transaction(transfer("ba", b, a), attempts=3)
    async with asyncio.timeout(30):
        await asyncio.gather(ab, ba)
    assert (await _age(mine, a), await _age(mine, b)) == (2, 2)
    assert sorted(calls.values()) == [1, 2], calls  # one was the deadlock victim, re-run once


async def test_unique_violation_is_never_retried(mine: Database[UserUnitOfWork]) -> None:
    async with mine.unit_of_work() as uow:
        await uow.users.add(User(name="first", age=1, email="taken@example.com"))
        await uow.commit()
    calls = 0

    async def add_duplicate(uow: UserUnitOfWork) -> None:
        nonlocal calls
        calls += 1
        await uow.users.add(User(name="second", age=1, email="taken@example.com"))

    with pytest.raises(ConflictError) as raised:
        await mine.run_in_transaction(add_duplicate, attempts=5)
    assert not isinstance(raised.value, RetryableError)
    assert calls == 1


async def test_cancellation_is_never_retried(mine: Database[UserUnitOfWork]) -> None:
    calls = 0
    started = asyncio.Event()

    async def slow(uow: UserUnitOfWork) -> None:
        nonlocal calls
        calls += 1
        await uow.users.add(User(name="cancelled", age=1))
        started.set()
        await asyncio.sleep(30)

    task = asyncio.create_task(mine.run_in_transaction(slow, attempts=5))
    await started.wait()
    task.cancel("stop")
    with pytest.raises(asyncio.CancelledError):
        await task
    assert calls == 1
    assert mine.pool_status().checked_out == 0
    async with mine.unit_of_work(read_only=True) as uow:
        assert await uow.users.count(name="cancelled") == 0


@pytest.mark.only_backend("postgres")
async def test_stale_cached_statement_after_ddl_is_retried(
    backend: Backend, mine: Database[UserUnitOfWork]
) -> None:
    table = "faults_retry_cached"
    async with mine.engine.begin() as connection:
        await connection.execute(text(f"DROP TABLE IF EXISTS {table}"))
        await connection.execute(text(f"CREATE TABLE {table} (id int PRIMARY KEY, v int)"))
        await connection.execute(text(f"INSERT INTO {table} VALUES (1, 10)"))
    calls = 0

    async def read(uow: UserUnitOfWork) -> int:
        nonlocal calls
        calls += 1
        return int((await sql(uow, f"SELECT v FROM {table}")).scalar_one())

    small = backend.database(application_name="asyncdal-faults-retry-ddl", pool_size=1)
    try:
        assert await small.run_in_transaction(read) == 10  # prepares and caches the statement
        async with mine.engine.begin() as connection:
            await connection.execute(text(f"ALTER TABLE {table} ALTER COLUMN v TYPE bigint"))
        calls = 0
        assert await small.run_in_transaction(read, attempts=3) == 10
        assert calls == 2, "the first attempt should have hit the stale cached statement"
    finally:
        await small.dispose()
        async with mine.engine.begin() as connection:
            await connection.execute(text(f"DROP TABLE IF EXISTS {table}"))


@pytest.mark.only_backend("sqlite")
async def test_sqlite_busy_from_another_process_is_retried(
    backend: Backend, db: Database[UserUnitOfWork], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="asyncdal")
    mine = backend.database(application_name="asyncdal-faults-retry-busy", sqlite_busy_timeout=0.2)
    other = sqlite3.connect(sqlite_path(mine), isolation_level=None)  # stands for a 2nd process
    calls = 0

    async def add(uow: UserUnitOfWork) -> None:
        nonlocal calls
        calls += 1
        await uow.users.add(User(name="patient", age=1))

    try:
        other.execute("BEGIN IMMEDIATE")
        task = asyncio.create_task(mine.run_in_transaction(add, attempts=50, base_delay=0.05))
        await asyncio.sleep(0.5)  # long enough for a SQLITE_BUSY or two (busy timeout 0.2 s)
        assert not task.done()
        other.execute("ROLLBACK")
        async with asyncio.timeout(20):
            await task
    finally:
        other.close()
        await mine.dispose()
    async with db.unit_of_work(read_only=True) as uow:
        assert await uow.users.count(name="patient") == 1
    assert calls == 1  # the busy attempts failed at BEGIN IMMEDIATE, before fn ran
    assert any("after RetryableError" in r.getMessage() for r in caplog.records), caplog.text


async def _terminate_own_backend(db: Database[UserUnitOfWork], pid: int) -> None:
    """Terminate one backend of ``db``'s own (checked by application_name) and wait for it."""
    assert pid in {a.pid for a in await pg_activity(db)}, "not one of our own backends"
    url = db.settings.url
    probe = await asyncpg.connect(
        pg_admin_dsn(url, make_url(url).database or "postgres"),
        server_settings={"application_name": PROBE_APP},
    )
    try:
        await probe.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE pid = $1 AND application_name = $2",
            pid,
            db.settings.application_name,
        )
    finally:
        await probe.close()
    for _ in range(100):
        if pid not in {a.pid for a in await pg_activity(db)}:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"backend {pid} is still there")


@pytest.mark.only_backend("postgres")
async def test_connection_lost_mid_transaction_is_retried(
    backend: Backend, mine: Database[UserUnitOfWork]
) -> None:
    user = await _new_user(mine, "target")
    calls = 0

    async def bump(uow: UserUnitOfWork) -> None:
        nonlocal calls
        calls += 1
        pid = (await sql(uow, "SELECT pg_backend_pid()")).scalar_one()
        if calls == 1:
            await _terminate_own_backend(mine, pid)
        await sql(uow, "UPDATE users SET age = age + 1 WHERE id = :id", id=user)

    await mine.run_in_transaction(bump, attempts=3)
    assert calls == 2
    assert await _age(mine, user) == 1
    assert mine.pool_status().checked_out == 0


@pytest.fixture
async def slow_commit_table(backend: Backend, mine: Database[UserUnitOfWork]) -> AsyncIterator[str]:
    """A table whose deferred trigger makes COMMIT take half a second (PostgreSQL only)."""
    table = "faults_retry_slow_commit"
    async with mine.engine.begin() as connection:
        for statement in (
            f"DROP TABLE IF EXISTS {table}",
            f"CREATE TABLE {table} (id serial PRIMARY KEY, v int)",
            "CREATE OR REPLACE FUNCTION faults_slow_commit() RETURNS trigger "
            "LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(0.5); RETURN NULL; END $$",
            f"CREATE CONSTRAINT TRIGGER slow AFTER INSERT ON {table} "
            "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION faults_slow_commit()",
        ):
            await connection.execute(text(statement))
    yield table
    async with mine.engine.begin() as connection:
        await connection.execute(text(f"DROP TABLE IF EXISTS {table}"))


@pytest.mark.only_backend("postgres")
@pytest.mark.parametrize("idempotent", [False, True], ids=["not-idempotent", "idempotent"])
async def test_connection_lost_during_commit_is_retried_only_when_idempotent(
    mine: Database[UserUnitOfWork], slow_commit_table: str, idempotent: bool
) -> None:
    calls = 0
    killed: list[int] = []

    async def kill_during_commit(pid: int) -> None:
        for _ in range(200):
            if any(
                a.pid == pid and a.query.strip().upper().startswith("COMMIT")
                for a in await pg_activity(mine)
            ):
                await _terminate_own_backend(mine, pid)
                killed.append(pid)
                return
            await asyncio.sleep(0.01)

    killers: list[asyncio.Task[None]] = []

    async def insert(uow: UserUnitOfWork) -> None:
        nonlocal calls
        calls += 1
        await sql(uow, f"INSERT INTO {slow_commit_table} (v) VALUES (1)")
        if calls == 1:
            pid = (await sql(uow, "SELECT pg_backend_pid()")).scalar_one()
            killers.append(asyncio.create_task(kill_during_commit(pid)))

    try:
        if idempotent:
            await mine.run_in_transaction(insert, attempts=3, idempotent=True)
            assert calls == 2
        else:
            with pytest.raises(CommitOutcomeUnknownError):
                await mine.run_in_transaction(insert, attempts=3)
            assert calls == 1
    finally:
        await asyncio.gather(*killers)
    assert killed, "the backend was never seen running COMMIT"
    assert mine.pool_status().checked_out == 0


@pytest.mark.only_backend("postgres")
async def test_retryable_error_raised_through_the_session_escape_hatch_is_retried(
    mine: Database[UserUnitOfWork],
) -> None:
    attempts = 0

    async def raw_then_fine(uow: UserUnitOfWork) -> str:
        nonlocal attempts
        attempts += 1
        if attempts == 1:  # a raw driver error, as from any uow.session.execute()
            await uow.session.execute(
                text("DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = '40001'; END $$")
            )
        return "done"

    assert await mine.run_in_transaction(raw_then_fine, attempts=3) == "done"
    assert attempts == 2
