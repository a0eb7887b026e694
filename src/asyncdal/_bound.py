"""A ``Database`` whose units of work all run on one connection, inside one outer transaction.

What ``asyncdal_db`` (the pytest plugin, :mod:`asyncdal.testing`) hands a test: SQLAlchemy's
"Joining a Session into an External Transaction" recipe. Every unit of work's session is bound to
the one connection with ``join_transaction_mode="create_savepoint"``: its transaction is a
SAVEPOINT, ``commit()`` releases it (the next unit of work of the test sees what it wrote), a
rollback or an error rolls back to it, and ``savepoint()`` nests another. The outer transaction
is rolled back when the test ends, so the next test sees none of it.

The one connection cannot serve two units of work at once: a unit of work entered while one is
open in another task is refused at once (waiting could deadlock, interleaving would mix their
savepoints), naming ``asyncdal_committing_db``. Units of work nested in one task are allowed as
they are outside tests (on SQLite, a writer inside a writer is refused as the write queue does).
"""

from __future__ import annotations

import asyncio
from typing import Any, TypeVar

from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, SessionTransaction

from ._nodes import _ReadOnlySession
from ._observer import Observer
from ._writelock import WriteLock
from .database import Database
from .errors import UnitOfWorkStateError
from .settings import DatabaseSettings
from .uow import UnitOfWork

U = TypeVar("U", bound=UnitOfWork)
D = TypeVar("D", bound=Database[Any])

CONCURRENT_HINT = (
    "asyncdal_db runs every unit of work of a test on one connection, inside one transaction "
    "that is rolled back afterwards; use the asyncdal_committing_db fixture for a test that "
    "needs several connections at once (concurrent tasks, locking)"
)


def _roll_back_instead(session: Session) -> bool:
    """Close ``session`` (rolling back its savepoint); False when even that fails."""
    try:
        session.close()
    except Exception:
        return False
    return True


class _BoundSession(Session):
    """A read-write unit of work's session on the test's connection.

    A unit of work invalidates its session when closing it fails or after a failed read-only
    statement, so that the pool replaces the connection; here that would end the test's outer
    transaction. Rolling back the unit of work's savepoint is what the pool's reset would do.
    """

    def invalidate(self) -> None:
        if not _roll_back_instead(self):
            super().invalidate()  # the connection is really gone


class _BoundReadOnlySession(_ReadOnlySession):
    """A read-only unit of work's session on the test's connection.

    On PostgreSQL its savepoint runs ``SET TRANSACTION READ ONLY``, so the server refuses a write
    in it as it does outside tests (there read-only units of work run on connections that default
    to read-only). The server restores the test's read-write state when the savepoint ends,
    released or rolled back.
    """

    def invalidate(self) -> None:
        if not _roll_back_instead(self):
            super().invalidate()


@event.listens_for(_BoundReadOnlySession, "after_begin")
def _read_only_savepoint(
    session: Session, _transaction: SessionTransaction, connection: Connection
) -> None:
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql("SET TRANSACTION READ ONLY")


class _OneConnection:
    """Who holds the test's connection: the open units of work, all of one task."""

    def __init__(self, connection: AsyncConnection, backend: str) -> None:
        self.connection = connection
        self.loop = asyncio.get_running_loop()
        self.sqlite = backend == "sqlite"
        self.owner: asyncio.Task[Any] | None = None
        self.open: list[bool] = []  # read_only of each open unit of work, outermost first

    def enter(self, read_only: bool) -> None:
        if asyncio.get_running_loop() is not self.loop:
            raise UnitOfWorkStateError(
                "cannot open a unit of work: asyncdal_db was set up on another event loop than "
                "this one (a fixture on a wider loop scope than the test?); give the fixtures "
                "that use it the test's loop scope (asyncio_default_fixture_loop_scope, or "
                "@pytest_asyncio.fixture(loop_scope=...))"
            )
        if self.connection.closed or self.connection.invalidated:
            raise UnitOfWorkStateError(
                "cannot open a unit of work: this test's connection was lost or invalidated (a "
                "unit of work cancelled mid-statement, e.g. by timeout=, takes the connection "
                f"with it); {CONCURRENT_HINT}"
            )
        task = asyncio.current_task()
        if self.open and self.owner is not task:
            raise UnitOfWorkStateError(
                "cannot open a unit of work while another one is open in another task: "
                f"{CONCURRENT_HINT}"
            )
        if self.sqlite and not read_only and not all(self.open):
            raise UnitOfWorkStateError(
                "cannot open a writing unit of work inside another one in the same task: "
                "SQLite has one writer at a time, so the inner one would wait for the outer forever"
            )
        self.owner = task
        self.open.append(read_only)

    def leave(self) -> None:
        self.open.pop()
        if not self.open:
            self.owner = None


class _Turn(WriteLock):
    """What a unit of work takes on entry and gives back on exit (its ``write_lock`` slot)."""

    def __init__(self, holder: _OneConnection, read_only: bool) -> None:
        super().__init__(timeout=0)
        self._holder = holder
        self._read_only = read_only

    @property
    def locked(self) -> bool:
        return bool(self._holder.open)

    async def acquire(self) -> None:
        self._holder.enter(self._read_only)

    def release(self) -> None:
        self._holder.leave()


def view(base: Database[U], cls: type[D]) -> D:
    """A ``cls`` sharing everything of ``base`` (engine, pools, settings) but its own record of
    units of work: ``metrics()`` counts this test's, and ``dispose(timeout=)`` shuts down this
    view for good, not ``base``, which the next test gets (it reconnects on demand)."""
    made: D = cls.__new__(cls)
    made.__dict__.update(base.__dict__)  # what other code adds to a Database comes along
    observer = Observer(base.settings)
    observer.tracing = base._observer.tracing
    made._observer = observer
    return made


class BoundDatabase(Database[U]):
    """``base``'s units of work, each a savepoint on ``connection`` (already in a transaction).

    Shares ``base``'s engine, settings and unit-of-work class; built with :meth:`bind`, not
    ``__init__``. Not for production code: see :mod:`asyncdal.testing`.
    """

    _holder: _OneConnection
    _bound_writers: async_sessionmaker[AsyncSession]
    _bound_readers: async_sessionmaker[AsyncSession]

    @classmethod
    def bind(cls, base: Database[U], connection: AsyncConnection) -> BoundDatabase[U]:
        """A view of ``base`` on ``connection``; call inside the test's running event loop."""
        bound: BoundDatabase[U] = view(base, cls)
        bound._router = None  # no replicas inside a test: one connection serves every read
        bound._share_lock_with_readers = True  # read-only units of work take turns too
        bound._holder = _OneConnection(connection, base.backend)
        common: dict[str, Any] = {
            "bind": connection,
            "expire_on_commit": False,
            "join_transaction_mode": "create_savepoint",
        }
        bound._bound_writers = async_sessionmaker(sync_session_class=_BoundSession, **common)
        bound._bound_readers = async_sessionmaker(
            sync_session_class=_BoundReadOnlySession, **common
        )
        return bound

    @property
    def connection(self) -> AsyncConnection:
        """The test's connection (inside its outer transaction)."""
        return self._holder.connection

    def unit_of_work(self, *, read_only: bool = False, **options: Any) -> U:
        # Database.unit_of_work() hands its _write_lock to the unit of work it builds, and
        # builds it before returning: no other task can run in between.
        self._write_lock = _Turn(self._holder, read_only)
        return super().unit_of_work(read_only=read_only, **options)

    async def dispose(self, *, timeout: float | None = None) -> None:  # noqa: ASYNC109 - as Database's
        """With ``timeout``: shut this test's database down (new units of work refused, those in
        flight drained). The pool is the fixture's, and the test's connection stays checked out
        until the test ends: disposing the engine would orphan it, so that is left to the fixture.
        """
        if timeout is not None:
            await self._observer.drain(timeout, self.settings.connect_timeout)

    def _factory(
        self, read_only: bool, isolation_level: str | None
    ) -> async_sessionmaker[AsyncSession]:
        # Validates isolation_level as outside tests. The level itself cannot change inside the
        # outer transaction, and needs none: with one connection nothing runs concurrently.
        super()._factory(read_only, isolation_level)
        return self._bound_readers if read_only else self._bound_writers

    def __repr__(self) -> str:
        return f"<BoundDatabase {self.url} unit_of_work={self._uow_class.__name__}>"


class LoopCheckedDatabase(Database[U]):
    """A ``Database`` that refuses a unit of work on another event loop than its own (where
    its pool's connections belong) with ``refusal``, not "attached to a different loop"."""

    def __init__(self, settings: DatabaseSettings, *, unit_of_work: type[U], refusal: str) -> None:
        super().__init__(settings, unit_of_work=unit_of_work)
        self._loop = asyncio.get_running_loop()
        self._refusal = refusal

    def unit_of_work(self, *, read_only: bool = False, **options: Any) -> U:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:  # built outside a loop, entered later: nothing to check yet
            running = self._loop
        if running is not self._loop:
            raise UnitOfWorkStateError(self._refusal)
        return super().unit_of_work(read_only=read_only, **options)
