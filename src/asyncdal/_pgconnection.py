"""asyncdal's asyncpg connection class: what happens at BEGIN, at COMMIT, and at a forced close.

asyncpg starts and ends every transaction SQLAlchemy opens with one simple-protocol query
(``Transaction.start()`` sends ``BEGIN[ ISOLATION LEVEL ...][ READ ONLY];``, ``commit()`` sends
``COMMIT;``) through ``Connection.execute()``. Overriding that one method lets asyncdal add to
those messages without an extra round trip:

- ``READ WRITE`` on a primary whose connections default to read-only, so that read-only units of
  work can run in autocommit while the server still refuses their writes;
- ``SET LOCAL`` timeouts behind PgBouncer, where startup parameters never reach the server and a
  session-level ``SET`` would leak to other clients of the same server connection;
- after ``COMMIT``, the primary's WAL insert position, the read-your-writes token.
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar, Final

import asyncpg

#: The attribute where a connection leaves the WAL position read after its last COMMIT.
COMMIT_POSITION: Final = "commit_position"
#: The commit token when the position could not be read after a COMMIT that succeeded: no replica
#: can be shown to have it, so ``after=`` with it reads from the primary at once.
PRIMARY_TOKEN: Final = "FFFFFFFF/FFFFFFFF"
#: How long a forced close behind PgBouncer waits for the server to acknowledge the cancelled
#: query. PgBouncer neither answers a client it has queued for a server (every server
#: connection busy, or the server down) nor reads its Terminate, so SQLAlchemy's graceful close
#: waited its full 2 s there: `timeout=2` fired after 4.0 s. The cancel request itself has gone
#: out by then; on a live server connection its acknowledgement takes a round trip or two.
PGBOUNCER_CLOSE_GRACE: Final = 0.25
_POSITION_QUERY: Final = "SELECT pg_current_wal_insert_lsn()"


class _Connection(asyncpg.Connection):
    __slots__ = (COMMIT_POSITION,)

    read_write_begin: ClassVar[bool] = False
    set_local: ClassVar[str] = ""
    track_commit_position: ClassVar[bool] = False
    close_grace: ClassVar[float | None] = None

    # `timeout` (ASYNC109): these override asyncpg's own signatures.
    async def execute(self, query: str, *args: object, timeout: float | None = None) -> str:  # noqa: ASYNC109
        if args or not query.startswith(("BEGIN", "COMMIT;")):
            return await super().execute(query, *args, timeout=timeout)
        if query == "COMMIT;":
            status = await super().execute(query, timeout=timeout)
            if self.track_commit_position:
                try:
                    position = await self._wal_insert_position()
                except Exception:  # the commit stands; only where to read it is unknown
                    position = PRIMARY_TOKEN
                setattr(self, COMMIT_POSITION, position)
            return status
        if getattr(self, "_top_xact", None) is not None:  # asyncpg's own top-level BEGIN
            setattr(self, COMMIT_POSITION, None)
            if self.read_write_begin and "READ ONLY" not in query and not self._standby():
                query = query.removesuffix(";") + " READ WRITE;"
            query += self.set_local
        return await super().execute(query, timeout=timeout)

    def _standby(self) -> bool:
        # A hot standby refuses BEGIN READ WRITE (0A000), even for SQLAlchemy's own first-connect
        # queries: there, begin plainly and let the server refuse the writes themselves.
        return getattr(self.get_settings(), "in_hot_standby", "off") == "on"

    async def close(self, *, timeout: float | None = None) -> None:  # noqa: ASYNC109
        if timeout is not None and self.close_grace is not None:
            timeout = min(timeout, self.close_grace)
        await super().close(timeout=timeout)

    async def _wal_insert_position(self) -> str:
        # The insert position, not pg_current_wal_lsn(): with synchronous_commit=off the write
        # position may still lag behind our commit record. COPY is one simple-protocol message,
        # so it needs no prepared statement and PgBouncer runs it on one server connection.
        chunks: list[bytes] = []

        async def sink(chunk: bytes) -> None:
            chunks.append(chunk)

        await self.copy_from_query(_POSITION_QUERY, output=sink)
        return b"".join(chunks).decode().strip()


@functools.cache
def connection_class(
    *, read_write_begin: bool, set_local: str, commit_position: bool, close_grace: float | None
) -> type[Any]:
    """The asyncpg ``connection_class`` for one engine's configuration (one class per distinct
    configuration, shared by every engine that has it)."""
    return type(
        "AsyncdalConnection",
        (_Connection,),
        {
            "__slots__": (),
            "read_write_begin": read_write_begin,
            "set_local": set_local,
            "track_commit_position": commit_position,
            "close_grace": close_grace,
        },
    )
