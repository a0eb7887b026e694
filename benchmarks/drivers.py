"""The ``driver`` stack: the floor of the ladder, the database drivers used directly.

PostgreSQL: asyncpg's own pool of ``pool_size`` connections. Reads run without BEGIN/COMMIT (a
single SELECT is its own transaction); writes and updates run in ``conn.transaction()``.
SQLite: one aiosqlite connection shared by every task, guarded by an ``asyncio.Lock`` (one
connection cannot interleave transactions), with the pragmas asyncdal sets on its own connections.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import aiosqlite
import asyncpg
from sqlalchemy.engine import make_url

from asyncdal import DatabaseSettings
from benchmarks.stacks import Change, MissingRowError, Stack, StaleRowError

# A read fetches the whole user, as the ORM stacks do, and hands back its age.
_SELECT_USER = (
    "SELECT id, name, age, email, created_at, updated_at, version FROM users WHERE id = {0}"
)
_SELECT_ROW = "SELECT age, version FROM users WHERE id = {0}"
_INSERT = (
    "INSERT INTO users (name, age, created_at, updated_at, version) "
    "VALUES ({0}, {1}, {2}, {3}, 1) RETURNING id"
)
_BULK_INSERT = (
    "INSERT INTO users (name, age, created_at, updated_at, version) VALUES ({0}, {1}, {2}, {3}, 1)"
)
_UPDATE = (
    "UPDATE users SET age = {0}, updated_at = {1}, version = {2} WHERE id = {3} AND version = {4}"
)


def _sql(template: str, style: str) -> str:
    count = template.count("{")
    marks = [f"${i + 1}" for i in range(count)] if style == "numeric" else ["?"] * count
    return template.format(*marks)


async def open_driver(settings: DatabaseSettings, pool_size: int) -> Stack:
    """The driver stack for ``settings``' backend."""
    if settings.backend == "sqlite":
        return await SqliteDriver.open(settings)
    return await PostgresDriver.open(settings, pool_size)


def connect_kwargs(settings: DatabaseSettings) -> dict[str, Any]:
    """asyncpg connection arguments for a ``postgresql+asyncpg://`` URL."""
    url = make_url(settings.url)
    return {
        "host": url.host,
        "port": url.port,
        "user": url.username,
        "password": url.password,
        "database": url.database,
        "timeout": settings.connect_timeout,
    }


class PostgresDriver:
    """asyncpg's pool, no SQLAlchemy."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._select_user = _sql(_SELECT_USER, "numeric")
        self._select_row = _sql(_SELECT_ROW, "numeric")
        self._insert = _sql(_INSERT, "numeric")
        self._bulk_insert = _sql(_BULK_INSERT, "numeric")
        self._update = _sql(_UPDATE, "numeric")

    @classmethod
    async def open(cls, settings: DatabaseSettings, pool_size: int) -> PostgresDriver:
        pool = await asyncpg.create_pool(
            **connect_kwargs(settings),
            min_size=pool_size,
            max_size=pool_size,
            server_settings={"application_name": settings.application_name},
        )
        return cls(pool)

    async def get_age(self, user_id: int) -> int | None:
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(self._select_user, user_id)
            return None if row is None else int(row["age"])

    async def add_user(self, name: str, age: int) -> None:
        now = datetime.now(UTC)
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.fetchval(self._insert, name, age, now, now)

    async def update_age(self, user_id: int, change: Change) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(self._select_row, user_id)
            if row is None:
                raise MissingRowError(user_id)
            age, version = row
            status = await conn.execute(
                self._update, change(age), datetime.now(UTC), version + 1, user_id, version
            )
            if status != "UPDATE 1":
                raise StaleRowError(user_id)

    async def add_users(self, rows: Sequence[tuple[str, int]]) -> None:
        now = datetime.now(UTC)
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.executemany(self._bulk_insert, [(n, a, now, now) for n, a in rows])

    async def close(self) -> None:
        await self._pool.close()


def _sqlite_now() -> str:
    # The text format SQLAlchemy's SQLite DateTime type stores.
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


class SqliteDriver:
    """One aiosqlite connection for every task, one transaction at a time."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn
        self._lock = asyncio.Lock()
        self._select_user = _sql(_SELECT_USER, "qmark")
        self._select_row = _sql(_SELECT_ROW, "qmark")
        self._insert = _sql(_INSERT, "qmark")
        self._bulk_insert = _sql(_BULK_INSERT, "qmark")
        self._update = _sql(_UPDATE, "qmark")

    @classmethod
    async def open(cls, settings: DatabaseSettings) -> SqliteDriver:
        path = make_url(settings.url).database or ":memory:"
        conn = await aiosqlite.connect(
            path, timeout=settings.sqlite_busy_timeout, isolation_level=None
        )
        for pragma in (
            "PRAGMA journal_mode=WAL",
            "PRAGMA foreign_keys=ON",
            f"PRAGMA synchronous={settings.sqlite_synchronous}",
        ):
            await conn.execute(pragma)
        return cls(conn)

    async def get_age(self, user_id: int) -> int | None:
        async with self._lock:
            rows = await self._conn.execute_fetchall(self._select_user, (user_id,))
        for row in rows:
            return int(row[2])
        return None

    async def _write(self, sql: str, params: Sequence[Any]) -> None:
        async with self._lock:
            await self._conn.execute("BEGIN IMMEDIATE")
            try:
                await self._conn.execute_fetchall(sql, params)
            except BaseException:
                await self._conn.rollback()
                raise
            await self._conn.commit()

    async def add_user(self, name: str, age: int) -> None:
        now = _sqlite_now()
        await self._write(self._insert, (name, age, now, now))

    async def update_age(self, user_id: int, change: Change) -> None:
        async with self._lock:
            await self._conn.execute("BEGIN IMMEDIATE")
            try:
                rows = list(await self._conn.execute_fetchall(self._select_row, (user_id,)))
                if not rows:
                    raise MissingRowError(user_id)
                age, version = rows[0]
                params = (change(age), _sqlite_now(), version + 1, user_id, version)
                cursor = await self._conn.execute(self._update, params)
                if cursor.rowcount != 1:
                    raise StaleRowError(user_id)
            except BaseException:
                await self._conn.rollback()
                raise
            await self._conn.commit()

    async def add_users(self, rows: Sequence[tuple[str, int]]) -> None:
        now = _sqlite_now()
        async with self._lock:
            await self._conn.execute("BEGIN IMMEDIATE")
            try:
                await self._conn.executemany(self._bulk_insert, [(n, a, now, now) for n, a in rows])
            except BaseException:
                await self._conn.rollback()
                raise
            await self._conn.commit()

    async def close(self) -> None:
        await self._conn.close()
