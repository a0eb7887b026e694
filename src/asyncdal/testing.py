"""asyncdal's pytest plugin: a migrated test database, and every test isolated.

Installed with asyncdal (entry point ``pytest11: asyncdal``); nothing runs unless a test asks for
one of its fixtures, and loading it imports nothing heavy. Needs pytest-asyncio (auto or strict
mode, any loop scope) for the database fixtures.

Where: ``--asyncdal-url URL`` or ``$ASYNCDAL_TEST_URL``. On a PostgreSQL server the session
creates a scratch database (one per pytest-xdist worker), migrates it and drops it at the end,
also after a failure or Ctrl-C. Without a URL: a temporary SQLite file per session (per worker).

Fixtures:

- ``asyncdal_database`` (session): the migrated ``Database``. Needs the session-wide event loop
  (``asyncio_default_test_loop_scope = "session"``); other loop scopes are refused at set-up.
- ``asyncdal_db``: a ``Database`` whose units of work all run inside one transaction, rolled
  back when the test ends (see :mod:`asyncdal._bound`).
- ``asyncdal_committing_db``: a ``Database`` that really commits (several connections at once);
  afterwards every table the migrations made is emptied and its identities restarted.
- ``asyncdal_migrate`` and ``asyncdal_unit_of_work`` (session): override them to run your own
  migrations and build your own ``UnitOfWork`` subclass. ``asyncdal_url`` (where) and
  ``asyncdal_settings`` (the migrated database's settings) can be overridden too.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any, Final, Literal

import pytest

if TYPE_CHECKING:
    from pathlib import Path

    from alembic.config import Config
    from sqlalchemy.engine import URL

    from . import Database, DatabaseSettings, UnitOfWork
    from ._migrationchecks import MigrationChecks as MigrationChecks
    from ._testdb import Migrate

try:
    import pytest_asyncio
except ImportError:  # pragma: no cover - the fixtures then say what is missing
    _PYTEST_ASYNCIO = False
else:
    _PYTEST_ASYNCIO = True

__all__ = [
    "MigrationChecks",
    "asyncdal_alembic_config",
    "asyncdal_committing_db",
    "asyncdal_database",
    "asyncdal_db",
    "asyncdal_empty_url",
    "asyncdal_migrate",
    "asyncdal_settings",
    "asyncdal_unit_of_work",
    "asyncdal_url",
]

_Scope = Literal["function", "class", "module", "package"]
#: Loop scopes narrower than the session's: tests on them get a Database of their own.
_NARROW_SCOPES: Final[tuple[_Scope, ...]] = ("function", "class", "module", "package")
_SESSION_LOOP: Final = (
    'asyncdal_database is bound to the session\'s event loop, but {what} runs on a "{scope}" '
    'loop: set asyncio_default_test_loop_scope = "session" and '
    'asyncio_default_fixture_loop_scope = "session" (pytest.ini or pyproject.toml), or mark '
    'the test @pytest.mark.asyncio(loop_scope="session"); or use asyncdal_db or '
    "asyncdal_committing_db, which follow the test's loop"
)


def __getattr__(name: str) -> Any:
    # Loaded on first use: it imports Alembic and SQLAlchemy, which loading the plugin must not.
    if name == "MigrationChecks":
        from ._migrationchecks import MigrationChecks

        return MigrationChecks
    raise AttributeError(f"module 'asyncdal.testing' has no attribute {name!r}")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("asyncdal")
    group.addoption(
        "--asyncdal-url",
        default=None,
        metavar="URL",
        help="database the asyncdal fixtures test on: a PostgreSQL server (a scratch database "
        "is created on it) or a SQLite file; default $ASYNCDAL_TEST_URL, else a temporary "
        "SQLite file",
    )


def _test_loop_scope(item: pytest.Item) -> str | None:
    """The loop scope pytest-asyncio runs ``item`` in; None for a test it does not run."""
    marker = item.get_closest_marker("asyncio")
    if marker is None:
        return None
    scope = marker.kwargs.get("loop_scope") or marker.kwargs.get("scope")
    return str(scope or item.config.getini("asyncio_default_test_loop_scope") or "function")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Refuse at once a test that needs ``asyncdal_database`` on a narrower loop than the
    session's, instead of letting it fail with "attached to a different loop"."""
    if "asyncdal_database" not in getattr(item, "fixturenames", ()):
        return
    scope = _test_loop_scope(item)
    if scope is not None and scope != "session":
        pytest.fail(_SESSION_LOOP.format(what="this test", scope=scope), pytrace=False)


