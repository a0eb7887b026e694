"""``run_in_transaction``'s loop: the whole function again, in a fresh unit of work, while it
fails with a ``RetryableError``, with full-jitter backoff between attempts."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from .errors import CommitOutcomeUnknownError, RetryableError, raise_translated
from .uow import State, UnitOfWork

U = TypeVar("U", bound=UnitOfWork)
T = TypeVar("T")


async def retrying(
    new_uow: Callable[[], U],
    fn: Callable[[U], Awaitable[T]],
    *,
    attempts: int,
    idempotent: bool,
    delays: tuple[float, float],
    on_retry: Callable[[Exception, int, int], None],
) -> T:
    """Run ``fn(uow)`` in ``new_uow()`` and commit, up to ``attempts`` times (see
    ``Database.run_in_transaction``); ``on_retry(error, attempt, attempts)`` before each retry,
    then a sleep uniform in ``[0, min(max_delay, base_delay * 2**attempt)]``."""
    base_delay, max_delay = delays
    attempt = 0
    while True:
        attempt += 1
        uow = new_uow()
        uow._attempt = (fn, attempt)  # names the span and the slow-log line
        try:
            async with uow:
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
            on_retry(error, attempt, attempts)
        except CommitOutcomeUnknownError as error:
            if not idempotent or attempt >= attempts:
                raise
            on_retry(error, attempt, attempts)
        await asyncio.sleep(random.uniform(0, min(max_delay, base_delay * 2**attempt)))
