"""``Database``: owns the engine and session factories, hands out units of work, retries."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, Literal, Self, TypeVar, cast, get_args, overload

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session
from sqlalchemy.pool import Pool, QueuePool

from ._writelock import WriteLock
from .engine import SQLITE_BEGIN, create_engine
from .errors import (
    CommitOutcomeUnknownError,
    ConfigurationError,
    RetryableError,
    UnitOfWorkStateError,
    raise_translated,
)
from .settings import DatabaseSettings
from .uow import State, UnitOfWork

U = TypeVar("U", bound=UnitOfWork)
T = TypeVar("T")

IsolationLevel = Literal["SERIALIZABLE", "REPEATABLE READ", "READ COMMITTED"]
_ISOLATION_LEVELS: frozenset[str] = frozenset(get_args(IsolationLevel))

logger = logging.getLogger("asyncdal")


class _ReadOnlySession(Session):
    """A session that refuses to flush changes: what read-only units of work use."""

    def flush(self, objects: Any = None) -> None:
        if self.new or self.deleted or any(self.is_modified(obj) for obj in self.dirty):
            raise UnitOfWorkStateError(
                "cannot flush: the unit of work is read-only "
                "(open one with read_only=False to write)"
            )


def _sessions(engine: AsyncEngine, *, read_only: bool) -> async_sessionmaker[AsyncSession]:
    """The session factory every unit of work draws from: objects stay readable after commit."""
    return async_sessionmaker(
        engine,
        expire_on_commit=False,
        sync_session_class=_ReadOnlySession if read_only else Session,
    )


@dataclass(frozen=True, slots=True)
class PoolStatus:
    """A snapshot of the connection pool."""

    size: int
    checked_out: int
    checked_in: int
    overflow: int


class Database(Generic[U]):
    """The entry point: an ``AsyncEngine`` and its session factories, handing out units of work.

    Construction is lazy: no connection is opened until the first unit of work.

    ``poolclass`` replaces the pooled default with another SQLAlchemy pool class, e.g.
    ``NullPool`` to open a fresh connection per unit of work (benchmarks, forked workers); the
    pool settings are then ignored. In-memory SQLite always keeps its one shared connection.

    Raises:
        ConfigurationError: the URL or a setting is invalid.

    Example:
        >>> db = Database("sqlite+aiosqlite:///app.db", unit_of_work=UserUnitOfWork)
        >>> async with db.unit_of_work() as uow:  # doctest: +SKIP
        ...     await uow.users.add(User(name="John Doe", age=30))
        ...     await uow.commit()
    """

    @overload
    def __init__(
        self: Database[UnitOfWork],
        settings: str | DatabaseSettings,
        *,
        unit_of_work: None = None,
        poolclass: type[Pool] | None = None,
    ) -> None: ...
    @overload
    def __init__(
        self: Database[U],
        settings: str | DatabaseSettings,
        *,
        unit_of_work: type[U],
        poolclass: type[Pool] | None = None,
    ) -> None: ...
    def __init__(
        self,
        settings: str | DatabaseSettings,
        *,
        unit_of_work: type[Any] | None = None,
        poolclass: type[Pool] | None = None,
    ) -> None:
        if isinstance(settings, str):
            settings = DatabaseSettings(settings)
        elif not isinstance(settings, DatabaseSettings):
            raise ConfigurationError(
                "Database() takes a URL string or a DatabaseSettings, "
                f"got {type(settings).__name__}"
            )
        uow_class: type[Any] = UnitOfWork if unit_of_work is None else unit_of_work
        if not (isinstance(uow_class, type) and issubclass(uow_class, UnitOfWork)):
            raise ConfigurationError(
                f"unit_of_work must be a UnitOfWork subclass, got {uow_class!r}"
            )
        self._settings = settings
        self._uow_class: type[U] = cast("type[U]", uow_class)
        self._engine = create_engine(settings, poolclass=poolclass)
        sqlite = settings.backend == "sqlite"
        # Writers: BEGIN IMMEDIATE on SQLite. Readers: no BEGIN/COMMIT round trips at all; each
        # statement reads the latest committed data (autocommit), and the session refuses to flush.
        write_engine = (
            self._engine.execution_options(**{SQLITE_BEGIN: "IMMEDIATE"})
            if sqlite
            else self._engine
        )
        read_engine = (
            self._engine.execution_options(**{SQLITE_BEGIN: None})
            if sqlite
            else self._engine.execution_options(isolation_level="AUTOCOMMIT")
        )
        if sqlite and settings.is_memory:
            # One shared connection: a reader without BEGIN would still see a writer's open
            # transaction on it, so in-memory databases read inside transactions too.
            read_engine = self._engine.execution_options(**{SQLITE_BEGIN: "DEFERRED"})
        self._writers = _sessions(write_engine, read_only=False)
        self._readers = _sessions(read_engine, read_only=True)
        # SQLite has one writer at a time: queue ours in-process, first come first served. An
        # in-memory database has one connection, so its readers must queue behind writers too.
        self._write_lock = WriteLock(settings.sqlite_busy_timeout) if sqlite else None
        self._share_lock_with_readers = sqlite and settings.is_memory
        self._isolated: dict[tuple[bool, str], async_sessionmaker[AsyncSession]] = {}

    @classmethod
    @overload
    def from_env(
        cls, *, unit_of_work: None = None, environ: Mapping[str, str] | None = None
    ) -> Database[UnitOfWork]: ...
    @classmethod
    @overload
    def from_env(
        cls, *, unit_of_work: type[U], environ: Mapping[str, str] | None = None
    ) -> Database[U]: ...
    @classmethod
    def from_env(
        cls,
        *,
        unit_of_work: type[Any] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> Database[Any]:
        """Build from ``DATABASE_URL`` and ``ASYNCDAL_*`` variables (see ``DatabaseSettings``)."""
        return Database(DatabaseSettings.from_env(environ), unit_of_work=unit_of_work)

    @property
    def settings(self) -> DatabaseSettings:
        """The validated settings this database was built from."""
        return self._settings

    @property
    def engine(self) -> AsyncEngine:
        """The underlying ``AsyncEngine`` (escape hatch, migrations, raw SQL)."""
        return self._engine

    @property
    def backend(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self._settings.backend

    @property
    def url(self) -> str:
        """The URL with its password hidden."""
        return self._settings.masked_url

    def unit_of_work(
        self,
        *,
        read_only: bool = False,
        timeout: float | None = None,
        isolation_level: IsolationLevel | None = None,
    ) -> U:
        """A new unit of work; enter it with ``async with``.

        ``read_only=True`` refuses to flush, never takes SQLite's write lock, and skips the
        BEGIN/COMMIT round trips: each statement sees the latest committed data. Use a
        read-write unit of work when several reads must see one snapshot.

        ``timeout`` bounds the whole unit of work: when it expires the work is cancelled, rolled
        back, and ``QueryTimeoutError`` is raised.

        ``isolation_level`` (``"SERIALIZABLE"``, ``"REPEATABLE READ"`` or ``"READ COMMITTED"``)
        sets this transaction's isolation on PostgreSQL, where the default is READ COMMITTED;
        a read-only unit of work then reads in one transaction at that level. Under
        SERIALIZABLE, expect ``RetryableError`` (40001) and run the work with
        ``run_in_transaction()``. SQLite's transactions are always serializable, so there the
        level is accepted and changes nothing.

        Raises:
            ConfigurationError: ``isolation_level`` is not one of the three levels.
        """
        takes_lock = not read_only or self._share_lock_with_readers
        return self._uow_class(
            self._factory(read_only, isolation_level),
            read_only=read_only,
            write_lock=self._write_lock if takes_lock else None,
            timeout=timeout,
            fast_paths=self._settings.fast_paths,
        )

    async def run_in_transaction(
        self,
        fn: Callable[[U], Awaitable[T]],
        *,
        attempts: int = 3,
        idempotent: bool = False,
        read_only: bool = False,
        isolation_level: IsolationLevel | None = None,
        base_delay: float = 0.01,
        max_delay: float = 1.0,
    ) -> T:
        """Run ``fn(uow)`` in a fresh unit of work and commit; retry the whole on RetryableError.

        Each attempt gets a new unit of work; between attempts it sleeps a full-jitter backoff
        (uniform in ``[0, min(max_delay, base_delay * 2**attempt)]``). Never retried: any other
        error, a cancellation, and a connection lost during COMMIT unless ``idempotent=True``
        (the first attempt may have committed). ``isolation_level`` is passed to each attempt's
        unit of work (see ``unit_of_work()``).

        Raises:
            RetryableError: the last attempt still failed with one.
            InvalidQueryError: ``attempts`` is below 1.
        """
        if not isinstance(attempts, int) or attempts < 1:
            raise ConfigurationError(f"attempts must be an integer >= 1, got {attempts!r}")
        attempt = 0
        while True:
            attempt += 1
            try:
                async with self.unit_of_work(
                    read_only=read_only, isolation_level=isolation_level
                ) as uow:
                    try:
                        result = await fn(uow)
                    except Exception as error:
                        # fn may have used the uow.session escape hatch, whose driver errors are
                        # raw: classify them too, or a serialization failure there is not retried.
                        raise_translated(error, "run_in_transaction(fn)")
                    if uow.state is State.ACTIVE:
                        await uow.commit()
                    return result
            except RetryableError as error:
                if attempt >= attempts:
                    raise
                self._log_retry(error, attempt, attempts)
            except CommitOutcomeUnknownError as error:
                if not idempotent or attempt >= attempts:
                    raise
                self._log_retry(error, attempt, attempts)
            await asyncio.sleep(random.uniform(0, min(max_delay, base_delay * 2**attempt)))

    def _factory(
        self, read_only: bool, isolation_level: str | None
    ) -> async_sessionmaker[AsyncSession]:
        if isolation_level is None:
            return self._readers if read_only else self._writers
        if isolation_level not in _ISOLATION_LEVELS:
            raise ConfigurationError(
                "isolation_level must be one of SERIALIZABLE, REPEATABLE READ, READ COMMITTED "
                f"or None, got {isolation_level!r}"
            )
        if self.backend == "sqlite":
            # Every SQLite transaction is serializable; setting a level through the driver
            # would re-enable its implicit BEGIN and break the explicit-BEGIN recipe.
            return self._readers if read_only else self._writers
        key = (read_only, isolation_level)
        found = self._isolated.get(key)
        if found is None:
            engine = self._engine.execution_options(isolation_level=isolation_level)
            found = self._isolated[key] = _sessions(engine, read_only=read_only)
        return found

    @staticmethod
    def _log_retry(error: Exception, attempt: int, attempts: int) -> None:
        logger.info(
            "retrying transaction after %s (attempt %d of %d)",
            type(error).__name__,
            attempt,
            attempts,
        )

    def pool_status(self) -> PoolStatus:
        """How many connections the pool holds, and how many are checked out right now."""
        pool = self._engine.pool
        if isinstance(pool, QueuePool):
            return PoolStatus(
                size=pool.size(),
                checked_out=pool.checkedout(),
                checked_in=pool.checkedin(),
                overflow=max(0, pool.overflow()),
            )
        # StaticPool (in-memory SQLite) and NullPool keep no count of checkouts.
        return PoolStatus(size=1, checked_out=0, checked_in=0, overflow=0)

    async def dispose(self) -> None:
        """Close every pooled connection. The database stays usable: it reconnects on demand."""
        await self._engine.dispose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.dispose()

    def __repr__(self) -> str:
        return f"<Database {self.url} unit_of_work={self._uow_class.__name__}>"
