"""Routing: which PostgreSQL node a read-only unit of work runs on.

``Database`` builds one :class:`Node` per server (the primary, then each replica, each with its
own engine and pool) and, when there are replicas, a :class:`Router` over them. It keeps handing
out units of work without knowing how a node was chosen: a routed unit of work gets an *opener*,
a coroutine that picks a node, checks a connection out of its pool and returns the session.

Rules (the README's "Scaling out" section states them for users):

- read-only units of work go round robin to replicas that are up and lag the primary by at most
  ``replica_max_lag_bytes`` of WAL; everything else runs on the primary;
- a replica that fails at checkout (refused, dropped, hanging past ``connect_timeout``) is taken
  out of rotation for ``replica_retry_after`` seconds and the unit of work is opened on another
  node, before any statement of it reached user code; it comes back once a health check passes;
- ``after=token`` runs on a replica that has replayed at least that far, verified on the very
  connection the unit of work gets, waiting up to ``read_your_writes_timeout``, else on the
  primary;
- with no replica left, reads go to the primary (``replica_fallback="primary"``) or raise
  :class:`~asyncdal.errors.UnavailableError` (``"raise"``).

Lag and health are measured off the hot path by one background task per ``Database``: every
``replica_check_interval`` seconds it reads each replica's ``pg_last_wal_replay_lsn()`` and then
the primary's ``pg_current_wal_lsn()`` (in that order, so the lag is never under-estimated).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
from collections.abc import Awaitable, Callable, Iterator
from contextvars import ContextVar
from typing import Any, Final

from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from ._cleanup import shielded
from ._nodes import Node
from .errors import ConnectionLostError, InvalidQueryError, UnavailableError, classify
from .settings import DatabaseSettings

logger = logging.getLogger("asyncdal")

_REPLAY = text("SELECT pg_last_wal_replay_lsn()::text")
_CURRENT = text("SELECT pg_current_wal_lsn()::text")
_FIRST_POLL: Final = 0.005  # seconds between read-your-writes checks, doubling up to _LAST_POLL
_LAST_POLL: Final = 0.05
_PINNED: ContextVar[frozenset[object]] = ContextVar("asyncdal_pinned", default=frozenset())


def parse_position(token: str) -> int:
    """A WAL position (``pg_lsn`` text such as ``"0/16B3748"``) as an integer.

    Raises:
        InvalidQueryError: ``token`` is not a commit token.
    """
    high, slash, low = token.partition("/") if isinstance(token, str) else ("", "", "")
    try:
        if slash and 0 < len(high) <= 8 and 0 < len(low) <= 8:
            return int(high, 16) << 32 | int(low, 16)
    except ValueError:
        pass
    raise InvalidQueryError(
        f"after must be a commit_token (a WAL position like '0/16B3748'), got {token!r}"
    )


@contextlib.contextmanager
def pin(owner: object) -> Iterator[None]:
    """Within the block (and the tasks it starts), ``pinned(owner)`` is true."""
    reset = _PINNED.set(_PINNED.get() | {owner})
    try:
        yield
    finally:
        _PINNED.reset(reset)


def pinned(owner: object) -> bool:
    """Whether the current context is inside ``pin(owner)``."""
    return owner in _PINNED.get()


class Router:
    """Chooses the node for each routed read-only unit of work; watches replica lag and health."""

    def __init__(self, settings: DatabaseSettings, primary: Node, replicas: list[Node]) -> None:
        self._settings = settings
        self.primary = primary
        self.replicas = replicas
        self._turn = itertools.count()
        self._monitor: asyncio.Task[None] | None = None

    def opener(
        self, after: int | None, isolation_level: str | None
    ) -> Callable[[], Awaitable[AsyncSession]]:
        """The coroutine function a routed unit of work calls in ``__aenter__``."""
        return functools.partial(self.open_read, after, isolation_level)

    async def open_read(self, after: int | None, isolation_level: str | None) -> AsyncSession:
        """A read-only session with its connection checked out, on the node the rules pick."""
        self._ensure_monitor()
        if after is not None:
            return await self._open_after(after, isolation_level)
        for node in self._in_turn(self._eligible):
            session = await self._checkout(node, isolation_level)
            if session is not None:
                return session
        return await self._fallback(isolation_level)

    def _eligible(self, node: Node) -> bool:
        lag = node.lag_bytes
        return not node.down and (lag is None or lag <= self._settings.replica_max_lag_bytes)

    def _in_turn(self, keep: Callable[[Node], bool]) -> Iterator[Node]:
        """The replicas ``keep`` accepts, starting at the next in round-robin order, each once
        (checked again just before it is tried: another task may have marked it down)."""
        chosen = [node for node in self.replicas if keep(node)]
        if not chosen:
            return
        start = next(self._turn) % len(chosen)
        for node in chosen[start:] + chosen[:start]:
            if keep(node):
                yield node

    async def _checkout(self, node: Node, isolation_level: str | None) -> AsyncSession | None:
        """A session on ``node`` with its connection checked out, or None when the node failed
        (it is then marked down)."""
        session = node.read_sessions(isolation_level)()
        try:
            await session.connection()
        except BaseException as error:
            await self._give_up(node, session, error)
            return None
        return session

    async def _give_up(self, node: Node, session: AsyncSession, error: BaseException) -> None:
        """Close ``session``; then mark ``node`` down when it failed, else re-raise ``error``
        (a cancellation, a bug, the pool's own timeout)."""
        await shielded(session.close())
        if not (isinstance(error, Exception) and _node_failure(error)):
            raise error
        node.mark_down(error, self._settings.replica_retry_after)

    async def _open_after(self, after: int, isolation_level: str | None) -> AsyncSession:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._settings.read_your_writes_timeout
        pause = _FIRST_POLL
        while True:
            up = list(self._in_turn(lambda node: not node.down))
            if not up:
                return await self._fallback(isolation_level)
            # Try first the replicas last seen far enough along (the order is still round robin
            # within each group); every one is verified on its own connection all the same.
            up.sort(key=lambda node: node.replay is None or node.replay < after)
            for node in up:
                session = await self._checkout(node, isolation_level)
                if session is not None and await self._replayed(node, session, after):
                    return session
            remaining = deadline - loop.time()
            if remaining <= 0:
                return await self._checkout_primary(isolation_level)
            await asyncio.sleep(min(pause, remaining))
            pause = min(pause * 2, _LAST_POLL)

    async def _replayed(self, node: Node, session: AsyncSession, after: int) -> bool:
        """Whether ``node`` has replayed up to ``after``, asked on ``session``'s connection: replay
        only moves forward while that connection lives, so every later read on it sees the
        commit. Closes the session when the answer is no."""
        try:
            found = await session.scalar(_REPLAY)
        except BaseException as error:
            await self._give_up(node, session, error)
            return False
        position = None if found is None else parse_position(found)
        if position is not None and position >= after:
            node.replay = max(position, node.replay or 0)
            return True
        await shielded(session.close())
        return False

    async def _fallback(self, isolation_level: str | None) -> AsyncSession:
        if self._settings.replica_fallback == "raise":
            states = ", ".join(
                f"{node.name}: {'down' if node.down else f'{node.lag_bytes} bytes behind'}"
                for node in self.replicas
            )
            raise UnavailableError(
                f"no replica can take a read-only unit of work ({states}) "
                "and replica_fallback is 'raise'"
            )
        return await self._checkout_primary(isolation_level)

    async def _checkout_primary(self, isolation_level: str | None) -> AsyncSession:
        session = self.primary.read_sessions(isolation_level)()
        try:
            await session.connection()
        except BaseException:
            await shielded(session.close())
            raise
        return session

    # -- the background health and lag check ---------------------------------------------------

    def _ensure_monitor(self) -> None:
        task = self._monitor
        loop = asyncio.get_running_loop()
        if task is None or task.done() or task.get_loop() is not loop:
            self._monitor = loop.create_task(self._watch(), name="asyncdal replica monitor")

    async def close(self) -> None:
        """Stop the background check and wait until it has let go of its connections."""
        task, self._monitor = self._monitor, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait([task])

    async def _watch(self) -> None:
        while True:
            try:
                await self.check()
            except Exception:  # a bug must not stop the checks: log it and go on
                logger.exception("replica health check failed")
            await asyncio.sleep(self._settings.replica_check_interval)

    async def check(self) -> None:
        """Measure every replica's replay position and lag once (the background task's round).

        A replica that is down is probed again only once its ``replica_retry_after`` is over;
        a probe that fails or takes longer than ``connect_timeout`` marks it down.
        """
        now = asyncio.get_running_loop().time()
        due = [node for node in self.replicas if not node.down or now >= node.down_until]
        replays = await asyncio.gather(*(self._probe(node, _REPLAY) for node in due))
        current = await self._probe(self.primary, _CURRENT)
        primary_position = current if isinstance(current, int) else None
        for node, found in zip(due, replays, strict=True):
            if isinstance(found, int):
                node.down = False
                node.replay = max(found, node.replay or 0)
                if primary_position is not None:
                    node.lag_bytes = max(0, primary_position - found)
            else:
                node.mark_down(found, self._settings.replica_retry_after)

    async def _probe(self, node: Node, query: Any) -> int | BaseException | str:
        """The position ``query`` reads on ``node``, or why it could not.

        A pooled connection can be dead without the pool knowing yet (the server's FATAL read,
        its EOF not yet): a failure is tried again once, on a new connection, so that only the
        node's own failure takes it out of rotation. A hang is not tried twice.
        """
        try:
            return await self._probe_once(node, query)
        except TimeoutError as error:
            return error
        except Exception:
            pass
        try:
            return await self._probe_once(node, query)
        except Exception as error:
            if isinstance(error, TimeoutError) or _node_failure(error):
                return error
            raise

    async def _probe_once(self, node: Node, query: Any) -> int | str:
        async with (
            asyncio.timeout(self._settings.connect_timeout),
            node.read_engine.connect() as connection,
        ):
            try:
                found = await connection.scalar(query)
            except Exception:
                await connection.invalidate()  # never back into the pool
                raise
        if found is None:
            return "pg_last_wal_replay_lsn() is null: the server is not a standby"
        return parse_position(found)


def _node_failure(error: BaseException) -> bool:
    """The node (not the statement) failed: refused, dropped, timed out connecting. A full pool
    of our own is not the node's fault (``sqlalchemy.exc.TimeoutError``)."""
    if isinstance(error, sa_exc.TimeoutError):
        return False
    mapped = classify(error, connecting=True)
    return mapped is not None and issubclass(mapped, UnavailableError | ConnectionLostError)
