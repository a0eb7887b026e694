"""Build the ``AsyncEngine`` with each backend's defaults.

SQLite: WAL, ``foreign_keys=ON`` and a busy timeout on every connection, and SQLAlchemy's
explicit-BEGIN recipe (the driver's own implicit transactions are switched off), so that a unit of
work that writes starts with ``BEGIN IMMEDIATE`` and queues for the write lock up front, instead of
upgrading a read lock later and failing with "database is locked".
https://docs.sqlalchemy.org/en/20/dialects/sqlite.html#serializable-isolation-savepoints-transactional-ddl

PostgreSQL: asyncpg with an ``application_name``, server-side timeouts sent at connect (``SET
LOCAL`` at each BEGIN behind PgBouncer), a cheap liveness check on checkout, read-only by default
outside transactions on a primary, and unnamed prepared statements behind PgBouncer.
"""

from __future__ import annotations

import contextlib
import weakref
from typing import Any, ClassVar, Final, cast

from sqlalchemy import event, exc
from sqlalchemy.engine import Connection, Dialect, characteristics, make_url
from sqlalchemy.engine.default import DefaultDialect
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry, NullPool, Pool, StaticPool
from sqlalchemy.util.concurrency import await_

from ._pgconnection import PGBOUNCER_CLOSE_GRACE, connection_class
from ._sqlite import one_hop_dbapi
from .settings import DatabaseSettings

#: Execution option marking asyncdal's own read-only path on a PostgreSQL primary: autocommit
#: there stays read-only. Any other ``isolation_level="AUTOCOMMIT"`` use (the engine as an
#: escape hatch, Alembic's ``autocommit_block()``) gets a connection that may write.
READER: Final = "asyncdal_reader"

#: Execution option naming how a SQLite transaction begins: "IMMEDIATE", "DEFERRED" or None
#: (no BEGIN at all: every statement commits on its own, as read-only units of work use).
SQLITE_BEGIN: Final = "asyncdal_sqlite_begin"


def create_engine(
    settings: DatabaseSettings,
    *,
    poolclass: type[Pool] | None = None,
    url: str | None = None,
    replica: bool = False,
) -> AsyncEngine:
    """Build the engine for ``settings``; no connection is opened until first use.

    ``poolclass=NullPool`` opens a fresh connection per checkout (benchmarks, forked workers).
    ``url`` replaces ``settings.url`` (another node of the same database), and ``replica=True``
    builds it for a hot standby (PostgreSQL only).

    On a PostgreSQL primary reached directly, connections default to read-only
    (``default_transaction_read_only``) and every explicit transaction begins ``READ WRITE``:
    asyncdal's read-only units of work run there in autocommit and the server refuses their writes.
    Any other autocommit use (``isolation_level="AUTOCOMMIT"`` on the engine or a connection, e.g.
    ``CREATE INDEX CONCURRENTLY`` in ``autocommit_block()``) gets a connection that may write: one
    ``SET`` when it is made autocommit, and one more when it goes back to the pool.
    """
    kwargs: dict[str, Any] = {"echo": settings.echo, "hide_parameters": not settings.echo}
    if settings.backend == "sqlite":
        engine = _sqlite_engine(settings, poolclass, kwargs)
    else:
        engine = _postgres_engine(settings, poolclass, kwargs, url=url, replica=replica)
    return engine


def _pool_kwargs(settings: DatabaseSettings, poolclass: type[Pool] | None) -> dict[str, Any]:
    if poolclass is not None:
        return {"poolclass": poolclass}
    return {
        "pool_size": settings.pool_size,
        "max_overflow": settings.max_overflow,
        "pool_timeout": settings.pool_timeout,
        "pool_recycle": -1 if settings.pool_recycle is None else settings.pool_recycle,
        "pool_pre_ping": settings.pool_pre_ping,
    }


