"""Fault-test fixtures: a throwaway PostgreSQL cluster, scratch databases, per-test names.

Anything that stops or restarts a server uses ``pg_cluster`` (a cluster of our own, on a free
port); everything else uses scratch databases on the shared server. Every engine a test builds
gets its own ``application_name`` (the ``app_name`` fixture), and every ``pg_stat_activity``
query and ``pg_terminate_backend`` filters on it: other people run tests on the shared server.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import NoReturn

import asyncpg
import pytest

from asyncdal import Database, DatabaseSettings
from asyncdal.migrations import upgrade
from tests._figures import Figures
from tests.faults._cluster import Cluster, ClusterError, NewDatabase
from tests.support import IN_CI, PG_URL, create_pg_database, drop_pg_database


def _unavailable(what: str, problem: object) -> NoReturn:
    message = f"{what} is not available ({problem})"
    if IN_CI:
        pytest.fail(message + "; under CI=true this is a failure, not a skip")
    pytest.skip(message)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    """A throwaway PostgreSQL cluster for this session; stopped and deleted at the end."""
    try:
        cluster = Cluster.create()
    except (ClusterError, OSError) as error:
        _unavailable("a throwaway PostgreSQL cluster (initdb)", error)
    try:
        try:
            cluster.start()
        except ClusterError as error:
            _unavailable("a throwaway PostgreSQL cluster (pg_ctl start)", error)
        yield cluster
    finally:
        cluster.remove()


@pytest.fixture
def cluster(pg_cluster: Cluster) -> Iterator[Cluster]:
    """The throwaway cluster, running when the test starts and again after it (tests stop it)."""
    if not pg_cluster.running:
        pg_cluster.start()
    yield pg_cluster
    if not pg_cluster.running:
        pg_cluster.start()


@pytest.fixture
def app_name(request: pytest.FixtureRequest) -> str:
    """An ``application_name`` unique to this test: the only backends it may look at or kill."""
    return f"asyncdal-faults-{request.node.name[:24]}-{uuid.uuid4().hex[:6]}"


@pytest.fixture
async def new_database() -> AsyncIterator[NewDatabase]:
    """``await new_database(server=PG_URL, migrate=True)``: a scratch database's URL, dropped
    after the test (on the shared server unless ``server`` names another, e.g. the cluster)."""
    created: list[str] = []

    async def create(server: str = PG_URL, *, migrate: bool = True) -> str:
        url = await create_pg_database("asyncdal_faults", server)
        created.append(url)
        if migrate:
            settings = DatabaseSettings(url, application_name="asyncdal-faults-migrate")
            async with Database(settings) as db:
                await upgrade(db)
        return url

    yield create
    for url in created:
        # The cluster may be down if its test failed halfway; the database goes with it then.
        with contextlib.suppress(OSError, asyncpg.PostgresError, TimeoutError):
            await drop_pg_database(url)


FIGURES = Figures("fault figures")
figure = FIGURES.fixture()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the figures the fault tests recorded (the issue asks for them in the report)."""
    FIGURES.print(terminalreporter)
