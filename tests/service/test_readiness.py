"""``/readyz``: 200 when the database answers and its schema is at head, else 503."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url

from asyncdal import Database, DatabaseSettings
from asyncdal.migrations import downgrade, upgrade
from examples.service.app import create_app
from tests.faults._cluster import terminate
from tests.service.conftest import serving
from tests.support import Backend, pg_admin_dsn


async def test_readyz_is_503_while_the_schema_is_behind_head(empty_url: str, app_name: str) -> None:
    app = create_app(DatabaseSettings(empty_url, application_name=app_name))
    async with serving(app) as client:
        ready = await client.get("/readyz")
        assert (ready.status_code, ready.json()["ready"]) == (200, True)
        await downgrade(app.state.db, "base")
        behind = await client.get("/readyz")
        assert (behind.status_code, behind.json()["ready"]) == (503, False)
        await upgrade(app.state.db)
        assert (await client.get("/readyz")).status_code == 200


async def test_readyz_is_503_while_the_database_cannot_be_reached(
    backend: Backend, empty_url: str, app_name: str
) -> None:
    app = create_app(DatabaseSettings(empty_url, application_name=app_name, connect_timeout=2))
    async with serving(app) as client:
        assert (await client.get("/readyz")).status_code == 200
        async with _unreachable(backend, empty_url, app_name, app.state.db):
            down = await client.get("/readyz")
            assert (down.status_code, down.headers["Retry-After"]) == (503, "1")
            assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/readyz")).status_code == 200


class _unreachable:
    """PostgreSQL: the database refuses new connections and the service's are terminated.
    SQLite: the file is replaced by one that is not a database and the pool let go."""

    def __init__(self, backend: Backend, url: str, app_name: str, db: Database[Any]) -> None:
        self._backend, self._url, self._app_name, self._db = backend, url, app_name, db

    async def __aenter__(self) -> None:
        if self._backend.name == "sqlite":
            path = make_url(self._url).database or ""
            await self._db.dispose()  # pooled connections would go on reading the moved file
            _break(path)
            return
        name = make_url(self._url).database
        admin = await asyncpg.connect(pg_admin_dsn(self._url))
        try:
            await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        finally:
            await admin.close()
        await terminate(pg_admin_dsn(self._url), self._app_name)

    async def __aexit__(self, *_exc: object) -> None:
        if self._backend.name == "sqlite":
            path = make_url(self._url).database or ""
            await self._db.dispose()
            _restore(path)
            return
        admin = await asyncpg.connect(pg_admin_dsn(self._url))
        try:
            name = make_url(self._url).database
            await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        finally:
            await admin.close()


def _break(path: str) -> None:
    """Move the database (and its WAL) aside; put a file that is not a database in its place."""
    for suffix in ("", "-wal", "-shm"):
        if Path(path + suffix).exists():
            os.replace(path + suffix, path + suffix + ".saved")
    Path(path).write_bytes(b"this is not a database " * 512)


def _restore(path: str) -> None:
    for suffix in ("-wal", "-shm", ""):
        Path(path + suffix).unlink(missing_ok=True)
        if Path(path + suffix + ".saved").exists():
            os.replace(path + suffix + ".saved", path + suffix)
