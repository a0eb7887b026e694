"""Shared fixtures: one ``backend`` parametrised over a real SQLite file and the real PostgreSQL.

PostgreSQL tests run in a scratch database (created and dropped here) on the server named by
``ASYNCDAL_TEST_PG_URL`` (default ``postgresql+asyncpg://postgres@127.0.0.1:5432/test``). Without
a server they skip locally; under ``CI=true`` they fail instead, never silently skip.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from asyncdal import Database, DatabaseSettings
from asyncdal.migrations import upgrade
from asyncdal.users import UserUnitOfWork
from tests.support import Backend, pg_admin_dsn, scratch_database_name

PG_URL = os.environ.get("ASYNCDAL_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
TEST_APP_NAME = "asyncdal-tests"


async def _pg_reachable(url: str) -> str | None:
    try:
        connection = await asyncpg.connect(pg_admin_dsn(url), timeout=5)
    except (OSError, asyncpg.PostgresError, TimeoutError) as error:
        return f"{type(error).__name__}: {error}"
    await connection.close()
    return None


def _require_postgres(reason: str) -> None:
    message = f"PostgreSQL at ASYNCDAL_TEST_PG_URL is not reachable ({reason})"
    if IN_CI:
        pytest.fail(message + "; under CI=true this is a failure, not a skip")
    pytest.skip(message)


async def _create_pg_database() -> str:
    problem = await _pg_reachable(PG_URL)
    if problem is not None:
        _require_postgres(problem)
    name = scratch_database_name("asyncdal_test")
    admin = await asyncpg.connect(pg_admin_dsn(PG_URL))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return Backend.replace_database(PG_URL, name)


async def _drop_pg_database(url: str) -> None:
    name = make_url(url).database
    admin = await asyncpg.connect(pg_admin_dsn(PG_URL))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture(scope="session")
async def pg_server_url() -> str:
    """``ASYNCDAL_TEST_PG_URL`` once the server answers (for PostgreSQL-only tests)."""
    problem = await _pg_reachable(PG_URL)
    if problem is not None:
        _require_postgres(problem)
    return PG_URL


@pytest.fixture(
    scope="session",
    params=[
        pytest.param("sqlite", marks=pytest.mark.sqlite),
        pytest.param("postgres", marks=pytest.mark.postgres),
    ],
)
async def backend(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Backend]:
    """A database migrated to head on each backend (a SQLite file, a scratch PostgreSQL
    database), with one shared ``Database`` over it."""
    async for made in _backend(request.param, tmp_path_factory):
        yield made


@pytest.fixture(scope="session")
async def pg_backend(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Backend]:
    """A migrated scratch PostgreSQL database, for PostgreSQL-only tests."""
    async for made in _backend("postgres", tmp_path_factory):
        yield made


async def _backend(kind: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Backend]:
    if kind == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('sqlite') / 'asyncdal-test.db'}"
    else:
        url = await _create_pg_database()
    shared = Database(
        DatabaseSettings(url, application_name=TEST_APP_NAME), unit_of_work=UserUnitOfWork
    )
    try:
        await upgrade(shared)
        yield Backend(name=kind, url=url, shared=shared)
    finally:
        await shared.dispose()
        if kind == "postgres":
            await _drop_pg_database(url)


@pytest.fixture
async def db(backend: Backend) -> Database[UserUnitOfWork]:
    """The backend's shared ``Database``, with its tables emptied before the test."""
    await clean(backend.shared)
    return backend.shared


async def clean(db: Database[Any]) -> None:
    """Delete every row of the reference domain (ids restart on PostgreSQL)."""
    async with db.engine.begin() as connection:
        if db.backend == "postgresql":
            await connection.execute(text("TRUNCATE posts, users RESTART IDENTITY CASCADE"))
        else:
            await connection.execute(text("DELETE FROM posts"))
            await connection.execute(text("DELETE FROM users"))
