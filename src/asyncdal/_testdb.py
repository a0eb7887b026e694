"""The pytest plugin's test database: where it is, its scratch copy for the session, emptying it.

Session set-up and tear-down (create, migrate, drop) run on a private event loop in a helper
thread, so they need none of pytest-asyncio's loops, and neither the test's loop scope nor
asyncio's SIGINT handling in the main thread changes how they run. Emptying tables runs on the
test's loop, through the test's ``Database``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

from sqlalchemy import BindParameter, MetaData, bindparam, text
from sqlalchemy.engine import URL, Connection, make_url

from .database import Database
from .errors import ConfigurationError, UnavailableError
from .settings import DatabaseSettings, mask_url

T = TypeVar("T")

#: Where to test, when ``--asyncdal-url`` is not given.
ENV_URL: Final = "ASYNCDAL_TEST_URL"
#: Scratch databases are named ``asyncdal_test_<worker>_<pid>_<random>``.
SCRATCH_PREFIX: Final = "asyncdal_test"

Migrate = Callable[[Database[Any]], Awaitable[None]]


def worker() -> str:
    """The pytest-xdist worker this process is (``gw0``...), or ``""`` without xdist."""
    return os.environ.get("PYTEST_XDIST_WORKER", "")


def run_off_loop(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``make()`` to completion on a fresh event loop in a helper thread."""
    with ThreadPoolExecutor(1, thread_name_prefix="asyncdal-testing") as pool:
        return pool.submit(lambda: asyncio.run(make())).result()


def where(option: str | None, tmp_dir: Path) -> URL:
    """The URL to test on: ``option``, else ``$ASYNCDAL_TEST_URL``, else a SQLite file in
    ``tmp_dir``. A SQLite file is suffixed with the xdist worker, so workers never share one.

    Raises:
        ConfigurationError: the URL is not SQLite or PostgreSQL, or is in-memory SQLite.
    """
    raw = option or os.environ.get(ENV_URL) or ""
    if not raw:
        return make_url(f"sqlite+aiosqlite:///{tmp_dir / 'asyncdal-test.db'}")
    settings = DatabaseSettings(raw)  # checks the URL, upgrades plain schemes to async drivers
    if settings.is_memory:
        raise ConfigurationError(
            "the asyncdal pytest plugin needs a SQLite file or a PostgreSQL server, got "
            f"{settings.masked_url} (an in-memory database has one connection: "
            "asyncdal_committing_db could not run concurrent units of work)"
        )
    url = make_url(settings.url)
    if settings.backend == "sqlite" and worker() and url.database:
        path = Path(url.database)
        url = url.set(database=str(path.with_name(f"{path.stem}-{worker()}{path.suffix}")))
    return url


def _admin_dsn(url: URL) -> str:
    # The URL's own database serves as the maintenance database: it exists, and the user may
    # connect to it (not necessarily to "postgres").
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


async def _admin(url: URL, sql: str) -> None:
    import asyncpg

    try:
        connection = await asyncpg.connect(_admin_dsn(url), timeout=10)
    except (OSError, asyncpg.PostgresError, TimeoutError) as error:
        raise UnavailableError(
            f"asyncdal testing: cannot connect to {mask_url(url)} to create or drop the "
            f"session's scratch database ({type(error).__name__})"
        ) from None  # the driver's message may carry the DSN
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


@dataclass(frozen=True)
class Tables:
    """The tables the migrations made (``alembic_version`` aside), parents before children."""

    names: tuple[str, ...]
    sqlite_sequence: bool  # SQLite keeps AUTOINCREMENT counters there


async def _migrate(settings: DatabaseSettings, migrate: Migrate) -> None:
    db = Database(settings)
    try:
        await migrate(db)
    finally:
        await db.dispose()


@contextmanager
def _scratch_postgres(url: URL) -> Iterator[URL]:
    """A new empty database on ``url``'s server, dropped afterwards whatever happens."""
    name = f"{SCRATCH_PREFIX}_{worker() or 'main'}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    created = False
    try:
        run_off_loop(lambda: _admin(url, f'CREATE DATABASE "{name}"'))
        created = True
        yield url.set(database=name)
    finally:
        if created:
            run_off_loop(lambda: _admin(url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@contextmanager
def scratch(url: URL, migrate: Migrate) -> Iterator[DatabaseSettings]:
    """The migrated database the session tests on, as settings; dropped afterwards on
    PostgreSQL, also when the session failed or was interrupted (Ctrl-C)."""
    with contextlib.ExitStack() as stack:
        if url.get_backend_name() == "postgresql":
            url = stack.enter_context(_scratch_postgres(url))
        settings = DatabaseSettings(url.render_as_string(hide_password=False))
        run_off_loop(lambda: _migrate(settings, migrate))
        yield settings


@contextmanager
def empty_scratch(url: URL, directory: Path) -> Iterator[URL]:
    """An empty database on ``url``'s backend: a scratch database on its PostgreSQL server
    (dropped afterwards), or a new SQLite file in ``directory``."""
    if url.get_backend_name() == "postgresql":
        with _scratch_postgres(url) as scratch_url:
            yield scratch_url
        return
    yield make_url(f"sqlite+aiosqlite:///{directory / 'asyncdal-empty.db'}")


#: Per database URL: what emptying it deletes (reflected once, on first use).
_TABLES: dict[str, Tables] = {}
#: Databases whose sequences a rolled-back test may have moved (PostgreSQL's nextval() is not
#: transactional): emptied before the next committing test too, so its ids start at 1.
_MOVED: set[str] = set()


def rolled_back(db: Database[Any]) -> None:
    """Note that a test ran on ``db`` inside a transaction that was rolled back."""
    if db.backend == "postgresql":
        _MOVED.add(db.settings.url)


async def empty_if_moved(db: Database[Any]) -> None:
    """``empty(db)`` if a rolled-back test may have left its sequences moved."""
    if db.settings.url in _MOVED:
        await empty(db)


def _reflect(connection: Connection) -> Tables:
    metadata = MetaData()
    metadata.reflect(connection)
    names = tuple(table.name for table in metadata.sorted_tables if table.name != "alembic_version")
    sequence = connection.dialect.name == "sqlite" and bool(
        connection.exec_driver_sql(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'sqlite_sequence'"
        ).first()
    )
    return Tables(names, sequence)


async def empty(db: Database[Any]) -> None:
    """Delete every row the test committed: every table but ``alembic_version``, identities
    and sequences restarted. Runs as a unit of work, so it queues behind SQLite writers."""
    key = db.settings.url
    _MOVED.discard(key)
    tables = _TABLES.get(key)
    if tables is None:
        async with db.engine.connect() as connection:
            tables = _TABLES[key] = await connection.run_sync(_reflect)
    if not tables.names:
        return
    quoted = [db.engine.dialect.identifier_preparer.quote(name) for name in tables.names]
    async with db.unit_of_work() as uow:
        session = uow.session
        if db.backend == "postgresql":
            await session.execute(text(f"TRUNCATE {', '.join(quoted)} RESTART IDENTITY CASCADE"))
        else:
            for name in reversed(quoted):  # children first: foreign keys are enforced
                await session.execute(text(f"DELETE FROM {name}"))
            if tables.sqlite_sequence:
                names: BindParameter[list[str]] = bindparam(
                    "names", list(tables.names), expanding=True
                )
                await session.execute(
                    text("DELETE FROM sqlite_sequence WHERE name IN :names").bindparams(names)
                )
        await uow.commit()
