"""Nodes: one per PostgreSQL server (the primary, each replica), each with its own engine and
pool, and the session factories units of work draw from.

``Database`` builds them; :mod:`asyncdal.routing` chooses among them.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session
from sqlalchemy.pool import Pool

from .engine import READER, create_engine
from .errors import UnitOfWorkStateError, translate
from .settings import DatabaseSettings, mask_url

logger = logging.getLogger("asyncdal")


class _ReadOnlySession(Session):
    """A session that refuses to flush changes: what read-only units of work use."""

    def flush(self, objects: Any = None) -> None:
        if self.new or self.deleted or any(self.is_modified(obj) for obj in self.dirty):
            raise UnitOfWorkStateError(
                "cannot flush: the unit of work is read-only "
                "(open one with read_only=False to write)"
            )


def sessions(engine: AsyncEngine, *, read_only: bool) -> async_sessionmaker[AsyncSession]:
    """The session factory every unit of work draws from: objects stay readable after commit."""
    return async_sessionmaker(
        engine,
        expire_on_commit=False,
        sync_session_class=_ReadOnlySession if read_only else Session,
    )


def nodes(
    settings: DatabaseSettings, primary: AsyncEngine, poolclass: type[Pool] | None
) -> list[Node]:
    """The primary's node (on its existing engine), then one per replica URL."""
    made = [Node("primary", settings.masked_url, primary, pgbouncer=settings.pgbouncer)]
    for index, url in enumerate(settings.replica_urls, start=1):
        engine = create_engine(settings, poolclass=poolclass, url=url, replica=True)
        made.append(Node(f"replica{index}", mask_url(url), engine, pgbouncer=settings.pgbouncer))
    return made


class Node:
    """One server: its engine (one pool) and the session factories read-only work uses."""

    def __init__(
        self,
        name: str,
        masked_url: str,
        engine: AsyncEngine,
        *,
        pgbouncer: bool,
    ) -> None:
        self.name = name
        self.masked_url = masked_url
        self.engine = engine
        # Directly, reads need no transaction: the server enforces read-only on its own (a hot
        # standby always; a primary through default_transaction_read_only, see engine.py).
        # Behind PgBouncer every unit of work must be a transaction: BEGIN READ ONLY.
        self.read_engine = (
            engine.execution_options(postgresql_readonly=True)
            if pgbouncer
            else engine.execution_options(**{READER: True})
        )
        self.readers = sessions(self.read_engine, read_only=True)
        self._isolated: dict[str, async_sessionmaker[AsyncSession]] = {}
        self.down = False
        self.down_until = 0.0  # loop time; a health check after it may bring the node back
        self.replay: int | None = None  # last known pg_last_wal_replay_lsn()
        self.lag_bytes: int | None = None

    def read_sessions(self, isolation_level: str | None) -> async_sessionmaker[AsyncSession]:
        """Read-only sessions, in one READ ONLY transaction at ``isolation_level`` if given."""
        if isolation_level is None:
            return self.readers
        found = self._isolated.get(isolation_level)
        if found is None:
            engine = self.engine.execution_options(
                isolation_level=isolation_level, postgresql_readonly=True
            )
            found = self._isolated[isolation_level] = sessions(engine, read_only=True)
        return found

    def mark_down(self, reason: BaseException | str, retry_after: float) -> None:
        """Out of rotation until ``retry_after`` seconds from now and a passing health check."""
        now = asyncio.get_running_loop().time()
        if not self.down:
            if not isinstance(reason, str):
                mapped = translate(reason, f"replica {self.name}", connecting=True)
                reason = str(mapped) if mapped is not None else type(reason).__name__
            logger.warning(
                "replica %s (%s) is out of rotation for %.1f s: %s",
                self.name,
                self.masked_url,
                retry_after,
                reason,
            )
        self.down = True
        self.down_until = now + retry_after
        # After a restart a standby may open for reads before it has replayed as far as it
        # had: forget what it had replayed.
        self.replay = self.lag_bytes = None

    def __repr__(self) -> str:
        state = "down" if self.down else f"lag {self.lag_bytes} B"
        return f"<Node {self.name} {self.masked_url} {state}>"
