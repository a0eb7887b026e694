"""Backend rules from day one: SQLite pragmas and BEGIN modes, PostgreSQL connection settings."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text

from asyncdal import Database, DatabaseSettings
from asyncdal.migrations import upgrade
from asyncdal.models import User
from asyncdal.users import UserUnitOfWork
from tests.support import Backend, count_statements


@pytest.fixture
async def sqlite_db(tmp_path: Path) -> AsyncIterator[Database[UserUnitOfWork]]:
    """A fresh SQLite file of this test's own, migrated to head."""
    async with Database(
        f"sqlite+aiosqlite:///{tmp_path / 'own.db'}", unit_of_work=UserUnitOfWork
    ) as db:
        await upgrade(db)
        yield db


@pytest.mark.sqlite
async def test_every_pooled_sqlite_connection_has_wal_and_foreign_keys(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('pragmas') / 'p.db'}"
    db = Database(DatabaseSettings(url, pool_size=3))
    try:
        held = [db.unit_of_work(read_only=True) for _ in range(3)]
        for uow in held:
            await uow.__aenter__()
        for uow in held:
            session = uow.session
            assert (await session.scalar(text("PRAGMA journal_mode"))) == "wal"
            assert (await session.scalar(text("PRAGMA foreign_keys"))) == 1
            assert (await session.scalar(text("PRAGMA synchronous"))) == 1  # NORMAL
        assert db.pool_status().checked_out == 3
        for uow in held:
            await uow.__aexit__(None, None, None)
    finally:
        await db.dispose()


@pytest.mark.sqlite
async def test_sqlite_writer_begins_immediate_and_reader_sends_no_begin(
    sqlite_db: Database[UserUnitOfWork],
) -> None:
    db = sqlite_db
    with count_statements(db.engine) as statements:
        async with db.unit_of_work() as uow:
            await uow.users.add(User(name="W", age=1))
            await uow.commit()
    assert statements[0] == "BEGIN IMMEDIATE"
    with count_statements(db.engine) as statements:
        async with db.unit_of_work(read_only=True) as uow:
            await uow.users.count()
    assert not any(s.startswith("BEGIN") for s in statements)


@pytest.mark.sqlite
async def test_sqlite_reader_is_not_blocked_by_an_open_writer(
    sqlite_db: Database[UserUnitOfWork],
) -> None:
    db = sqlite_db
    async with db.unit_of_work() as writer:
        await writer.users.add(User(name="Uncommitted", age=1))
        async with asyncio.timeout(2), db.unit_of_work(read_only=True) as reader:
            assert await reader.users.count() == 0
        await writer.commit()
    async with db.unit_of_work(read_only=True) as reader:
        assert await reader.users.count() == 1


@pytest.mark.sqlite
async def test_in_memory_sqlite_shares_one_connection_and_serialises_units_of_work() -> None:
    async with Database("sqlite+aiosqlite://", unit_of_work=UserUnitOfWork) as db:
        await upgrade(db)

        async def add(i: int) -> None:
            async with db.unit_of_work() as uow:
                await uow.users.add(User(name=f"m{i}", age=i))
                await asyncio.sleep(0)
                await uow.commit()

        await asyncio.gather(*(add(i) for i in range(20)))
        async with db.unit_of_work(read_only=True) as uow:
            assert await uow.users.count() == 20


@pytest.mark.sqlite
async def test_nested_sqlite_writers_in_one_task_fail_fast_instead_of_deadlocking(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    from asyncdal.errors import UnitOfWorkStateError

    url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('nested') / 'n.db'}"
    async with Database(url) as db, db.unit_of_work():
        with pytest.raises(UnitOfWorkStateError, match="inside another one in the same task"):
            async with db.unit_of_work():
                pass


@pytest.mark.postgres
async def test_postgres_connections_carry_application_name_and_timeouts(
    pg_server_url: str,
) -> None:
    settings = DatabaseSettings(
        pg_server_url,
        application_name="asyncdal-appname-test",
        statement_timeout=2.5,
        lock_timeout=1,
        idle_in_transaction_timeout=30,
    )
    async with Database(settings) as db, db.unit_of_work(read_only=True) as uow:
        session = uow.session
        assert await session.scalar(text("SHOW application_name")) == "asyncdal-appname-test"
        assert await session.scalar(text("SHOW statement_timeout")) == "2500ms"
        assert await session.scalar(text("SHOW lock_timeout")) == "1s"
        assert await session.scalar(text("SHOW idle_in_transaction_session_timeout")) == "30s"


@pytest.mark.postgres
async def test_postgres_pool_reuses_connections(pg_backend: Backend) -> None:
    db = pg_backend.database(application_name="asyncdal-pool-test", pool_size=2)
    try:
        pids = set()
        for _ in range(10):
            async with db.unit_of_work(read_only=True) as uow:
                pids.add(await uow.session.scalar(text("SELECT pg_backend_pid()")))
        assert len(pids) == 1
        assert db.pool_status().checked_in == 1
    finally:
        await db.dispose()


@pytest.mark.postgres
async def test_pgbouncer_mode_works_without_statement_caches(pg_backend: Backend) -> None:
    db = pg_backend.database(application_name="asyncdal-pgbouncer-test", pgbouncer=True)
    try:
        for i in range(3):
            async with db.unit_of_work() as uow:
                await uow.users.add(User(name=f"b{i}", age=i))
                await uow.users.count(User.age >= 0)
    finally:
        await db.dispose()


@pytest.mark.sqlite
async def test_sqlite_uses_the_one_hop_adapter_and_still_rolls_back_open_work(
    sqlite_db: Database[UserUnitOfWork],
) -> None:
    from asyncdal._sqlite import OneHopConnection

    db = sqlite_db
    async with db.unit_of_work() as uow:
        raw = await (await uow.session.connection()).get_raw_connection()
        assert isinstance(raw.dbapi_connection, OneHopConnection)
        await uow.users.add(User(name="Open", age=1))
        assert raw.dbapi_connection._in_transaction
    async with db.unit_of_work(read_only=True) as uow:
        assert await uow.users.count() == 0
        rows = (await uow.session.execute(text("SELECT 1 UNION SELECT 2"))).all()
    assert [tuple(r) for r in rows] == [(1,), (2,)]
