"""Watching units of work: which are in flight (for a graceful shutdown), metrics, the slow log,
and the tracing hooks ``asyncdal.otel`` plugs in.

A ``Database`` owns one ``Observer``. Each of its units of work calls ``enter()`` first thing in
``__aenter__``, ``connected()`` once it holds its connection, and ``leave()`` last thing on the
way out, with the exception that ends it. On the hot path that is three ``perf_counter_ns()``
calls, a dict insert and pop, and a few integer increments; the rest happens only when a feature
asks for it (the slow log, tracing) or when a snapshot is taken.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from contextvars import ContextVar, Token
from time import perf_counter_ns
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import Pool, QueuePool

from .errors import UnavailableError, raise_translated
from .metrics import DatabaseMetrics, Durations, PoolMetrics, Recorder, UnitOfWorkMetrics
from .uow import State

if TYPE_CHECKING:
    from .settings import DatabaseSettings
    from .uow import UnitOfWork

logger = logging.getLogger("asyncdal")

#: The unit of work whose statements the current task is running (when statements are counted).
_CURRENT: ContextVar[Entry | None] = ContextVar("asyncdal_unit_of_work", default=None)


class Tracing(Protocol):
    """What ``asyncdal.otel`` plugs into an ``Observer``: a span around each unit of work."""

    def start(self, uow: UnitOfWork) -> object:
        """Open the span (and make it current) as ``uow`` is entered; returns a handle."""
        ...

    def finish(
        self, handle: object, entry: Entry, outcome: str, error: BaseException | None
    ) -> None:
        """Close the span opened by ``start`` once the unit of work has ended."""
        ...


class Entry:
    """One unit of work in flight: its task, when it started and connected, what it ran."""

    __slots__ = ("cancelled", "connected", "span", "start", "statements", "task", "token")

    def __init__(self, task: asyncio.Task[Any] | None, start: int) -> None:
        self.task = task
        self.start = start
        self.connected = 0  # perf_counter_ns() once it holds its connection
        self.statements = 0
        self.cancelled = False  # cancelled by a shutdown whose timeout expired
        self.span: object = None
        self.token: Token[Entry | None] | None = None


def _count_statement(*_args: Any) -> None:
    entry = _CURRENT.get()
    if entry is not None:
        entry.statements += 1


def label(uow: UnitOfWork) -> str:
    """How the slow log and the span name ``uow``: ``unit_of_work``, or the function and
    attempt of ``run_in_transaction``."""
    attempt = uow._attempt
    if attempt is None:
        return "unit_of_work"
    fn, number = attempt
    return f"run_in_transaction({getattr(fn, '__qualname__', type(fn).__name__)}) attempt {number}"


def outcome_of(uow: UnitOfWork, state: State, error: BaseException | None) -> str:
    """``committed``, ``failed``, ``read_only`` or ``rolled_back`` (see ``UnitOfWorkMetrics``)."""
    if state is State.COMMITTED:
        return "committed"
    if error is not None:
        return "failed"
    return "read_only" if uow.read_only else "rolled_back"


class Observer:
    """The units of work of one ``Database`` in flight, their metrics, and its shutdown."""

    def __init__(self, settings: DatabaseSettings) -> None:
        threshold = settings.slow_unit_of_work_ms
        self._slow_ns = None if threshold is None else int(threshold * 1e6)
        self.recorder = Recorder(None if threshold is None else threshold / 1000)
        self._record = settings.metrics
        self._inflight: dict[UnitOfWork, Entry] = {}
        self.tracing: Tracing | None = None
        self.closed = False
        self._counting: set[int] = set()  # ids of engines whose statements are counted
        self._drained: asyncio.Event | None = None
        self._drainer: asyncio.Task[Any] | None = None

    # -- the hot path ----------------------------------------------------------------------------

    def enter(self, uow: UnitOfWork) -> None:
        """``uow`` starts; refused with ``UnavailableError`` once the database is shut down."""
        if self.closed:
            raise UnavailableError(
                "cannot open a unit of work: the database is shutting down "
                "(Database.dispose(timeout=...) was called)"
            )
        entry = Entry(asyncio.current_task(), perf_counter_ns())
        self._inflight[uow] = entry
        if self._record:
            self.recorder.waiting += 1
        if self._counting:
            entry.token = _CURRENT.set(entry)
        if self.tracing is not None:
            entry.span = self.tracing.start(uow)

    def connected(self, uow: UnitOfWork) -> None:
        """``uow`` holds its connection now."""
        entry = self._inflight[uow]
        entry.connected = perf_counter_ns()
        if self._record:
            recorder = self.recorder
            recorder.waiting -= 1
            recorder.wait.record(entry.connected - entry.start)

    def leave(
        self, uow: UnitOfWork, state: State, error: BaseException | None
    ) -> BaseException | None:
        """``uow`` has ended (in ``state`` before it closed, by ``error`` if any). Returns the
        error to raise instead, for a unit of work a shutdown cancelled."""
        entry = self._inflight.pop(uow, None)
        if entry is None:
            return None
        elapsed = perf_counter_ns() - entry.start
        replacement = None
        if (
            entry.cancelled
            and isinstance(error, asyncio.CancelledError)
            and entry.task is not None
            and entry.task.uncancel() == 0
        ):
            # Ours alone (as asyncio.timeout does it): the caller gets an error it can answer,
            # e.g. with a 503, instead of a cancellation of its whole task.
            replacement = error = UnavailableError(
                "the database is shutting down: this unit of work outlived "
                "Database.dispose(timeout=...) and was cancelled and rolled back"
            )
        outcome = outcome_of(uow, state, error)
        if self._record:
            self._count(outcome, error, elapsed, connected=entry.connected != 0)
        if self._slow_ns is not None and elapsed > self._slow_ns:
            self._log_slow(uow, entry, elapsed, outcome, error)
        if entry.token is not None:
            with contextlib.suppress(ValueError):  # left in another context than entered
                _CURRENT.reset(entry.token)
        if self.tracing is not None and entry.span is not None:
            self.tracing.finish(entry.span, entry, outcome, error)
        if self._drained is not None and not self._others():
            self._drained.set()
        return replacement

    def _count(
        self, outcome: str, error: BaseException | None, elapsed: int, *, connected: bool
    ) -> None:
        recorder = self.recorder
        if not connected:
            recorder.waiting -= 1
        if outcome == "committed":
            recorder.committed += 1
        elif outcome == "read_only":
            recorder.read_only += 1
        elif outcome == "rolled_back":
            recorder.rolled_back += 1
        else:
            name = type(error).__name__
            recorder.failed[name] = recorder.failed.get(name, 0) + 1
        recorder.duration.record(elapsed)
        if self._slow_ns is not None and elapsed > self._slow_ns:
            recorder.slow += 1

    def _log_slow(
        self, uow: UnitOfWork, entry: Entry, elapsed: int, outcome: str, error: BaseException | None
    ) -> None:
        threshold = (self._slow_ns or 0) / 1e6
        how = outcome if error is None else f"{outcome} ({type(error).__name__})"
        # Never the statements or their parameters: only what the unit of work was and did.
        logger.warning(
            "slow unit of work: %s took %.1f ms (threshold %g ms); statements %d, "
            "connection wait %.1f ms, %s, outcome %s",
            label(uow),
            elapsed / 1e6,
            threshold,
            entry.statements,
            ((entry.connected or entry.start) - entry.start) / 1e6,
            "read-only" if uow.read_only else "read-write",
            how,
        )

    def retried(self, error: BaseException) -> None:
        """``run_in_transaction`` tries again after ``error``."""
        if self._record:
            self.recorder.retried(type(error).__name__)

    # -- statement counting, snapshots ---------------------------------------------------------

    def count_statements(self, engines: Iterable[AsyncEngine]) -> None:
        """Count each unit of work's statements on ``engines`` (for the slow log and spans)."""
        for engine in engines:
            if id(engine.sync_engine) not in self._counting:
                self._counting.add(id(engine.sync_engine))
                event.listen(engine.sync_engine, "before_cursor_execute", _count_statement)

    def snapshot(self, pools: dict[str, PoolMetrics]) -> DatabaseMetrics:
        """What ``Database.metrics()`` returns."""
        if self._record:
            return self.recorder.snapshot(pools, len(self._inflight))
        units = UnitOfWorkMetrics(in_flight=len(self._inflight))
        return DatabaseMetrics(pools, Durations(), units, {}, enabled=False)

    # -- shutdown ---------------------------------------------------------------------------------

    def _others(self) -> list[Entry]:
        """The units of work in flight in tasks other than the one shutting down."""
        drainer = self._drainer
        return [entry for entry in self._inflight.values() if entry.task is not drainer]

    async def drain(self, patience: float, grace: float) -> tuple[int, int, int]:
        """Refuse new units of work; give those in flight ``patience`` seconds to end; then cancel
        the rest and wait up to ``grace`` seconds for their rollback. Returns how many were in
        flight, how many ended by themselves, how many were cancelled."""
        self.closed = True
        self._drainer = asyncio.current_task()
        self._drained = asyncio.Event()
        in_flight = len(self._others())
        if in_flight:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(patience):
                    await self._drained.wait()
        left = self._others()
        tasks = {entry.task for entry in left if entry.task is not None}
        for entry in left:
            entry.cancelled = True
        for task in tasks:
            task.cancel("asyncdal: the database is shutting down")
        if left and self._others():
            self._drained.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    await self._drained.wait()
        stuck = len(self._others())
        if stuck:
            logger.warning(
                "shutdown: %d units of work still had not ended %g s after being cancelled; "
                "closing the pools without them",
                stuck,
                grace,
            )
        return in_flight, in_flight - len(left), len(left)


