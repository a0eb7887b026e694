"""Programmatic Alembic: migrate from inside a running service, on the application's own engine.

``await upgrade(db)`` runs Alembic on a connection of ``db``'s engine (Alembic's connection-sharing
recipe), so it works inside a running event loop and with the same pragmas and settings as the
application. The same code runs behind ``alembic upgrade head`` (``alembic/env.py`` calls
:func:`run_env`), so the command line and the service cannot drift apart.

- PostgreSQL: the whole upgrade runs in one transaction (DDL is transactional) that first takes an
  advisory lock, so replicas starting together apply each revision exactly once, and a revision
  that fails halfway leaves schema and version untouched. The lock is transaction-level, so it
  works through PgBouncer in transaction mode; ``migration_url`` (a setting) bypasses PgBouncer
  instead. A server in recovery (a hot standby) is refused before anything runs.
- SQLite: batch mode (ALTER by table copy), foreign keys off while it runs and checked at the end.
"""

from __future__ import annotations

import asyncio
import os
import weakref
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import NullPool

from .database import Database
from .engine import SQLITE_BEGIN, create_engine
from .errors import ConfigurationError, DataAccessError, raise_translated
from .settings import DatabaseSettings, mask_url

#: pg_advisory_xact_lock key: the bytes of "asyncdal" as a signed 64-bit integer.
ADVISORY_LOCK_KEY = int.from_bytes(b"asyncdal", "big", signed=True)
#: Where `alembic upgrade head` migrates when DATABASE_URL is not set.
DEFAULT_URL = "sqlite+aiosqlite:///asyncdal.db"


def script_location() -> Path:
    """The Alembic scripts: packaged inside the wheel, or the repository's ``alembic/``."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "_alembic", here.parents[1] / "alembic"):
        if (candidate / "env.py").is_file():
            return candidate
    raise DataAccessError(f"cannot find the Alembic scripts next to {here}")


def alembic_config() -> Config:
    """An Alembic ``Config`` for the packaged revisions, without an ini file."""
    config = Config()
    config.set_main_option("script_location", str(script_location()).replace("%", "%%"))
    return config


def head() -> str:
    """The newest revision id."""
    revision = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if revision is None:  # pragma: no cover - the package always ships revisions
        raise DataAccessError("no Alembic revisions found")
    return revision


@asynccontextmanager
async def _engine_of(db: Database[Any] | AsyncEngine) -> AsyncIterator[AsyncEngine]:
    """The engine migrations run on: ``db``'s own, or one for its ``migration_url``."""
    if not isinstance(db, Database):
        yield db
        return
    if db.settings.migration_url is None:
        yield db.engine
        return
    engine = create_engine(_migration_settings(db.settings), poolclass=NullPool)
    try:
        yield engine
    finally:
        await engine.dispose()


def _migration_settings(settings: DatabaseSettings) -> DatabaseSettings:
    """``settings`` pointed at ``migration_url`` when it is set: a direct connection to the
    primary, bypassing PgBouncer (so no PgBouncer mode) and any replicas."""
    if settings.migration_url is None:
        return settings
    return settings.replace(
        url=settings.migration_url, migration_url=None, replica_urls=(), pgbouncer=False
    )


async def refuse_replica(engine: AsyncEngine) -> None:
    """Raise unless ``engine``'s server accepts writes: migrations never run on a hot standby.

    Raises:
        ConfigurationError: the server is in recovery (``pg_is_in_recovery()``).
        UnavailableError: the server cannot be reached.
    """
    if engine.dialect.name != "postgresql":
        return
    try:
        # READ ONLY: a standby refuses the READ WRITE transaction the engine begins by default.
        async with engine.connect() as probe:
            probe = await probe.execution_options(postgresql_readonly=True)
            in_recovery = await probe.scalar(text("SELECT pg_is_in_recovery()"))
    except Exception as error:
        raise_translated(error, "migrations: connecting", connecting=True)
    if in_recovery:
        raise ConfigurationError(
            f"migrations refused: {mask_url(engine.url)} is a hot standby "
            "(pg_is_in_recovery() is true); point url or migration_url at the primary"
        )


#: One lock per event loop: see _run_command.
_IN_PROCESS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
    weakref.WeakKeyDictionary()
)