# -- where, and what the session migrates -------------------------------------------------------


@pytest.fixture(scope="session")
def asyncdal_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> URL:
    """Where to test: ``--asyncdal-url``, ``$ASYNCDAL_TEST_URL``, or a temporary SQLite file.

    A SQLAlchemy ``URL``, so that its password never shows (its repr hides it).
    """
    from ._testdb import where

    option = request.config.getoption("asyncdal_url")
    return where(option, tmp_path_factory.mktemp("asyncdal"))


@pytest.fixture(scope="session")
def asyncdal_migrate() -> Migrate:
    """What migrates the session's database: ``async def migrate(db: Database) -> None``.

    Default: ``asyncdal.migrations.upgrade`` (asyncdal's packaged revisions). It runs once per
    session (per xdist worker), on a private event loop.
    """
    from .migrations import upgrade

    return upgrade


@pytest.fixture(scope="session")
def asyncdal_unit_of_work() -> type[UnitOfWork]:
    """The ``UnitOfWork`` class the fixtures' databases build (default: the base class)."""
    from .uow import UnitOfWork

    return UnitOfWork


@pytest.fixture(scope="session")
def asyncdal_settings(asyncdal_url: URL, asyncdal_migrate: Migrate) -> Iterator[DatabaseSettings]:
    """The migrated database of this session (this xdist worker), as ``DatabaseSettings``.

    On PostgreSQL a scratch database, dropped at the end of the session.
    """
    from ._testdb import scratch

    with scratch(asyncdal_url, asyncdal_migrate) as settings:
        yield settings


@pytest.fixture(scope="session")
def asyncdal_alembic_config() -> Config:
    """The Alembic configuration ``MigrationChecks`` checks (default: asyncdal's packaged
    revisions). Override it with yours, e.g. ``alembic.config.Config("alembic.ini")``."""
    from .migrations import alembic_config

    return alembic_config()


@pytest.fixture
def asyncdal_empty_url(asyncdal_url: URL, tmp_path: Path) -> Iterator[URL]:
    """An empty database on ``asyncdal_url``'s backend, for a test that migrates from nothing:
    a scratch database on its PostgreSQL server (dropped afterwards), or a new SQLite file."""
    from ._testdb import empty_scratch

    with empty_scratch(asyncdal_url, tmp_path) as url:
        yield url


# -- the databases tests get ------------------------------------------------------------------


def _loop_scope_for(request: pytest.FixtureRequest) -> str:
    scope = _test_loop_scope(request.node) if isinstance(request.node, pytest.Item) else None
    return scope or str(request.config.getini("asyncio_default_test_loop_scope") or "function")


@contextlib.asynccontextmanager
async def _own_database(
    settings: DatabaseSettings, unit_of_work: type[UnitOfWork]
) -> AsyncIterator[Database[Any]]:
    from .database import Database

    db = Database(settings, unit_of_work=unit_of_work)
    try:
        yield db
    finally:
        await db.dispose()


@contextlib.asynccontextmanager
async def _rolled_back(base: Database[Any]) -> AsyncIterator[Database[Any]]:
    from ._bound import BoundDatabase
    from ._testdb import rolled_back

    connection = await base.engine.connect()
    try:
        await connection.begin()
        yield BoundDatabase.bind(base, connection)
    finally:
        rolled_back(base)
        try:
            if not connection.invalidated:  # else the server has rolled it back already
                await connection.rollback()
        finally:
            await connection.close()


@contextlib.asynccontextmanager
async def _emptied_after(base: Database[Any]) -> AsyncIterator[Database[Any]]:
    from ._bound import view
    from ._testdb import empty, empty_if_moved

    await empty_if_moved(base)
    try:
        yield view(base, type(base))
    finally:
        await empty(base)


