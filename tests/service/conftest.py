"""Fixtures for the service tests: the example app served in-process over httpx's ASGI transport.

Each test gets its own app (its own ``Database``, with a unique ``application_name``) on the
session's migrated database of each backend, emptied first.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from asyncdal import DatabaseSettings
from examples.service.app import create_app
from tests._figures import Figures
from tests.conftest import clean
from tests.support import Backend, create_pg_database, drop_pg_database

#: Goes into every PostgreSQL URL the service gets (trust auth ignores it): it must never show.
PASSWORD = "s3cret-pw-9"
_SQL = re.compile(r"\b(SELECT|INSERT|UPDATE|DELETE|FROM|WHERE|VALUES)\b", re.IGNORECASE)
_DRIVER = (
    "asyncpg",
    "sqlite",
    "sqlalchemy",
    "traceback",
    "violat",
    "duplicate key",
    "[SQL",
    "2350",
)

#: ``make_app(**settings)``: the example app on this test's backend.
MakeApp = Callable[..., FastAPI]


def assert_nothing_leaks(body: str, *values: str) -> None:
    """No SQL, driver text, password or provoking value in a response body."""
    assert not _SQL.search(body), body
    lowered = body.lower()
    for word in (*_DRIVER, PASSWORD, *values):
        assert word.lower() not in lowered, (word, body)


def service_url(backend: Backend) -> str:
    """The backend's URL, with a password on PostgreSQL."""
    if backend.name != "postgres":
        return backend.url
    return re.sub(r"://([^:@/]+)@", rf"://\1:{PASSWORD}@", backend.url, count=1)


@asynccontextmanager
async def serving(app: FastAPI, **transport: Any) -> AsyncIterator[httpx.AsyncClient]:
    """Run ``app``'s lifespan around an httpx client talking to it in-process."""
    async with app.router.lifespan_context(app):
        asgi = httpx.ASGITransport(app=app, **transport)
        async with httpx.AsyncClient(transport=asgi, base_url="http://service") as client:
            yield client


@pytest.fixture
async def empty_url(backend: Backend, tmp_path: Path) -> AsyncIterator[str]:
    """An empty database of the backend's kind that the test may migrate, downgrade or break."""
    if backend.name == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'service.db'}"
        return
    url = await create_pg_database("asyncdal_service")
    try:
        yield url
    finally:
        await drop_pg_database(url)


@pytest.fixture
def app_name() -> str:
    """An ``application_name`` for this test's service only."""
    return f"asyncdal-service-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def make_app(backend: Backend, app_name: str) -> MakeApp:
    """``make_app(request_timeout=..., **settings)``: the example app on the (emptied) backend."""
    await clean(backend.shared)

    def make(request_timeout: float | None = None, **settings: Any) -> FastAPI:
        merged = {"application_name": app_name, **backend.settings, **settings}
        return create_app(
            DatabaseSettings(service_url(backend), **merged),
            request_timeout=request_timeout,
            shutdown_timeout=5,
        )

    return make


@pytest.fixture
async def client(make_app: MakeApp) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the example app on this test's backend."""
    async with serving(make_app()) as served:
        yield served


FIGURES = Figures("service figures")
figure = FIGURES.fixture()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the figures the service tests recorded."""
    FIGURES.print(terminalreporter)
