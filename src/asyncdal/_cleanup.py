"""How a unit of work ends: cleanup that a cancellation cannot cut short, after-commit hooks, and
what the driver knows of the session's connection."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy.orm import Session

logger = logging.getLogger("asyncdal")


def driver_of(sync_session: Session) -> Any:
    """The driver connection of the session's transaction, or None outside one."""
    if not sync_session.in_transaction():
        return None
    return sync_session.connection().connection.driver_connection


def driver_closed(driver: Any) -> bool:
    """True when the driver connection (``driver_of()``) knows the server closed it (asyncpg)."""
    is_closed = getattr(driver, "is_closed", None)
    return bool(is_closed()) if callable(is_closed) else False


async def shielded(awaitable: Awaitable[None]) -> None:
    """Run ``awaitable`` to the end even if this task is cancelled meanwhile (then re-raise);
    only used after a cancellation, so its own failure is dropped."""
    task = asyncio.ensure_future(awaitable)
    cancelled: asyncio.CancelledError | None = None
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError as error:
            cancelled = error
    if not task.cancelled():
        # Best effort: retrieve (and drop) a cleanup failure; the CancelledError is what matters.
        task.exception()
    if cancelled is not None:
        raise cancelled


async def run_hooks(hooks: list[Callable[[], object]]) -> None:
    """Run after-commit hooks in order; one that raises is logged with its name, the rest run."""
    for hook in hooks:
        try:
            outcome = hook()
            if inspect.isawaitable(outcome):
                await outcome
        except Exception:
            name = getattr(hook, "__qualname__", None) or repr(hook)
            logger.exception("on_commit hook %s failed after a successful commit", name)