def _sqlite_engine(
    settings: DatabaseSettings, poolclass: type[Pool] | None, kwargs: dict[str, Any]
) -> AsyncEngine:
    connect_args: dict[str, Any] = {"timeout": settings.sqlite_busy_timeout}
    if settings.is_memory:
        # One shared connection, or every checkout would see a different empty database.
        kwargs["poolclass"] = StaticPool
        connect_args["check_same_thread"] = False
    else:
        kwargs.update(_pool_kwargs(settings, poolclass))
        kwargs.pop("pool_pre_ping", None)
    dbapi = one_hop_dbapi()
    if dbapi is not None:
        kwargs["module"] = dbapi
    engine = create_async_engine(settings.url, connect_args=connect_args, **kwargs)
    journal = "MEMORY" if settings.is_memory else "WAL"
    synchronous = settings.sqlite_synchronous

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        # Hand transaction control to SQLAlchemy: the driver must not emit BEGIN on its own.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA journal_mode={journal}")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA synchronous={synchronous}")
        finally:
            cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Connection) -> None:
        mode = connection.get_execution_options().get(SQLITE_BEGIN, "IMMEDIATE")
        if mode is not None:
            connection.exec_driver_sql(f"BEGIN {mode}")

    @event.listens_for(engine.sync_engine.pool, "invalidate")
    def _roll_back_before_close(
        dbapi_connection: Any, _record: ConnectionPoolEntry, _error: BaseException | None
    ) -> None:
        # A task cancelled mid-statement invalidates its connection, and closing a sqlite3
        # connection whose cancelled statement was never finalized leaves it open as a zombie
        # that keeps its transaction, and so the file's write lock, for good: every later
        # writer then fails with "database is locked". Roll back first; it runs in the
        # driver's thread after the cancelled statement and aborts it.
        with contextlib.suppress(Exception):  # best effort: the connection is thrown away
            dbapi_connection.rollback()

    return engine


def _postgres_engine(
    settings: DatabaseSettings,
    poolclass: type[Pool] | None,
    kwargs: dict[str, Any],
    *,
    url: str | None = None,
    replica: bool = False,
) -> AsyncEngine:
    server_settings = {"application_name": settings.application_name}
    timeouts = {
        "statement_timeout": settings.statement_timeout,
        "lock_timeout": settings.lock_timeout,
        "idle_in_transaction_session_timeout": settings.idle_in_transaction_timeout,
    }
    milliseconds = {
        name: str(max(1, round(value * 1000)))
        for name, value in timeouts.items()
        if value is not None
    }
    # Directly on a primary, connections default to read-only: a read-only unit of work runs in
    # autocommit (no BEGIN/COMMIT round trips) and the server still refuses a write in it;
    # every explicit transaction begins READ WRITE (see _Connection). A hot standby refuses
    # writes by itself. Behind PgBouncer no startup parameter gets through: read-only units
    # of work begin READ ONLY there, and timeouts are SET LOCAL at each BEGIN instead.
    read_only_default = not settings.pgbouncer and not replica
    if not settings.pgbouncer:
        server_settings.update(milliseconds)
        if read_only_default:
            server_settings["default_transaction_read_only"] = "on"
    connect_args: dict[str, Any] = {
        "server_settings": server_settings,
        "timeout": settings.connect_timeout,
        "connection_class": connection_class(
            read_write_begin=read_only_default,
            set_local=_set_local(milliseconds) if settings.pgbouncer else "",
            commit_position=bool(settings.replica_urls) and not replica,
            close_grace=PGBOUNCER_CLOSE_GRACE if settings.pgbouncer else None,
        ),
    }
    if settings.pgbouncer:
        # PgBouncer in transaction mode hands each transaction to any server connection, where
        # a named prepared statement may not exist, and where the Close asyncpg sends for one
        # later never arrives, so named statements pile up (the SQLAlchemy recipe's unique names
        # reached 437 per server connection). The unnamed statement ("") lives on the server
        # connection only until the next Parse, and every unit of work here runs in a
        # transaction, which PgBouncer keeps on one server connection from BEGIN to COMMIT.
        connect_args["statement_cache_size"] = 0
        connect_args["prepared_statement_cache_size"] = 0
        connect_args["prepared_statement_name_func"] = _unnamed
    kwargs.update(_pool_kwargs(settings, poolclass))
    parsed = make_url(url or settings.url)
    secret = parsed.query.get("password")
    if isinstance(secret, str):
        # SQLAlchemy hides a password only in the user:password@ part of a URL: one given as
        # ?password= would show in engine.url and its repr. Hand it to the driver directly.
        connect_args["password"] = secret
        parsed = parsed.difference_update_query(["password"])
    engine = create_async_engine(parsed, connect_args=connect_args, **kwargs)

    @event.listens_for(engine.sync_engine, "checkout")
    def _drop_dead_connection(
        _dbapi_connection: Any, record: ConnectionPoolEntry, _proxy: Any
    ) -> None:
        # asyncpg notices the server closing an idle pooled connection (pg_terminate_backend,
        # restart) as soon as the loop reads the socket's EOF. Checking that flag costs nothing,
        # unlike pre-ping's three round trips, and lets the pool replace the connection silently.
        driver = record.driver_connection
        if driver is not None and driver.is_closed():
            raise exc.DisconnectionError("pooled connection was closed by the server")

    _autocommit_characteristics(engine, writable=read_only_default)
    return engine


