"""``UnitOfWork``: one ``AsyncSession``, one transaction, always closed.

A unit of work is **not safe to share between tasks**: like the ``AsyncSession`` inside it, it
belongs to the task that entered it. Run concurrent work in separate units of work.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Self, TypeVar, overload

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from . import _fastpath
from ._cleanup import driver_closed, driver_of, run_hooks, shielded
from ._pgconnection import COMMIT_POSITION
from .errors import (
    CommitOutcomeUnknownError,
    ConnectionLostError,
    InvalidQueryError,
    QueryTimeoutError,
    UnitOfWorkStateError,
    translate,
)
from .repository import Repository

if TYPE_CHECKING:
    from ._observer import Observer
    from ._writelock import WriteLock

#: The commit token of a commit that needs no replica to catch up (no replicas, SQLite).
NO_TOKEN: Final = "0/0"

M = TypeVar("M")
R = TypeVar("R", bound=Repository[Any])
T = TypeVar("T")


class State(enum.Enum):
    """Where a unit of work is in its life."""

    NEW = "new"
    ACTIVE = "active"
    COMMITTED = "committed"
    ROLLED_BACK = "rolled back"
    CLOSED = "closed"


class UnitOfWork:
    """One transaction over one ``AsyncSession``; hands out repositories bound to it.

    Leaving without ``commit()`` rolls back; an exception rolls back and propagates; the session
    is closed and its connection returned to the pool in every case, cancellation included.
    After ``commit()`` or ``rollback()`` the unit of work is finished: open a new one for more.

    Subclass it to name your repositories (see ``asyncdal.users.UserUnitOfWork``); subclasses
    keep this constructor, since ``Database.unit_of_work()`` builds them.

    Raises:
        UnitOfWorkStateError: a call its state forbids (used after it ended, a write in a
            read-only unit of work, entered twice).

    Example:
        >>> async with db.unit_of_work() as uow:  # doctest: +SKIP
        ...     await uow.repository(User).add(User(name="Ann", age=30))
        ...     await uow.commit()
    """

    #: ``(fn, attempt)`` when ``run_in_transaction`` runs this one: for the slow log and spans.
    _attempt: tuple[object, int] | None = None

    def __init__(
        self,
        session_factory: async_sessionmaker[AsyncSession],
        *,
        read_only: bool = False,
        write_lock: WriteLock | None = None,
        timeout: float | None = None,
        opener: Callable[[], Awaitable[AsyncSession]] | None = None,
        observer: Observer | None = None,
        fast_paths: bool = True,
    ) -> None:
        if timeout is not None and timeout <= 0:
            raise InvalidQueryError(f"timeout must be > 0 seconds or None, got {timeout!r}")
        self._factory = session_factory
        self._read_only = read_only
        self._write_lock = write_lock
        self._holds_lock = False
        self._savepoints = 0
        self._timeout = timeout
        self._timeout_cm: asyncio.Timeout | None = None
        self._session: AsyncSession | None = None
        self._state = State.NEW
        self._repositories: dict[type[Any], Repository[Any]] = {}
        self._statement_failed = False
        self._on_commit: list[Callable[[], object]] = []
        # Routing (replicas): picks the node and checks the connection out, opening the session
        # on another node when one fails before any statement of this unit of work has run.
        self._opener = opener
        self._commit_token: str | None = None
        # The Database's metrics, shutdown and tracing (asyncdal._observer); None when built alone.
        self._observer = observer
        # Never in a read-only unit of work: its session must refuse to flush, and the fast
        # paths write without flushing.
        self._fast_paths = fast_paths and _fastpath.AVAILABLE and not read_only

    @property
    def read_only(self) -> bool:
        """True when this unit of work refuses writes."""
        return self._read_only

    @property
    def commit_token(self) -> str | None:
        """After ``commit()``: the primary's WAL position once this commit is in (opaque).

        Pass it as ``db.unit_of_work(read_only=True, after=token)`` to read your own writes
        from a replica. ``None`` until committed; without replicas it exists and ``after=`` is
        a no-op.
        """
        return self._commit_token

    @property
    def state(self) -> State:
        """The current state: new, active, committed, rolled back or closed."""
        return self._state

    @property
    def session(self) -> AsyncSession:
        """The ``AsyncSession``: the escape hatch for what repositories do not cover.

        Raises:
            UnitOfWorkStateError: the unit of work is not active.
        """
        return self._require_active("UnitOfWork.session")

    def _require_active(self, operation: str) -> AsyncSession:
        if self._state is not State.ACTIVE or self._session is None:
            raise UnitOfWorkStateError(
                f"cannot call {operation}: the unit of work is {self._describe_state()}"
            )
        return self._session

    def _require_writable(self, operation: str) -> AsyncSession:
        session = self._require_active(operation)
        if self._read_only:
            raise UnitOfWorkStateError(f"cannot call {operation}: the unit of work is read-only")
        return session

    def _describe_state(self) -> str:
        if self._state is State.NEW:
            return "not entered yet (use `async with`)"
        if self._state is State.CLOSED:
            return "closed: it has ended"
        return f"{self._state.value}: it has ended"

    async def __aenter__(self) -> Self:
        if self._state is not State.NEW:
            raise UnitOfWorkStateError(
                f"cannot enter the unit of work: it is {self._describe_state()}"
            )
        observer = self._observer
        if observer is not None:
            observer.enter(self)  # UnavailableError once the database is shutting down
        if self._timeout is not None:
            self._timeout_cm = asyncio.timeout(self._timeout)
            await self._timeout_cm.__aenter__()
        try:
            if self._write_lock is not None:
                await self._write_lock.acquire()
                self._holds_lock = True
            if self._opener is not None:
                opened = self._run("UnitOfWork.__aenter__", self._opener(), connecting=True)
                self._session = await opened
                self._state = State.ACTIVE
            else:
                self._session = self._factory()
                self._state = State.ACTIVE
                # Check out the connection now, so an unreachable database fails here, at the
                # `async with`, as UnavailableError, and a SQLite writer begins right away.
                connecting = self._session.connection()
                await self._run("UnitOfWork.__aenter__", connecting, connecting=True)
            if observer is not None:
                observer.connected(self)
        except BaseException as error:
            try:
                await self._shielded_close(rollback=False)
                await self._leave_timeout(type(error), error, error.__traceback__)
            except BaseException as final:
                self._observed(State.NEW, final)
                raise
            self._observed(State.NEW, error)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        state = self._state
        try:
            try:
                await self._shielded_close(rollback=self._state is State.ACTIVE)
            except asyncio.CancelledError as cancelled:
                # Cancelled during cleanup (e.g. our own timeout firing): still leave the timeout.
                await self._leave_timeout(type(cancelled), cancelled, cancelled.__traceback__)
                raise
            await self._leave_timeout(exc_type, exc, tb)
        except BaseException as error:
            self._observed(state, error)
            raise
        self._observed(state, exc)

    def _observed(self, state: State, error: BaseException | None) -> None:
        """Tell the observer this unit of work has ended; raise what it says to raise instead
        (``UnavailableError`` for one that a shutdown cancelled)."""
        if self._observer is not None:
            replacement = self._observer.leave(self, state, error)
            if replacement is not None:
                raise replacement from error

    async def _leave_timeout(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._timeout_cm is None:
            return
        timeout_cm, self._timeout_cm = self._timeout_cm, None
        try:
            await timeout_cm.__aexit__(exc_type, exc, tb)
        except TimeoutError as error:
            raise QueryTimeoutError(
                f"the unit of work exceeded its timeout of {self._timeout} s and was rolled back"
            ) from error

    async def _shielded_close(self, *, rollback: bool) -> None:
        """Close the session (rolling back what is open) and release the write lock, also when
        the task is cancelled meanwhile."""
        if self._state is State.CLOSED:
            return
        self._state = State.CLOSED
        session, self._session = self._session, None
        try:
            if session is not None:
                # Closed directly, not in a shielded task: a task per unit of work cost ~15% of
                # a read's CPU. A cancellation arriving meanwhile is handled below.
                try:
                    await self._close(session, rollback=rollback)
                except asyncio.CancelledError:
                    # SQLAlchemy has already rolled back or invalidated the connection on its
                    # way back to the pool (a reset that fails invalidates it). Make certain the
                    # session lets go of everything, where no cancellation can reach, then give
                    # way: the caller's own CancelledError propagates untouched.
                    await shielded(session.invalidate())
                    raise
        finally:
            # Only now: the next SQLite writer must not begin before this one's transaction is
            # gone, or it would wait in SQLite's busy handler behind it.
            if self._holds_lock and self._write_lock is not None:
                self._holds_lock = False
                self._write_lock.release()
        # Let the task the pool just woke take the connection we returned. Without this yield a
        # task that opens its next unit of work at once takes it back first (the pool's queue
        # does not hand over), and the waiter goes to the back of the line: p99 at 16 tasks on
        # a pool of 10 went from 23 ms to 123 ms.
        await asyncio.sleep(0)

    async def _close(self, session: AsyncSession, *, rollback: bool) -> None:
        if rollback:
            # Detach first: a rollback expires every loaded object, and objects must stay
            # readable after the unit of work (the contract's expire_on_commit=False).
            session.expunge_all()
        if self._read_only and self._statement_failed:
            # A read-only connection runs without BEGIN, so the pool's reset on return sends
            # nothing: after asyncpg refused a parameter while binding, the server would stay
            # inside that half-sent statement, holding its locks, until the connection's next
            # use. Replace the connection instead.
            await session.invalidate()
            return
        try:
            # Closing returns the connection; the pool rolls back what is still open.
            await session.close()
        except Exception:
            # The connection is broken (lost, cancelled mid-statement): drop it from the pool
            # rather than hand it to the next unit of work.
            await session.invalidate()

    async def _run(self, operation: str, awaitable: Awaitable[T], *, connecting: bool = False) -> T:
        try:
            return await awaitable
        except Exception as error:
            self._statement_failed = True
            mapped = translate(error, operation, connecting=connecting)
            if mapped is None or mapped is error:
                raise
            if self._savepoints == 0 and self._state is State.ACTIVE:
                # After a database error the transaction cannot go on (PostgreSQL aborts it,
                # SQLAlchemy refuses the session): end the unit of work here, on both backends,
                # so the next call says so plainly instead of raising PendingRollbackError.
                self._state = State.ROLLED_BACK
            raise mapped from error

    async def commit(self) -> None:
        """Flush and commit; the unit of work is finished afterwards.

        Raises:
            ConflictError: a constraint failed while flushing or at COMMIT.
            CommitOutcomeUnknownError: the connection dropped during COMMIT; it may have applied.
            UnitOfWorkStateError: not active, or a read-only unit of work holds changes.
        """
        session = self._require_active("UnitOfWork.commit()")
        phase = "flush"

        def flush_then_commit(sync_session: Session) -> None:
            # One greenlet for both steps; the phase tells a connection lost while flushing
            # (nothing committed: retryable) from one lost during COMMIT (outcome unknown).
            nonlocal phase
            if self._fast_paths:
                _fastpath.flush(sync_session)  # column-only UPDATEs without the flush's machinery
            else:
                sync_session.flush()
            driver = driver_of(sync_session)
            if not driver_closed(driver):
                # A connection the server already closed cannot have sent COMMIT: that failure
                # stays a plain (retryable) lost connection.
                phase = "commit"
            sync_session.commit()
            # Left by asyncdal's asyncpg connection at COMMIT when replicas are configured.
            # Read at once: the connection went back to the pool inside commit(), but no other
            # task can run before this line.
            self._commit_token = getattr(driver, COMMIT_POSITION, None) or NO_TOKEN

        try:
            await self._run("UnitOfWork.commit()", session.run_sync(flush_then_commit))
        except ConnectionLostError as error:
            self._state = State.ROLLED_BACK
            if phase == "flush":
                raise
            raise CommitOutcomeUnknownError(
                "UnitOfWork.commit() failed: the connection was lost during COMMIT, "
                "so the transaction may or may not have been applied"
            ) from error
        except BaseException:
            # A failed or cancelled COMMIT ends the transaction: nothing more can be done in it.
            self._state = State.ROLLED_BACK
            self._on_commit.clear()
            raise
        self._state = State.COMMITTED
        if self._on_commit:
            hooks, self._on_commit = self._on_commit, []
            # Hand back the connection and SQLite's write lock first: a hook may open a new
            # (writing) unit of work, which would otherwise wait for this one forever.
            await self._shielded_close(rollback=False)
            self._state = State.COMMITTED
            await run_hooks(hooks)

    def on_commit(self, fn: Callable[[], object]) -> None:
        """Run ``fn()`` (a plain or async callable) after this unit of work commits.

        Hooks run in registration order, once, only after a successful COMMIT: never after a
        rollback, a failed commit or a cancellation (under ``run_in_transaction`` only the
        attempt that commits runs its hooks). They run after the connection and SQLite's write
        lock are released, so a hook may open a new unit of work, a writing one included. A
        hook that raises is logged (logger ``"asyncdal"``, with the hook's name) and the rest
        still run; ``commit()`` does not raise for it: the transaction has committed.

        Raises:
            UnitOfWorkStateError: the unit of work is not active.
            InvalidQueryError: ``fn`` is not callable.

        Example:
            >>> uow.on_commit(lambda: print("saved"))  # doctest: +SKIP
        """
        self._require_active("UnitOfWork.on_commit()")
        if not callable(fn):
            raise InvalidQueryError(f"on_commit takes a callable, got {type(fn).__name__}")
        self._on_commit.append(fn)

    async def rollback(self) -> None:
        """Discard everything done in this unit of work; it is finished afterwards."""
        session = self._require_active("UnitOfWork.rollback()")
        self._state = State.ROLLED_BACK
        session.expunge_all()  # keep loaded objects readable: a rollback would expire them
        await self._run("UnitOfWork.rollback()", session.rollback())

    @asynccontextmanager
    async def savepoint(self) -> AsyncIterator[None]:
        """A nested transaction: an exception inside rolls back to the savepoint and propagates.

        Example:
            >>> async with uow.savepoint():  # doctest: +SKIP
            ...     await uow.users.add(User(name="maybe", age=1))
        """
        session = self._require_active("UnitOfWork.savepoint()")
        nested = await self._run("UnitOfWork.savepoint()", session.begin_nested())
        self._savepoints += 1
        try:
            yield
        except BaseException:
            # Also after a failed flush inside, which already marked the savepoint inactive:
            # ROLLBACK TO SAVEPOINT must still run for the outer transaction to go on.
            self._savepoints -= 1
            await self._run("UnitOfWork.savepoint()", nested.rollback())
            raise
        self._savepoints -= 1
        if nested.is_active:
            await self._run("UnitOfWork.savepoint()", nested.commit())

    @overload
    def repository(self, model_or_repository: type[R]) -> R: ...
    @overload
    def repository(self, model_or_repository: type[M]) -> Repository[M]: ...
    def repository(self, model_or_repository: type[Any]) -> Repository[Any]:
        """The repository for a mapped class, or an instance of a ``Repository`` subclass.

        Repeated calls return the same object. Raises ``InvalidQueryError`` for an unmapped class.
        """
        cached = self._repositories.get(model_or_repository)
        if cached is not None:
            return cached
        if isinstance(model_or_repository, type) and issubclass(model_or_repository, Repository):
            repo: Repository[Any] = model_or_repository(self)
        else:
            repo = Repository.for_model(model_or_repository, self)
        self._repositories[model_or_repository] = repo
        return repo

    async def execute(self, operation: str, fn: Callable[[AsyncSession], Awaitable[T]]) -> T:
        """Run ``fn(session)`` with this unit of work's error translation (for repositories)."""
        session = self._require_active(operation)
        return await self._run(operation, fn(session))

    def __repr__(self) -> str:
        mode = "read-only" if self._read_only else "read-write"
        return f"<{type(self).__name__} {mode} {self._state.value}>"
