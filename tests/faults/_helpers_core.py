"""Helpers for the cancellation, retry, concurrency, timeout, contention, input and secret tests.

Every look at ``pg_stat_activity`` filters on the ``application_name`` the test's own engine set:
other people run tests on the shared server, and we only ever touch our own backends.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import Result, text
from sqlalchemy.engine import make_url

from asyncdal import Database, UnitOfWork
from tests.faults._cluster import Activity, backend_activity
from tests.support import pg_admin_dsn

PROBE_APP = "asyncdal-faults-probe"


async def pg_activity(db: Database[Any]) -> list[Activity]:
    """The backends whose ``application_name`` is ``db``'s own."""
    url = db.settings.url
    dsn = pg_admin_dsn(url, make_url(url).database or "postgres")
    return await backend_activity(dsn, db.settings.application_name)


async def eventually(
    check: Callable[[], Awaitable[bool]], *, within: float, interval: float = 0.05
) -> bool:
    """Poll ``check`` until it holds or ``within`` seconds pass; whether it held."""
    deadline = time.monotonic() + within
    while True:
        if await check():
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(interval)


def sqlite_path(db: Database[Any]) -> str:
    """The file behind a SQLite ``Database``."""
    database = make_url(db.settings.url).database
    assert database, "a file-backed SQLite database is needed here"
    return database


def sqlite_write_lock_is_free(path: str) -> bool:
    """Whether another connection could start writing now (no open write transaction holds
    the file), checked from a plain ``sqlite3`` connection that does not wait."""
    probe = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        probe.execute("BEGIN IMMEDIATE")
        probe.execute("ROLLBACK")
    except sqlite3.OperationalError:
        return False
    finally:
        probe.close()
    return True


async def no_transaction_left_open(db: Database[Any]) -> bool:
    """No pooled connection is checked out and none of our backends idles inside a transaction
    (PostgreSQL: ``pg_stat_activity``; SQLite: the file's write lock is free)."""
    if db.pool_status().checked_out:
        return False
    if db.backend == "sqlite":
        return sqlite_write_lock_is_free(sqlite_path(db))
    return not [a for a in await pg_activity(db) if (a.state or "").startswith("idle in trans")]


async def sql(uow: UnitOfWork, statement: str, **params: Any) -> Result[Any]:
    """Raw SQL through the unit of work's error translation (what repositories use), unlike
    ``uow.session.execute()``, whose driver errors come out untranslated."""
    return await uow.execute("raw SQL", lambda session: session.execute(text(statement), params))