async def _run_command(db: Database[Any] | AsyncEngine, fn: Callable[[Config], None]) -> None:
    config = alembic_config()

    def in_sync(connection: Connection) -> None:
        config.attributes["connection"] = connection
        fn(config)

    # Alembic keeps the command in progress in module globals (alembic.context): two commands
    # of one process at once would run their revisions on each other's connections (through
    # PgBouncer that deadlocked until query_wait_timeout). Other processes queue at the
    # database's advisory lock; ours queue here first.
    lock = _IN_PROCESS.setdefault(asyncio.get_running_loop(), asyncio.Lock())
    async with lock, _engine_of(db) as engine:
        await refuse_replica(engine)
        try:
            connection = await engine.connect()
        except Exception as error:
            raise_translated(error, "migrations: connecting", connecting=True)
        try:
            await connection.run_sync(in_sync)
            await connection.commit()
        except Exception as error:
            # A failed revision: PostgreSQL rolled the whole upgrade back, SQLite too (one
            # transaction); say so with an asyncdal error, the driver's chained as __cause__.
            raise_translated(error, "migrations")
        finally:
            await connection.close()


async def upgrade(db: Database[Any] | AsyncEngine, revision: str = "head") -> None:
    """Migrate ``db`` up to ``revision`` (default: the newest), on its own engine."""
    await _run_command(db, lambda config: command.upgrade(config, revision))


async def downgrade(db: Database[Any] | AsyncEngine, revision: str) -> None:
    """Migrate ``db`` down to ``revision`` (``"base"`` removes every table)."""
    await _run_command(db, lambda config: command.downgrade(config, revision))


async def check(db: Database[Any] | AsyncEngine) -> None:
    """Verify the database at head matches the models (what ``alembic check`` does).

    Raises:
        alembic.util.exc.AutogenerateDiffsDetected: autogenerate would emit operations.
    """
    await _run_command(db, command.check)


async def current(db: Database[Any] | AsyncEngine) -> str | None:
    """The revision ``db`` is at, or ``None`` for an unmigrated database."""

    def read(connection: Connection) -> str | None:
        return MigrationContext.configure(connection).get_current_revision()

    async with _engine_of(db) as engine, engine.connect() as connection:
        return await connection.run_sync(read)


# -- what alembic/env.py runs ------------------------------------------------------------------


def _sqlite_foreign_keys(connection: Connection, on: bool) -> None:
    # The pragma is a no-op inside a transaction, so it goes straight to the driver connection,
    # before SQLAlchemy begins one.
    cursor = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]  # checked out
    try:
        cursor.execute(f"PRAGMA foreign_keys={'ON' if on else 'OFF'}")
    finally:
        cursor.close()


def run_migrations(connection: Connection) -> None:
    """Run the Alembic command in progress on ``connection`` (called from ``env.py``)."""
    from alembic import context

    from .models import Base

    sqlite = connection.dialect.name == "sqlite"
    if sqlite:
        connection.execution_options(**{SQLITE_BEGIN: "IMMEDIATE"})
        _sqlite_foreign_keys(connection, False)
    try:
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            render_as_batch=sqlite,
            # SQLite's DDL is transactional once SQLAlchemy owns BEGIN (engine.py's recipe): run
            # each upgrade in one transaction there too, so a failed revision leaves nothing.
            transactional_ddl=True,
            compare_type=True,
        )
        with context.begin_transaction():
            if connection.dialect.name == "postgresql":
                # Replicas starting at once queue here; each then reads the version afresh.
                connection.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADVISORY_LOCK_KEY}
                )
            context.run_migrations()
            if sqlite:
                broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                if broken:
                    raise DataAccessError(f"migration left {len(broken)} broken foreign keys")
    finally:
        if sqlite:
            _sqlite_foreign_keys(connection, True)


async def _run_with_url(url: str) -> None:
    # The ASYNCDAL_* variables apply as they do to the service (application_name, timeouts,
    # ASYNCDAL_MIGRATION_URL).
    settings = _migration_settings(DatabaseSettings.from_env(default_url=url))
    engine = create_engine(settings, poolclass=NullPool)
    try:
        await refuse_replica(engine)
        try:
            connection = await engine.connect()
        except Exception as error:
            raise_translated(error, f"connecting to {settings.masked_url}", connecting=True)
        # Not `async with connection`: it is started already, and entering would start it again.
        try:
            await connection.run_sync(run_migrations)
            await connection.commit()
        finally:
            await connection.close()
    finally:
        await engine.dispose()


def run_env() -> None:
    """The body of ``alembic/env.py``: online on a shared or new connection, or offline SQL."""
    from alembic import context

    from .models import Base

    connection = context.config.attributes.get("connection")
    if connection is not None:
        run_migrations(connection)
        return
    url = os.environ.get("DATABASE_URL") or DEFAULT_URL
    if context.is_offline_mode():
        settings = DatabaseSettings(url)
        context.configure(
            url=settings.url,
            target_metadata=Base.metadata,
            literal_binds=True,
            render_as_batch=settings.backend == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()
        return
    asyncio.run(_run_with_url(url))
