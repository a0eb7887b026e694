"""``Database``: owns the engine and session factories, hands out units of work, retries."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, Literal, Self, TypeVar, cast, get_args, overload

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.pool import Pool

from ._nodes import Node, nodes, sessions
from ._observer import Observer, ping, pool_metrics
from ._pgconnection import PRIMARY_TOKEN
from ._retry import retrying
from ._writelock import WriteLock
from .engine import SQLITE_BEGIN, create_engine
from .errors import (
    ConfigurationError,
    UnavailableError,
)
from .metrics import DatabaseMetrics
from .routing import Router, parse_position, pin, pinned
from .settings import DatabaseSettings
from .uow import UnitOfWork

U = TypeVar("U", bound=UnitOfWork)
T = TypeVar("T")

_PRIMARY_POSITION = parse_position(PRIMARY_TOKEN)

IsolationLevel = Literal["SERIALIZABLE", "REPEATABLE READ", "READ COMMITTED"]
_ISOLATION_LEVELS: frozenset[str] = frozenset(get_args(IsolationLevel))

logger = logging.getLogger("asyncdal")


@dataclass(frozen=True, slots=True)
class PoolStatus:
    """A snapshot of the connection pool."""

    size: int
    checked_out: int
    checked_in: int
    overflow: int


def _pool_status(pool: Pool) -> PoolStatus:
    metrics = pool_metrics(pool)
    return PoolStatus(
        size=metrics.size,
        checked_out=metrics.checked_out,
        checked_in=metrics.idle,
        overflow=metrics.overflow,
    )


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
        self._router: Router | None = None
        self._nodes: list[Node] = []
        self._isolated: dict[tuple[bool, str], async_sessionmaker[AsyncSession]] = {}
        self._writers = sessions(self._engine, read_only=False)
        self._write_lock: WriteLock | None = None
        self._share_lock_with_readers = False
        self._observer = Observer(settings)
        if settings.backend == "sqlite":
            self._sqlite_sessions(settings)
        else:
            self._nodes = nodes(settings, self._engine, poolclass)
            self._readers = self._nodes[0].readers
            if len(self._nodes) > 1:
                self._router = Router(settings, self._nodes[0], self._nodes[1:])
        if settings.slow_unit_of_work_ms is not None:
            self._observer.count_statements(self.engines.values())
        if settings.otel:
            from .otel import instrument  # only now: without the setting nothing imports it

            instrument(self)

    def _sqlite_sessions(self, settings: DatabaseSettings) -> None:
        # Writers: BEGIN IMMEDIATE. Readers: no BEGIN/COMMIT at all; each statement reads the
        # latest committed data, and the session refuses to flush.
        self._writers = sessions(
            self._engine.execution_options(**{SQLITE_BEGIN: "IMMEDIATE"}), read_only=False
        )
        read_engine = self._engine.execution_options(**{SQLITE_BEGIN: None})
        if settings.is_memory:
            # One shared connection: a reader without BEGIN would still see a writer's open
            # transaction on it, so in-memory databases read inside transactions too.
            read_engine = self._engine.execution_options(**{SQLITE_BEGIN: "DEFERRED"})
        self._readers = sessions(read_engine, read_only=True)
        # SQLite has one writer at a time: queue ours in-process, first come first served. An
        # in-memory database has one connection, so its readers must queue behind writers too.
        self._write_lock = WriteLock(settings.sqlite_busy_timeout)
        self._share_lock_with_readers = settings.is_memory

    @classmethod
    @overload
    def from_env(
        cls,
        *,
        unit_of_work: None = None,
        environ: Mapping[str, str] | None = None,
        default_url: str | None = None,
    ) -> Database[UnitOfWork]: ...
    @classmethod
    @overload
    def from_env(
        cls,
        *,
        unit_of_work: type[U],
        environ: Mapping[str, str] | None = None,
        default_url: str | None = None,
    ) -> Database[U]: ...
    @classmethod
    def from_env(
        cls,
        *,
        unit_of_work: type[Any] | None = None,
        environ: Mapping[str, str] | None = None,
        default_url: str | None = None,
    ) -> Database[Any]:
        """Build from ``DATABASE_URL`` (else ``default_url``) and ``ASYNCDAL_*`` variables (see
        ``DatabaseSettings``)."""
        settings = DatabaseSettings.from_env(environ, default_url=default_url)
        return Database(settings, unit_of_work=unit_of_work)

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
        on: Literal["primary"] | None = None,
        after: str | None = None,
    ) -> U:
        """A new unit of work; enter it with ``async with``.

        ``read_only=True`` refuses to flush (and on PostgreSQL the server refuses a write in it
        too), never takes SQLite's write lock, and skips the BEGIN/COMMIT round trips: each
        statement sees the latest committed data. Use a read-write unit of work when several
        reads must see one snapshot. With replicas configured it runs on a replica (see
        ``asyncdal.routing``), unless ``on="primary"`` or inside ``pin_primary()``.

        ``after`` is a ``commit_token`` from an earlier unit of work: the read then runs on a
        replica that has replayed that commit, or on the primary (a no-op without replicas).

        ``timeout`` bounds the whole unit of work: when it expires the work is cancelled, rolled
        back, and ``QueryTimeoutError`` is raised.

        ``isolation_level`` (``"SERIALIZABLE"``, ``"REPEATABLE READ"`` or ``"READ COMMITTED"``)
        sets this transaction's isolation on PostgreSQL, where the default is READ COMMITTED;
        a read-only unit of work then reads in one transaction at that level. Under
        SERIALIZABLE, expect ``RetryableError`` (40001) and run the work with
        ``run_in_transaction()``. SQLite's transactions are always serializable, so there the
        level is accepted and changes nothing.

        Raises:
            ConfigurationError: ``isolation_level`` is not one of the three levels, or ``on``
                is not ``"primary"``.
            InvalidQueryError: ``after`` is not a commit token.

        Example:
            >>> async with db.unit_of_work() as uow:  # doctest: +SKIP
            ...     await uow.users.add(User(name="Ann", age=30))
            ...     await uow.commit()
            >>> async with db.unit_of_work(read_only=True, after=uow.commit_token) as uow:
            ...     await uow.users.get_one(ann_id)  # doctest: +SKIP
        """
        if on not in (None, "primary"):
            raise ConfigurationError(f"on must be 'primary' or None, got {on!r}")
        position = None if after is None else parse_position(after)
        factory = self._factory(read_only, isolation_level)
        router = self._router
        if read_only and router is not None and on is None and not pinned(self):
            if position == 0:  # the token of a commit that needs no replica to catch up
                position = None
            if position != _PRIMARY_POSITION:
                return self._uow_class(
                    factory,
                    read_only=True,
                    timeout=timeout,
                    opener=router.opener(position, isolation_level),
                    observer=self._observer,
                )
        takes_lock = not read_only or self._share_lock_with_readers
        return self._uow_class(
            factory,
            read_only=read_only,
            write_lock=self._write_lock if takes_lock else None,
            timeout=timeout,
            observer=self._observer,
            fast_paths=self._settings.fast_paths,
        )

    @contextlib.contextmanager
    def pin_primary(self) -> Iterator[None]:
        """Run every unit of work opened inside the block on the primary, read-only ones too.

        A context variable: it holds for the current task (and tasks it starts inside the
        block), so one request can pin itself, e.g. right after a write, without affecting
        others. Without replicas it changes nothing.

        Example:
            >>> with db.pin_primary():  # doctest: +SKIP
            ...     async with db.unit_of_work(read_only=True) as uow:
            ...         await uow.users.get_one(user_id)  # on the primary
        """
        with pin(self):
            yield

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
        timeout: float | None = None,  # noqa: ASYNC109 - handed to each attempt's unit of work
    ) -> T:
        """Run ``fn(uow)`` in a fresh unit of work and commit; retry the whole on RetryableError.

        Each attempt gets a new unit of work; between attempts it sleeps a full-jitter backoff
        (uniform in ``[0, min(max_delay, base_delay * 2**attempt)]``). Never retried: any other
        error, a cancellation, and a connection lost during COMMIT unless ``idempotent=True``
        (the first attempt may have committed). ``isolation_level`` and ``timeout`` (which
        bounds each attempt, then raises ``QueryTimeoutError``) are passed to each attempt's
        unit of work (see ``unit_of_work()``).

        Raises:
            RetryableError: the last attempt still failed with one.
            InvalidQueryError: ``attempts`` is below 1.
        """
        if not isinstance(attempts, int) or attempts < 1:
            raise ConfigurationError(f"attempts must be an integer >= 1, got {attempts!r}")

        def attempt_uow() -> U:
            return self.unit_of_work(
                read_only=read_only, isolation_level=isolation_level, timeout=timeout
            )

        return await retrying(
            attempt_uow,
            fn,
            attempts=attempts,
            idempotent=idempotent,
            delays=(base_delay, max_delay),
            on_retry=self._retry,
        )

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
        if read_only:
            return self._nodes[0].read_sessions(isolation_level)
        key = (read_only, isolation_level)
        found = self._isolated.get(key)
        if found is None:
            engine = self._engine.execution_options(isolation_level=isolation_level)
            found = self._isolated[key] = sessions(engine, read_only=read_only)
        return found

    def _retry(self, error: Exception, attempt: int, attempts: int) -> None:
        self._observer.retried(error)
        logger.info(
            "retrying transaction after %s (attempt %d of %d)",
            type(error).__name__,
            attempt,
            attempts,
        )

    def pool_status(self) -> PoolStatus:
        """How many connections the primary's pool holds, and how many are checked out now."""
        return _pool_status(self._engine.pool)

    def pool_statuses(self) -> dict[str, PoolStatus]:
        """``pool_status()`` for every node: ``"primary"``, then ``"replica1"``, ``"replica2"``...

        Example:
            >>> {name: s.checked_out for name, s in db.pool_statuses().items()}  # doctest: +SKIP
            {'primary': 0, 'replica1': 1, 'replica2': 0}
        """
        return {name: _pool_status(engine.pool) for name, engine in self.engines.items()}

    @property
    def engines(self) -> dict[str, AsyncEngine]:
        """Every node's engine by name, the primary first (e.g. to instrument each one)."""
        if not self._nodes:
            return {"primary": self._engine}
        return {node.name: node.engine for node in self._nodes}

    async def ping(self) -> float:
        """``SELECT 1`` on the primary through its pool; returns that round trip in seconds.

        For readiness checks. Bounded by ``connect_timeout`` in all, connection included; a
        pooled connection found dead is replaced once. Replicas are not pinged: the routing
        health check watches them (a read falls back to the primary when none can take it).

        Raises:
            UnavailableError: no answer within ``connect_timeout`` (refused, unreachable, the
                pool exhausted), or the database is shutting down.

        Example:
            >>> round_trip = await db.ping()  # doctest: +SKIP
        """
        if self._observer.closed:
            raise UnavailableError("Database.ping() failed: the database is shutting down")
        timeout = self._settings.connect_timeout
        if self._nodes:
            return await ping(self._nodes[0].read_engine, timeout, self.url)
        engine = self._engine.execution_options(**{SQLITE_BEGIN: None})
        if self._write_lock is None or not self._share_lock_with_readers:
            return await ping(engine, timeout, self.url)
        # In memory: one connection, shared; a SELECT between a writer's statements would
        # roll the writer back when it returns to the pool.
        await self._write_lock.acquire()
        try:
            return await ping(engine, timeout, self.url)
        finally:
            self._write_lock.release()

    def metrics(self) -> DatabaseMetrics:
        """A snapshot to export: each node's pool, connection wait time, units of work by
        outcome and duration, slow units of work, retries by reason (see ``asyncdal.metrics``).

        Example:
            >>> db.metrics().units_of_work.committed  # doctest: +SKIP
            1042
        """
        pools = {name: pool_metrics(engine.pool) for name, engine in self.engines.items()}
        return self._observer.snapshot(pools)

    async def dispose(self, *, timeout: float | None = None) -> None:  # noqa: ASYNC109 - a deadline for others' work, not for this call
        """Close every pooled connection, on every node, and stop the replica checks.

        Without ``timeout`` the database stays usable: it reconnects on demand. With one, it
        shuts down for good: new units of work (and ``ping()``) are refused at once with
        ``UnavailableError``; those in flight may finish within ``timeout`` seconds; then the
        rest are cancelled, rolled back (their callers get ``UnavailableError``, waited for
        at most ``connect_timeout`` more) and every connection is closed. What committed
        stays committed; what had not committed is rolled back, never half applied.

        Example:
            >>> await db.dispose(timeout=10)  # doctest: +SKIP
        """
        if timeout is not None:
            if not timeout >= 0:
                raise ConfigurationError(f"timeout must be >= 0 seconds, got {timeout!r}")
            grace = self._settings.connect_timeout
            in_flight, finished, cancelled = await self._observer.drain(timeout, grace)
            logger.info(
                "shutting down %s: %d units of work in flight, %d finished, %d cancelled",
                self.url,
                in_flight,
                finished,
                cancelled,
            )
        if self._router is not None:
            await self._router.close()
        await asyncio.gather(*(engine.dispose() for engine in self.engines.values()))

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