def _needs_pytest_asyncio() -> None:
    pytest.fail(
        "asyncdal's database fixtures need pytest-asyncio: pip install pytest-asyncio",
        pytrace=False,
    )


@pytest.fixture
def asyncdal_db(request: pytest.FixtureRequest) -> Database[Any]:
    """A ``Database`` whose units of work run in one transaction, rolled back after the test.

    ``commit()`` works inside the test (the next unit of work sees it); the next test sees none
    of it. Built on the test's own event loop, whatever its scope.
    """
    if not _PYTEST_ASYNCIO:
        _needs_pytest_asyncio()
    db: Database[Any] = request.getfixturevalue(f"_asyncdal_db_{_loop_scope_for(request)}")
    return db


@pytest.fixture
def asyncdal_committing_db(request: pytest.FixtureRequest) -> Database[Any]:
    """A ``Database`` that really commits; every migrated table is emptied after the test."""
    if not _PYTEST_ASYNCIO:
        _needs_pytest_asyncio()
    name = f"_asyncdal_committing_db_{_loop_scope_for(request)}"
    db: Database[Any] = request.getfixturevalue(name)
    return db


if _PYTEST_ASYNCIO:

    @pytest_asyncio.fixture(scope="session", loop_scope="session")
    async def asyncdal_database(
        asyncdal_settings: DatabaseSettings, asyncdal_unit_of_work: type[UnitOfWork]
    ) -> AsyncIterator[Database[Any]]:
        """The migrated ``Database`` of the session, on the session's event loop."""
        from ._bound import LoopCheckedDatabase

        db = LoopCheckedDatabase(
            asyncdal_settings,
            unit_of_work=asyncdal_unit_of_work,
            refusal=_SESSION_LOOP.format(what="a unit of work", scope="narrower"),
        )
        try:
            yield db
        finally:
            await db.dispose()

    @pytest_asyncio.fixture(name="_asyncdal_db_session", loop_scope="session")
    async def _asyncdal_db_session(
        asyncdal_database: Database[Any],
    ) -> AsyncIterator[Database[Any]]:
        async with _rolled_back(asyncdal_database) as db:
            yield db

    @pytest_asyncio.fixture(name="_asyncdal_committing_db_session", loop_scope="session")
    async def _asyncdal_committing_db_session(
        asyncdal_database: Database[Any],
    ) -> AsyncIterator[Database[Any]]:
        async with _emptied_after(asyncdal_database) as db:
            yield db

    def _on_loop(scope: _Scope) -> tuple[Any, Any]:
        """The two per-test fixtures for tests on a ``scope`` loop narrower than the session's:
        a ``Database`` of their own each (its pool cannot outlive the loop)."""

        @pytest_asyncio.fixture(name=f"_asyncdal_db_{scope}", loop_scope=scope)
        async def rolled_back(
            asyncdal_settings: DatabaseSettings, asyncdal_unit_of_work: type[UnitOfWork]
        ) -> AsyncIterator[Database[Any]]:
            async with (
                _own_database(asyncdal_settings, asyncdal_unit_of_work) as base,
                _rolled_back(base) as db,
            ):
                yield db

        @pytest_asyncio.fixture(name=f"_asyncdal_committing_db_{scope}", loop_scope=scope)
        async def committing(
            asyncdal_settings: DatabaseSettings, asyncdal_unit_of_work: type[UnitOfWork]
        ) -> AsyncIterator[Database[Any]]:
            async with (
                _own_database(asyncdal_settings, asyncdal_unit_of_work) as base,
                _emptied_after(base) as db,
            ):
                yield db

        return rolled_back, committing

    # pytest finds a plugin's fixtures among its module attributes.
    for _scope in _NARROW_SCOPES:
        globals()[f"_asyncdal_db_{_scope}"], globals()[f"_asyncdal_committing_db_{_scope}"] = (
            _on_loop(_scope)
        )

else:  # pragma: no cover - exercised only without pytest-asyncio

    @pytest.fixture(scope="session")
    def asyncdal_database() -> None:
        """Needs pytest-asyncio."""
        _needs_pytest_asyncio()
