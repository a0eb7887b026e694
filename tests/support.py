"""Helpers shared by the test packages (no fixtures here: see conftest.py)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from asyncdal import Database, DatabaseSettings
from asyncdal.users import UserUnitOfWork


def pg_admin_dsn(url: str, database: str = "postgres") -> str:
    """A plain asyncpg DSN for ``url``'s server, on the maintenance database."""
    parsed = make_url(url).set(drivername="postgresql", database=database)
    return parsed.render_as_string(hide_password=False)


def scratch_database_name(prefix: str) -> str:
    """A database name unique to this process and call."""
    return f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}"


@dataclass
class Backend:
    """One migrated test database: its kind, URL and a shared ``Database`` over it."""

    name: str  # "sqlite" or "postgres"
    url: str
    shared: Database[UserUnitOfWork]

    def database(self, **settings: Any) -> Database[UserUnitOfWork]:
        """A new ``Database`` on this backend with ``settings`` applied (dispose it after)."""
        settings.setdefault("application_name", "asyncdal-tests")
        return Database(DatabaseSettings(self.url, **settings), unit_of_work=UserUnitOfWork)

    @staticmethod
    def replace_database(url: str, database: str) -> str:
        """``url`` pointing at another database on the same server."""
        return make_url(url).set(database=database).render_as_string(hide_password=False)


@contextmanager
def count_statements(engine: AsyncEngine) -> Iterator[list[str]]:
    """Collect every SQL statement ``engine`` sends while the block runs."""
    statements: list[str] = []

    def record(*args: Any) -> None:
        statements.append(str(args[2]))

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)