def pool_metrics(pool: Pool) -> PoolMetrics:
    """Size, checked out, idle, overflow and queued tasks of one SQLAlchemy pool."""
    if not isinstance(pool, QueuePool):
        # StaticPool (in-memory SQLite) and NullPool keep no count of checkouts.
        return PoolMetrics(size=1, checked_out=0, idle=0, overflow=0, waiting=None)
    return PoolMetrics(
        size=pool.size(),
        checked_out=pool.checkedout(),
        idle=pool.checkedin(),
        overflow=max(0, pool.overflow()),
        waiting=_queued(pool),
    )


def _queued(pool: QueuePool) -> int | None:
    # SQLAlchemy keeps no count of the tasks waiting for a connection: read the asyncio.Queue
    # its async pool waits on (created on first use). tests/service pins this, so an upgrade
    # that moves it fails there; until then it says None rather than a wrong 0.
    queue = getattr(pool, "_pool", None)
    if queue is None:
        return None
    created = vars(queue).get("_queue")
    if created is None:
        return 0 if hasattr(type(queue), "_queue") else None
    getters = getattr(created, "_getters", None)
    if getters is None:
        return None
    return sum(1 for waiter in getters if not waiter.done())


async def ping(engine: AsyncEngine, limit: float, where: str) -> float:
    """``SELECT 1`` on a connection of ``engine``'s pool, within ``limit`` seconds in all;
    returns the statement's round trip. A pooled connection found dead is replaced once.

    Raises:
        UnavailableError: no answer within ``limit``, refused, or the pool is exhausted.
    """
    try:
        async with asyncio.timeout(limit):
            for attempt in (1, 2):
                async with engine.connect() as connection:
                    start = perf_counter_ns()
                    try:
                        await connection.exec_driver_sql("SELECT 1")
                    except Exception:
                        if attempt == 2:
                            raise
                        # Dead before anyone knew (the server's FATAL read, its EOF not yet):
                        # never back into the pool; try once on a new connection.
                        await connection.invalidate()
                        continue
                    return (perf_counter_ns() - start) / 1e9
    except TimeoutError as error:
        raise UnavailableError(
            f"Database.ping() failed: no answer from {where} within {limit} s "
            "(connect_timeout), or no pooled connection free by then"
        ) from error
    except Exception as error:
        raise_translated(error, "Database.ping()", connecting=True)
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises
