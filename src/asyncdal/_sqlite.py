"""One hop to aiosqlite's worker thread per statement, instead of four or five.

aiosqlite runs each sqlite3 call in a worker thread; every call is a queue hand-off there and a
wake-up of the event loop back. SQLAlchemy's aiosqlite adapter makes four such calls per
statement (open a cursor, execute, fetch, close) and one more for the ROLLBACK that resets a
connection returned to the pool, even when no transaction is open. Under load those hand-offs
cost more than the SQL itself. This adapter runs cursor, execute, fetch and close as one function
in the worker thread, notes there whether a transaction is open, and skips COMMIT or ROLLBACK
hops when none is.

It relies on ``aiosqlite.Connection._execute()``, which every public aiosqlite method is built on
but which is not itself public: :func:`one_hop_dbapi` returns ``None`` when it is missing, and the
engine then keeps SQLAlchemy's stock adapter.
"""

from __future__ import annotations

import asyncio
import collections
import sqlite3
from collections.abc import Callable, Sequence
from threading import Thread
from typing import Any

import aiosqlite
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
)
from sqlalchemy.util import EMPTY_DICT
from sqlalchemy.util.concurrency import await_

_Outcome = tuple[Any, list[Any], int, int | None, bool]
_Work = Callable[[aiosqlite.Connection, str, Any], _Outcome]


def _run_statement(connection: aiosqlite.Connection, operation: str, parameters: Any) -> _Outcome:
    """Runs in the worker thread: the whole statement, start to finish."""
    raw: sqlite3.Connection = connection._conn
    cursor = raw.cursor()
    try:
        if parameters is None:
            cursor.execute(operation)
        else:
            cursor.execute(operation, parameters)
        description = cursor.description
        rows = cursor.fetchall() if description else []
        return description, rows, cursor.rowcount, cursor.lastrowid, raw.in_transaction
    finally:
        cursor.close()


def _run_many(connection: aiosqlite.Connection, operation: str, parameters: Any) -> _Outcome:
    raw: sqlite3.Connection = connection._conn
    cursor = raw.cursor()
    try:
        cursor.executemany(operation, parameters)
        return None, [], cursor.rowcount, cursor.lastrowid, raw.in_transaction
    finally:
        cursor.close()


class OneHopCursor(AsyncAdapt_aiosqlite_cursor):
    """A buffered cursor whose every statement is one call into the worker thread."""

    __slots__ = ("_description", "_lastrowid", "_rowcount")

    def __init__(self, adapt_connection: OneHopConnection) -> None:  # no cursor opened here
        self._adapt_connection = adapt_connection
        self._connection = adapt_connection._connection
        self._soft_closed_memoized = EMPTY_DICT
        self._rows = collections.deque()
        self._description: Any = None
        self._rowcount = -1
        self._lastrowid: int | None = None

    @property
    def description(self) -> Any:
        return self._description

    @property
    def rowcount(self) -> int:
        return self._rowcount

    @property
    def lastrowid(self) -> int:
        return self._lastrowid  # type: ignore[return-value]  # DBAPI allows None here

    @property
    def arraysize(self) -> int:
        return 1

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        pass

    async def _async_soft_close(self) -> None:
        return None

    def close(self) -> None:
        self._rows.clear()

    async def _hop(self, work: _Work, operation: str, params: Any) -> None:
        """Run ``work`` in the worker thread, then keep what it reports."""
        adapt = self._adapt_connection
        assert isinstance(adapt, OneHopConnection)
        connection: aiosqlite.Connection = self._connection  # type: ignore[assignment]
        async with adapt._execute_mutex:
            adapt._in_transaction = True  # unknown until the statement reports back
            outcome: _Outcome = await connection._execute(  # type: ignore[no-untyped-call]  # unannotated
                work, connection, operation, params
            )
        self._description, rows, self._rowcount, self._lastrowid, adapt._in_transaction = outcome
        self._rows = collections.deque(rows)

    async def _execute_async(self, operation: Any, parameters: Any) -> Any:
        await self._hop(_run_statement, operation, parameters)

    async def _executemany_async(self, operation: Any, seq_of_parameters: Sequence[Any]) -> Any:
        await self._hop(_run_many, operation, seq_of_parameters)


class OneHopConnection(AsyncAdapt_aiosqlite_connection):
    """Skips the COMMIT/ROLLBACK hop when the worker thread reported no open transaction."""

    __slots__ = ("_closing", "_in_transaction")
    # The base declares exactly its own cursor class; ours is a subclass of it.
    _cursor_cls = OneHopCursor  # type: ignore[assignment]

    def __init__(self, dbapi: Any, connection: Any) -> None:
        super().__init__(dbapi, connection)
        self._in_transaction = True  # unknown: assume open until a statement reports back
        self._closing = False

    async def _terminate_graceful_close(self) -> None:
        self._closing = True
        await super()._terminate_graceful_close()

    def _terminate_force_close(self) -> None:
        # SQLAlchemy's terminate() runs the close above shielded, and force-closes when its
        # caller is cancelled meanwhile. aiosqlite's forced stop() cannot overtake the close
        # (both queue for the worker thread) but ends the thread before the close's own stop(),
        # which then waits forever: "Task was destroyed but it is pending!". A close under way
        # closes the sqlite3 connection and stops the thread by itself, cancelled or not.
        if not self._closing:
            super()._terminate_force_close()

    def rollback(self) -> None:
        if self._in_transaction:
            super().rollback()
            self._in_transaction = False

    def commit(self) -> None:
        if self._in_transaction:
            super().commit()
            self._in_transaction = False


async def _open(connection: aiosqlite.Connection) -> aiosqlite.Connection:
    """Open ``connection``; if the caller is cancelled meanwhile, still close what it opens.

    aiosqlite's own open (``await connection``) hands the connect to the worker thread and,
    when the awaiting task is cancelled, stops the thread without ever learning of the sqlite3
    connection the thread goes on to open: that connection is dropped unclosed (aiosqlite
    issue 259; Python 3.13 reports it as "ResourceWarning: unclosed database"). So the open
    runs in a task of its own that no cancellation reaches, and when it completes after its
    caller gave up, the connection is closed and its thread stopped.
    """
    opening = asyncio.ensure_future(connection)
    try:
        return await asyncio.shield(opening)
    except asyncio.CancelledError:
        opening.add_done_callback(_close_abandoned)
        raise


def _close_abandoned(opening: asyncio.Future[aiosqlite.Connection]) -> None:
    if opening.cancelled() or opening.exception() is not None:
        return  # nothing was opened (aiosqlite stops its thread itself then)
    opening.result().stop()  # closes the sqlite3 connection in its thread, then ends the thread


class OneHopDBAPI(AsyncAdapt_aiosqlite_dbapi):
    """The aiosqlite DBAPI shim, handing out :class:`OneHopConnection`."""

    def connect(self, *arg: Any, **kw: Any) -> OneHopConnection:
        creator_fn = kw.pop("async_creator_fn", None)
        connection = creator_fn(*arg, **kw) if creator_fn else self.aiosqlite.connect(*arg, **kw)
        # The worker thread must not keep the process alive (SQLAlchemy does the same).
        thread = connection if isinstance(connection, Thread) else connection._thread
        thread.daemon = True
        return OneHopConnection(self, await_(_open(connection)))


def one_hop_dbapi() -> OneHopDBAPI | None:
    """The one-hop shim, or ``None`` when this aiosqlite lacks the hook it needs."""
    if not callable(getattr(aiosqlite.Connection, "_execute", None)):
        return None
    return OneHopDBAPI(aiosqlite, sqlite3)
