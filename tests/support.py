"""Helpers shared by the test packages (no fixtures here: see conftest.py)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import pytest
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from asyncdal import Database, DatabaseSettings
from asyncdal.users import UserUnitOfWork

PG_URL = os.environ.get("ASYNCDAL_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
#: Run the PostgreSQL half through PgBouncer with ``pgbouncer=True`` (see tests/conftest.py).
PGBOUNCER = os.environ.get("ASYNCDAL_TEST_PGBOUNCER", "").lower() in ("1", "true", "yes")


async def require_postgres(url: str = PG_URL) -> None:
    """Skip when the server does not answer; under ``CI=true`` fail instead, never skip."""
    try:
        connection = await asyncpg.connect(pg_admin_dsn(url), timeout=5)
    except (OSError, asyncpg.PostgresError, TimeoutError) as error:
        message = f"PostgreSQL at ASYNCDAL_TEST_PG_URL is not reachable ({error!r})"
        if IN_CI:
            pytest.fail(message + "; under CI=true this is a failure, not a skip")
        pytest.skip(message)
    await connection.close()


async def create_pg_database(prefix: str, url: str = PG_URL) -> str:
    """Create an empty scratch database on ``url``'s server; return its URL."""
    await require_postgres(url)
    name = scratch_database_name(prefix)
    admin = await asyncpg.connect(pg_admin_dsn(url))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return make_url(url).set(database=name).render_as_string(hide_password=False)


async def drop_pg_database(url: str) -> None:
    """Drop the database ``url`` names, disconnecting whoever still uses it."""
    name = make_url(url).database
    admin = await asyncpg.connect(pg_admin_dsn(url))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def pg_admin_dsn(url: str, database: str = "postgres") -> str:
    """A plain asyncpg DSN for ``url``'s server, on the maintenance database."""
    parsed = make_url(url).set(drivername="postgresql", database=database)
    return parsed.render_as_string(hide_password=False)


def scratch_database_name(prefix: str) -> str:
    """A database name unique to this process and call."""
    return f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}"


@dataclass
class Backend:
    """One migrated test database: its kind, URL and a shared ``Database`` over it."""

    name: str  # "sqlite" or "postgres"
    url: str
    shared: Database[UserUnitOfWork]
    settings: dict[str, Any] = field(default_factory=dict)  # e.g. pgbouncer=True

    def database(self, **settings: Any) -> Database[UserUnitOfWork]:
        """A new ``Database`` on this backend with ``settings`` applied (dispose it after)."""
        settings = {**self.settings, **settings}
        settings.setdefault("application_name", "asyncdal-tests")
        return Database(DatabaseSettings(self.url, **settings), unit_of_work=UserUnitOfWork)

    @staticmethod
    def replace_database(url: str, database: str) -> str:
        """``url`` pointing at another database on the same server."""
        return make_url(url).set(database=database).render_as_string(hide_password=False)


@contextmanager
def count_statements(engine: AsyncEngine) -> Iterator[list[str]]:
    """Collect every SQL statement ``engine`` sends while the block runs."""
    statements: list[str] = []

    def record(*args: Any) -> None:
        statements.append(str(args[2]))

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)