def _autocommit_characteristics(engine: AsyncEngine, *, writable: bool) -> None:
    """The :data:`READER` option (autocommit for asyncdal's read-only path) and, on a primary
    whose connections default to read-only, an autocommit that may write for everyone else.

    Done with the dialect's connection characteristics (what ``isolation_level`` itself is, and
    how SQLAlchemy's PostgreSQL dialects add ``postgresql_readonly``), not engine events: any
    connection event listener makes SQLAlchemy dispatch events around every statement, which
    cost a write 12% more client work (callgrind) for the sake of a rare escape hatch.
    """
    dialect = cast("DefaultDialect", engine.sync_engine.dialect)
    added: dict[str, characteristics.ConnectionCharacteristic] = {READER: _ReaderAutocommit()}
    if writable:
        added["isolation_level"] = _WritableAutocommit()
    # On this engine's dialect instance only: every engine gets its own dialect.
    dialect.connection_characteristics = dialect.connection_characteristics.union(added)


class _ReaderAutocommit(characteristics.IsolationLevelCharacteristic):
    """asyncdal's read-only path: autocommit, on a connection that stays read-only."""

    def set_characteristic(self, dialect: Dialect, dbapi_conn: Any, value: Any) -> None:
        if value:
            super().set_characteristic(dialect, dbapi_conn, "AUTOCOMMIT")


class _WritableAutocommit(characteristics.IsolationLevelCharacteristic):
    """``isolation_level``, except that AUTOCOMMIT also makes the connection writable: one
    ``SET`` on the way out of the pool, one ``SET`` back when it returns."""

    _writable: ClassVar[weakref.WeakSet[Any]] = weakref.WeakSet()

    def set_characteristic(self, dialect: Dialect, dbapi_conn: Any, value: Any) -> None:
        super().set_characteristic(dialect, dbapi_conn, value)
        driver = dbapi_conn.driver_connection
        if value == "AUTOCOMMIT" and driver not in self._writable:
            await_(driver.execute("SET default_transaction_read_only = off"))
            self._writable.add(driver)

    def reset_characteristic(self, dialect: Dialect, dbapi_conn: Any) -> None:
        super().reset_characteristic(dialect, dbapi_conn)
        driver = dbapi_conn.driver_connection
        if driver in self._writable:
            self._writable.discard(driver)
            # If this fails (the connection broke), the pool invalidates the connection.
            await_(driver.execute("SET default_transaction_read_only = on"))


def _unnamed() -> str:
    return ""


def _set_local(milliseconds: dict[str, str]) -> str:
    return "".join(f" SET LOCAL {name} = {value};" for name, value in milliseconds.items())


def nullpool_engine(settings: DatabaseSettings) -> AsyncEngine:
    """An engine that opens a new connection for every checkout (no pooling)."""
    return create_engine(settings, poolclass=NullPool)
