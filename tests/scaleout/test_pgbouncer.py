"""Through PgBouncer 1.18 in transaction mode (server pool of 2), with ``pgbouncer=True`` and a
plain configuration: units of work, timeouts, prepared statements, ``timeout=``."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import AsyncIterator

import asyncpg
import pytest
from sqlalchemy import text

from asyncdal import Database
from asyncdal.errors import QueryTimeoutError, RetryableError
from asyncdal.models import User
from asyncdal.users import UserUnitOfWork
from tests._figures import Figure
from tests.scaleout._helpers import DATABASE, Servers
from tests.scaleout._topology import PGBOUNCER_POOL_SIZE
from tests.scaleout.conftest import MakeDb

pytestmark = pytest.mark.postgres


async def _bouncer_db(
    make_db: MakeDb, servers: Servers, **settings: object
) -> Database[UserUnitOfWork]:
    return await make_db(url=servers.pgbouncer_url, pgbouncer=True, replica_urls=(), **settings)


def _plain(servers: Servers, database: str = DATABASE) -> str:
    """A plain asyncpg DSN through PgBouncer (no statement cache: PgBouncer-safe)."""
    return f"postgresql://postgres@127.0.0.1:{servers.topology.pgbouncer.port}/{database}"


async def _prepared_per_server_connection(servers: Servers) -> dict[int, int]:
    """``pg_prepared_statements`` on each of PgBouncer's server connections: every client holds
    a transaction open, so each is on a server connection of its own."""
    clients = [
        await asyncpg.connect(_plain(servers), statement_cache_size=0)
        for _ in range(PGBOUNCER_POOL_SIZE)
    ]
    try:
        found = {}
        for client in clients:
            await client.execute("BEGIN")
            row = await client.fetchrow(
                "SELECT pg_backend_pid() AS pid, count(*) AS n FROM pg_prepared_statements"
            )
            assert row is not None
            found[row["pid"]] = row["n"]
        return found
    finally:
        for client in clients:
            await client.close()


async def test_a_thousand_units_of_work_through_pgbouncer_all_succeed_without_piling_statements(
    make_db: MakeDb, clean: Servers, figure: Figure
) -> None:
    db = await _bouncer_db(make_db, clean, pool_size=20, max_overflow=0)
    before = await _prepared_per_server_connection(clean)
    failures: collections.Counter[str] = collections.Counter()
    done = 0

    async def worker(task: int) -> None:
        nonlocal done
        for i in range(25):
            try:
                async with db.unit_of_work() as uow:
                    await uow.users.add(User(name=f"t{task}-{i}", age=i))
                    await uow.commit()
                async with db.unit_of_work(read_only=True) as uow:
                    await uow.users.count(User.age >= 0)
                    await uow.users.list(limit=5)
                done += 2
            except Exception as error:
                failures[type(error).__name__] += 1

    await asyncio.gather(*(worker(task) for task in range(20)))
    after = await _prepared_per_server_connection(clean)
    async with db.unit_of_work(read_only=True) as uow:
        rows = await uow.users.count()
    assert not failures, dict(failures)
    assert (done, rows) == (1000, 500)
    assert len(after) == PGBOUNCER_POOL_SIZE
    assert max(after.values()) == 0, f"prepared statements piled up: {before} -> {after}"
    figure(
        f"20 tasks x 25 units of work of each kind (read-only, read-write) through PgBouncer, "
        f"server pool {PGBOUNCER_POOL_SIZE}: 1000 done, 0 failures; prepared statements per "
        f"server connection {sorted(before.values())} before, {sorted(after.values())} after"
    )


async def test_timeouts_apply_per_transaction_and_never_leak_to_another_client(
    make_db: MakeDb, clean: Servers, figure: Figure
) -> None:
    db = await _bouncer_db(
        make_db, clean, statement_timeout=0.2, lock_timeout=1.5, idle_in_transaction_timeout=30
    )
    async with db.unit_of_work(read_only=True) as uow:
        shown = [
            (await uow.session.execute(text(f"SHOW {name}"))).scalar_one()
            for name in ("statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout")
        ]
    assert shown == ["200ms", "1500ms", "30s"]
    started = time.monotonic()
    with pytest.raises(QueryTimeoutError):
        async with db.unit_of_work() as uow:
            await uow.execute("sleep", lambda s: s.execute(text("SELECT pg_sleep(1)")))
    took = time.monotonic() - started
    other = await asyncpg.connect(_plain(clean), statement_cache_size=0)
    try:
        seen = collections.Counter(
            [await other.fetchval("SHOW statement_timeout") for _ in range(10)]
        )
    finally:
        await other.close()
    async with db.unit_of_work() as uow:  # the same Database still works after the timeout
        await uow.users.add(User(name="after the timeout", age=1))
        await uow.commit()
    assert took < 0.9, f"statement_timeout=0.2 cut pg_sleep(1) only after {took:.2f} s"
    assert seen == {"0": 10}
    figure(
        f"statement_timeout=0.2 through PgBouncer: QueryTimeoutError on pg_sleep(1) after "
        f"{took:.2f} s; another client saw statement_timeout {dict(seen)}"
    )


@contextlib.asynccontextmanager
async def _every_server_connection_busy(servers: Servers) -> AsyncIterator[None]:
    holders = [
        await asyncpg.connect(_plain(servers), statement_cache_size=0)
        for _ in range(PGBOUNCER_POOL_SIZE)
    ]
    try:
        for holder in holders:
            await holder.execute("BEGIN")
            await holder.execute("SELECT 1")
        yield
    finally:
        for holder in holders:
            await holder.close()


@pytest.mark.parametrize("held_by", ["every server connection busy", "server down"])
@pytest.mark.parametrize("read_only", [False, True], ids=["read-write", "read-only"])
async def test_unit_of_work_timeout_fires_on_time_while_pgbouncer_holds_the_query(
    make_db: MakeDb, clean: Servers, figure: Figure, held_by: str, read_only: bool
) -> None:
    timeout = 1.0
    if held_by == "server down":
        url = clean.topology.pgbouncer.url("down")  # a database entry pointing at a closed port
        db = await make_db(url=url, pgbouncer=True, replica_urls=(), connect_timeout=10)
        holding: contextlib.AbstractAsyncContextManager[None] = contextlib.nullcontext()
    else:
        db = await _bouncer_db(make_db, clean, connect_timeout=10)
        async with db.unit_of_work() as uow:  # a pooled client connection, logged in already
            await uow.users.count()
        holding = _every_server_connection_busy(clean)
    async with holding:
        started = time.monotonic()
        with pytest.raises(QueryTimeoutError):
            async with db.unit_of_work(read_only=read_only, timeout=timeout) as uow:
                await uow.users.count()
        took = time.monotonic() - started
    assert db.pool_status().checked_out == 0
    assert took < timeout + 0.5, f"timeout={timeout} fired after {took:.2f} s"
    figure(f"{held_by}, {'read-only' if read_only else 'read-write'}: timeout={timeout} fired "
           f"after {took:.2f} s")  # fmt: skip


async def test_savepoints_retries_and_cancellation_work_through_pgbouncer(
    make_db: MakeDb, clean: Servers
) -> None:
    db = await _bouncer_db(make_db, clean, pool_size=4)
    async with db.unit_of_work() as uow:
        await uow.users.add(User(name="kept", age=1, email="dup@example.com"))
        with pytest.raises(Exception, match="unique"):
            async with uow.savepoint():
                await uow.users.add(User(name="dropped", age=2, email="dup@example.com"))
        await uow.commit()
    calls = 0

    async def flaky(uow: UserUnitOfWork) -> None:
        nonlocal calls
        calls += 1
        await uow.users.add(User(name=f"attempt {calls}", age=calls))
        if calls == 1:
            raise RetryableError("simulated serialization failure")

    await db.run_in_transaction(flaky, attempts=3)

    async def slow() -> None:
        async with db.unit_of_work() as uow:
            await uow.users.add(User(name="cancelled", age=3))
            await uow.execute("sleep", lambda s: s.execute(text("SELECT pg_sleep(5)")))

    task = asyncio.ensure_future(slow())
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with db.unit_of_work(read_only=True) as uow:
        names = sorted(user.name for user in await uow.users.list())
    assert names == ["attempt 2", "kept"]
    assert db.pool_status().checked_out == 0


async def test_a_column_type_change_is_read_correctly_at_once_through_pgbouncer(
    make_db: MakeDb, clean: Servers
) -> None:
    # Every statement is described afresh: a cached description (SQLAlchemy's statement cache
    # over unnamed statements) decoded the new type with the old codec and failed from then on.
    db = await _bouncer_db(make_db, clean, pool_size=1)
    owner = await asyncpg.connect(clean.primary_dsn)
    try:
        await owner.execute("CREATE TABLE retyped (id int PRIMARY KEY, v int)")
        await owner.execute("INSERT INTO retyped VALUES (1, 42)")
        query = text("SELECT id, v FROM retyped")
        for _ in range(3):
            async with db.unit_of_work(read_only=True) as uow:
                assert (await uow.session.execute(query)).all() == [(1, 42)]
        await owner.execute("ALTER TABLE retyped ALTER COLUMN v TYPE text USING v::text || '!'")
        async with db.unit_of_work(read_only=True) as uow:
            assert (await uow.session.execute(query)).all() == [(1, "42!")]
    finally:
        await owner.execute("DROP TABLE IF EXISTS retyped")
        await owner.close()
