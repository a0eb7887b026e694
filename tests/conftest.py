"""Shared fixtures: one ``backend`` parametrised over a real SQLite file and the real PostgreSQL.

PostgreSQL tests run in a scratch database (created and dropped here) on the server named by
``ASYNCDAL_TEST_PG_URL``, else the one answering at ``postgresql+asyncpg://postgres@127.0.0.1:5432/test``,
else an embedded throwaway server (the ``embedded`` extra), stopped when the session ends; the
header says which (``tests.support.find_postgres_for_tests``). ``ASYNCDAL_TEST_PG_URL=embedded``
forces the embedded server. Without any server they skip locally; under ``CI=true`` there is no
fallback and they fail instead, never silently skip.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import text

from asyncdal import Database, DatabaseSettings
from asyncdal.migrations import upgrade
from asyncdal.users import UserUnitOfWork
from tests.support import (
    IN_CI,
    PG_URL,
    POSTGRES,
    Backend,
    create_pg_database,
    drop_pg_database,
    require_postgres,
)

__all__ = ["IN_CI", "PG_URL"]

TEST_APP_NAME = "asyncdal-tests"


def pytest_report_header() -> str:
    """Which PostgreSQL this session runs on, and why."""
    return f"PostgreSQL: {POSTGRES.description}"


def pytest_unconfigure() -> None:
    """Stop the embedded server, if this session started one (it would also stop on exit)."""
    if POSTGRES.embedded is not None:
        POSTGRES.embedded.stop()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect (rather than skip) a backend-specific test's run on the other backend."""
    kept: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        marker = item.get_closest_marker("only_backend")
        callspec = getattr(item, "callspec", None)
        param = callspec.params.get("backend") if callspec is not None else None
        if marker is not None and param is not None and param != marker.args[0]:
            dropped.append(item)
        else:
            kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


@pytest.fixture(scope="session")
async def pg_server_url() -> str:
    """The test server's URL once it answers (for PostgreSQL-only tests)."""
    return await require_postgres()


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
        url = await create_pg_database("asyncdal_test")
    shared = Database(
        DatabaseSettings(url, application_name=TEST_APP_NAME), unit_of_work=UserUnitOfWork
    )
    try:
        await upgrade(shared)
        yield Backend(name=kind, url=url, shared=shared)
    finally:
        await shared.dispose()
        if kind == "postgres":
            await drop_pg_database(url)


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
