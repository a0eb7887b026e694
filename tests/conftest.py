"""Shared fixtures: one ``backend`` parametrised over a real SQLite file and the real PostgreSQL.

PostgreSQL tests run in a scratch database (created and dropped here) on the server named by
``ASYNCDAL_TEST_PG_URL``, else the one answering at ``postgresql+asyncpg://postgres@127.0.0.1:5432/test``,
else an embedded throwaway server (the ``embedded`` extra), stopped when the session ends; the
header says which (``tests.support.find_postgres_for_tests``). ``ASYNCDAL_TEST_PG_URL=embedded``
forces the embedded server. Without any server they skip locally; under ``CI=true`` there is no
fallback and they fail instead, never silently skip.

With ``ASYNCDAL_TEST_PGBOUNCER=1`` the PostgreSQL half runs through a PgBouncer (transaction mode)
that this session starts in front of that server, every ``Database`` with ``pgbouncer=True``: the
same tests, unchanged, where they apply (``.ci/run`` runs ``tests/integration`` that way).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import text

from asyncdal import Database, DatabaseSettings
from asyncdal.migrations import upgrade
from asyncdal.users import UserUnitOfWork

if TYPE_CHECKING:
    from tests.scaleout._topology import PgBouncer
from sqlalchemy.engine import make_url

from tests.support import (
    IN_CI,
    PG_URL,
    PGBOUNCER,
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


#: Tests that do not apply through PgBouncer (ASYNCDAL_TEST_PGBOUNCER=1): they build URLs or
#: settings of their own without ``pgbouncer=True``, or test the statement cache it turns off.
NOT_THROUGH_PGBOUNCER = (
    "test_readme_example.py::test_quickstart_runs_end_to_end[postgres]",
    "test_retry.py::test_stale_cached_statement_after_ddl_is_retried[postgres]",
    "test_secrets.py::test_password_is_in_no_log_line_at_debug_with_echo[postgres-",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect (rather than skip) a backend-specific test's run on the other backend, and
    through PgBouncer the tests that do not apply there."""
    kept: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        marker = item.get_closest_marker("only_backend")
        callspec = getattr(item, "callspec", None)
        param = callspec.params.get("backend") if callspec is not None else None
        other_backend = marker is not None and param is not None and param != marker.args[0]
        not_here = PGBOUNCER and any(name in item.nodeid for name in NOT_THROUGH_PGBOUNCER)
        if other_backend or not_here:
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


@pytest.fixture(scope="session")
def pgbouncer_in_front() -> Iterator[PgBouncer | None]:
    """With ``ASYNCDAL_TEST_PGBOUNCER=1``: a PgBouncer in front of the test server, else None."""
    if not PGBOUNCER:
        yield None
        return
    from tests.scaleout._topology import PgBouncer

    target = make_url(PG_URL)
    bouncer = PgBouncer(target.port or 5432, target_host=target.host or "127.0.0.1", pool_size=20)
    try:
        bouncer.start()
        yield bouncer
    finally:
        bouncer.remove()


@pytest.fixture(
    scope="session",
    params=[
        pytest.param("sqlite", marks=pytest.mark.sqlite),
        pytest.param("postgres", marks=pytest.mark.postgres),
    ],
)
async def backend(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    pgbouncer_in_front: PgBouncer | None,
) -> AsyncIterator[Backend]:
    """A database migrated to head on each backend (a SQLite file, a scratch PostgreSQL
    database), with one shared ``Database`` over it."""
    async for made in _backend(request.param, tmp_path_factory, pgbouncer_in_front):
        yield made


@pytest.fixture(scope="session")
async def pg_backend(
    tmp_path_factory: pytest.TempPathFactory, pgbouncer_in_front: PgBouncer | None
) -> AsyncIterator[Backend]:
    """A migrated scratch PostgreSQL database, for PostgreSQL-only tests."""
    async for made in _backend("postgres", tmp_path_factory, pgbouncer_in_front):
        yield made


async def _backend(
    kind: str, tmp_path_factory: pytest.TempPathFactory, bouncer: PgBouncer | None
) -> AsyncIterator[Backend]:
    through = None
    if kind == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('sqlite') / 'asyncdal-test.db'}"
    else:
        url = await create_pg_database("asyncdal_test")
        if bouncer is not None:
            through = bouncer.url(make_url(url).database or "")
    settings: dict[str, Any] = {"pgbouncer": True} if through else {}
    shared = Database(
        DatabaseSettings(through or url, application_name=TEST_APP_NAME, pgbouncer=bool(through)),
        unit_of_work=UserUnitOfWork,
    )
    try:
        await upgrade(shared)
        yield Backend(name=kind, url=through or url, shared=shared, settings=settings)
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
