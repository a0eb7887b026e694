"""A fair, in-process queue for SQLite writers.

SQLite admits one writer at a time. Left to itself, each waiting connection sleeps and retries in
the busy handler, with growing sleeps and no order, so under load some writers wait for seconds
while others barge in. Queueing writers in a FIFO ``asyncio.Lock`` before ``BEGIN IMMEDIATE``
means the database lock is always free when a writer asks for it: no busy loop, first come first
served. The busy timeout still covers writers in other processes.
"""

from __future__ import annotations

import asyncio

from .errors import RetryableError, UnitOfWorkStateError


class WriteLock:
    """FIFO lock for one database's writers; refuses re-entry from the task that holds it."""

    def __init__(self, timeout: float) -> None:
        self._lock = asyncio.Lock()
        self._owner: asyncio.Task[object] | None = None
        self._timeout = timeout

    @property
    def locked(self) -> bool:
        """True while a writer holds the lock."""
        return self._lock.locked()

    async def acquire(self) -> None:
        """Wait for the lock, at most the busy timeout.

        Raises:
            UnitOfWorkStateError: this task already holds it (a nested writing unit of work
                would wait for itself forever).
            RetryableError: the lock stayed busy for the whole timeout.
        """
        task = asyncio.current_task()
        if task is not None and self._owner is task:
            raise UnitOfWorkStateError(
                "cannot open a writing unit of work inside another one in the same task: "
                "SQLite has one writer at a time, so the inner one would wait for the outer forever"
            )
        try:
            async with asyncio.timeout(self._timeout):
                await self._lock.acquire()
        except TimeoutError:
            raise RetryableError(
                f"waited {self._timeout} s for SQLite's write lock: another unit of work holds it"
            ) from None
        self._owner = task

    def release(self) -> None:
        """Hand the lock to the next writer in line."""
        self._owner = None
        self._lock.release()
