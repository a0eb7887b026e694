"""Where the benchmark runs: a fresh SQLite file, a scratch PostgreSQL database; both seeded."""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
from sqlalchemy import insert, text
from sqlalchemy.engine import make_url

from asyncdal import Database, DatabaseSettings
from asyncdal.errors import ConfigurationError
from asyncdal.migrations import upgrade
from asyncdal.settings import mask_url
from benchmarks.drivers import connect_kwargs
from benchmarks.stacks import users_table

SEED_BATCH = 2_000


class BenchError(Exception):
    """A problem the user can fix (bad argument, unreachable server): printed on one line."""


@dataclass(frozen=True, slots=True)
class Backend:
    """One database the stacks run against. ``url`` holds the password: never print it."""

    name: str
    url: str
    server_version: str

    @property
    def masked_url(self) -> str:
        return mask_url(self.url)

    @property
    def label(self) -> str:
        return "SQLite" if self.name == "sqlite" else "PostgreSQL"


async def _prepare(url: str, users: int) -> str:
    """Migrate with Alembic, seed ``users`` users (ids 1..users), return the server version."""
    async with Database(DatabaseSettings(url)) as db:
        await upgrade(db)
        age_span = 151
        async with db.engine.begin() as conn:
            for start in range(0, users, SEED_BATCH):
                now = datetime.now(UTC)
                rows = [
                    {
                        "name": f"seed user {i}",
                        "age": i % age_span,
                        "created_at": now,
                        "updated_at": now,
                        "version": 1,
                    }
                    for i in range(start + 1, min(users, start + SEED_BATCH) + 1)
                ]
                await conn.execute(insert(users_table()), rows)
        async with db.engine.connect() as conn:
            if db.backend == "sqlite":
                version = await conn.scalar(text("SELECT sqlite_version()"))
            else:
                await conn.execute(text("ANALYZE users"))
                version = await conn.scalar(text("SHOW server_version"))
        return str(version)


@asynccontextmanager
async def sqlite_backend(users: int) -> AsyncIterator[Backend]:
    """A fresh SQLite file in a temporary directory, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="asyncdal-bench-") as tmp:
        url = f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}"
        yield Backend("sqlite", url, await _prepare(url, users))


def _check_postgres_url(url: str) -> DatabaseSettings:
    try:
        settings = DatabaseSettings(url)
    except ConfigurationError as error:
        raise BenchError(f"--postgres: {error}") from None
    if settings.backend != "postgresql":
        raise BenchError(f"--postgres takes a postgresql:// URL, got {mask_url(url)}")
    return settings


async def _maintenance(settings: DatabaseSettings) -> asyncpg.Connection:
    try:
        return await asyncpg.connect(**connect_kwargs(settings))
    except (OSError, TimeoutError, asyncpg.PostgresError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise BenchError(
            f"cannot connect to PostgreSQL at {settings.masked_url}: {reason}"
        ) from None


async def check_postgres(url: str) -> None:
    """Fail early, on one line, when ``url`` is not a reachable PostgreSQL server."""
    connection = await _maintenance(_check_postgres_url(url))
    await connection.close()


async def answers(url: str, connect_timeout: float) -> bool:
    """Whether a PostgreSQL server answers at ``url`` within ``connect_timeout`` seconds."""
    settings = dataclasses.replace(_check_postgres_url(url), connect_timeout=connect_timeout)
    try:
        connection = await _maintenance(settings)
    except BenchError:
        return False
    await connection.close()
    return True


@asynccontextmanager
async def postgres_backend(url: str, users: int) -> AsyncIterator[Backend]:
    """A scratch database created next to ``url``'s, dropped afterwards, also on failure."""
    settings = _check_postgres_url(url)
    name = f"asyncdal_bench_{secrets.token_hex(4)}"
    maintenance = await _maintenance(settings)
    try:
        await maintenance.execute(f'CREATE DATABASE "{name}"')
    except BaseException:
        await maintenance.close()
        raise
    scratch = make_url(settings.url).set(database=name).render_as_string(hide_password=False)
    try:
        yield Backend("postgresql", scratch, await _prepare(scratch, users))
    finally:
        # Shielded: on Ctrl-C the drop must still run to the end.
        await asyncio.shield(_drop(maintenance, name))


async def _drop(maintenance: asyncpg.Connection, name: str) -> None:
    try:
        await maintenance.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await maintenance.close()
