"""Holding the database's locks from outside the service, to make its requests wait or fail."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from sqlalchemy.engine import make_url

from tests.support import Backend, pg_admin_dsn


@asynccontextmanager
async def holding(backend: Backend, user_id: int) -> AsyncIterator[None]:
    """PostgreSQL: the user's row locked FOR UPDATE. SQLite: the database's write lock. Held by
    a connection of another client until the block ends (then rolled back)."""
    if backend.name == "sqlite":
        path = make_url(backend.url).database
        assert path
        connection = sqlite3.connect(path, isolation_level=None)
        try:
            connection.execute("BEGIN IMMEDIATE")
            yield
            connection.execute("ROLLBACK")
        finally:
            connection.close()
        return
    database = make_url(backend.url).database or "postgres"
    other = await asyncpg.connect(pg_admin_dsn(backend.url, database))
    try:
        transaction = other.transaction()
        await transaction.start()
        await other.execute("SELECT id FROM users WHERE id = $1 FOR UPDATE", user_id)
        yield
        await transaction.rollback()
    finally:
        await other.close()
