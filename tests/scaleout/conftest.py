"""Scale-out fixtures: one loopback topology per session (a primary, 2 streaming replicas,
PgBouncer in transaction mode in front of the primary), one migrated database on it, and
``Database`` objects over it that are disposed after each test.

The topology is built once, as the ``postgres`` OS user, and removed at the end, also when a test
or the build fails (plus an ``atexit`` backstop). Without ``initdb``/``pgbouncer`` these tests skip
locally and fail under ``CI=true``.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, NoReturn

import asyncpg
import pytest

from asyncdal import Database, DatabaseSettings
from asyncdal.migrations import upgrade
from asyncdal.users import UserUnitOfWork
from tests._figures import Figures
from tests.faults._cluster import ClusterError
from tests.scaleout._helpers import DATABASE, Servers, wait_until_replayed
from tests.scaleout._topology import Topology
from tests.support import IN_CI

#: ``await make_db(**settings)`` -> a ``Database`` over the topology, disposed after the test.
MakeDb = Callable[..., Awaitable[Database[UserUnitOfWork]]]


def _unavailable(what: str, problem: object) -> NoReturn:
    message = f"{what} is not available ({problem})"
    if IN_CI:
        pytest.fail(message + "; under CI=true this is a failure, not a skip")
    pytest.skip(message)


@pytest.fixture(scope="session")
def topology() -> Iterator[Topology]:
    """The primary, 2 streaming replicas and PgBouncer, for the whole session."""
    try:
        built = Topology.build()
    except (ClusterError, OSError) as error:
        _unavailable("the scale-out topology (initdb, pg_basebackup, pgbouncer)", error)
    try:
        yield built
    finally:
        built.remove()


@pytest.fixture(scope="session")
async def servers(topology: Topology) -> Servers:
    """The migrated test database on the topology, visible on both replicas."""
    admin = await asyncpg.connect(topology.primary.dsn())
    try:
        await admin.execute(f'CREATE DATABASE "{DATABASE}"')
    finally:
        await admin.close()
    made = Servers(topology)
    async with Database(DatabaseSettings(made.primary_url, application_name="scaleout")) as db:
        await upgrade(db)
    await wait_until_replayed(made)
    return made


@pytest.fixture
async def clean(servers: Servers) -> Servers:
    """The servers, with the reference domain's tables emptied on all of them."""
    connection = await asyncpg.connect(servers.primary_dsn)
    try:
        await connection.execute("TRUNCATE posts, users RESTART IDENTITY CASCADE")
    finally:
        await connection.close()
    await wait_until_replayed(servers)
    return servers


@pytest.fixture
def app_name(request: pytest.FixtureRequest) -> str:
    """An ``application_name`` unique to this test."""
    return f"scaleout-{request.node.name[:30]}-{uuid.uuid4().hex[:6]}"


@pytest.fixture
async def make_db(clean: Servers, app_name: str) -> AsyncIterator[MakeDb]:
    """``await make_db(**settings)``: a ``Database`` on the primary with both replicas (pass
    ``url=``/``replica_urls=`` to change that), with a short check interval; disposed after."""
    made: list[Database[UserUnitOfWork]] = []

    async def make(**settings: Any) -> Database[UserUnitOfWork]:
        url = settings.pop("url", clean.primary_url)
        settings.setdefault("replica_urls", clean.replica_urls)
        settings.setdefault("application_name", app_name)
        settings.setdefault("replica_check_interval", 0.1)
        made.append(Database(DatabaseSettings(url, **settings), unit_of_work=UserUnitOfWork))
        return made[-1]

    yield make
    for db in made:
        await db.dispose()


FIGURES = Figures("scale-out figures")
figure = FIGURES.fixture()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the figures the scale-out tests asserted (the issue note quotes them)."""
    FIGURES.print(terminalreporter)
