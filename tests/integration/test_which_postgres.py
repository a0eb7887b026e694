"""Which PostgreSQL ``make bench`` and ``make test`` use when told nothing, on real servers.

"Nothing answers at the default URL" is a port on 127.0.0.1 where nothing listens: the shared
server on 5432 is never stopped for this.
"""

from __future__ import annotations

import os

import asyncpg
import pytest

from asyncdal import _pgserver
from benchmarks.backends import BenchError
from benchmarks.which_postgres import postgres_for_run
from tests import support
from tests.faults._cluster import free_port
from tests.support import pg_admin_dsn

pytestmark = pytest.mark.postgres


def _silent_url() -> str:
    return f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/test"


async def _refused(url: str) -> bool:
    try:
        connection = await asyncpg.connect(pg_admin_dsn(url), timeout=5)
    except OSError:
        return True
    await connection.close()
    return False


async def test_bench_measures_the_server_answering_at_the_default_url(pg_server_url: str) -> None:
    async with postgres_for_run(None, default_url=pg_server_url) as pick:
        assert pick.url == pg_server_url
    assert "the server answering at" in pick.line
    assert "--postgres URL picks another" in pick.line


async def test_bench_starts_an_embedded_server_when_nothing_answers_and_stops_it_after() -> None:
    silent = _silent_url()
    async with postgres_for_run(None, default_url=silent) as pick:
        assert pick.url is not None
        assert not await _refused(pick.url)
    assert "an embedded PostgreSQL 18.6 started for this run on 127.0.0.1:" in pick.line
    assert f"nothing answers at {silent}" in pick.line
    assert "***" not in pick.line
    assert pick.url.split(":")[2].split("@")[0] not in pick.line  # no password
    assert await _refused(pick.url)


async def test_bench_says_plainly_when_no_postgresql_can_be_had(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_pgserver, "find_bindir", lambda: None)
    async with postgres_for_run(None, default_url=_silent_url()) as pick:
        assert pick.url is None
    assert pick.line.startswith("PostgreSQL: not measured: nothing answers at")
    assert "--postgres URL" in pick.line
    assert "docker compose up -d postgres" in pick.line


async def test_bench_sqlite_only_measures_no_postgresql() -> None:
    async with postgres_for_run("postgresql://never@tried/x", wanted=False) as pick:
        assert pick.url is None
    assert pick.line == "PostgreSQL: not measured (--sqlite-only)"


async def test_bench_fails_at_once_when_the_requested_server_does_not_answer() -> None:
    with pytest.raises(BenchError, match="cannot connect"):
        async with postgres_for_run(_silent_url()):
            pytest.fail("a run started without its PostgreSQL")


def test_tests_fall_back_to_an_embedded_server_except_under_ci(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    silent = _silent_url()
    monkeypatch.delenv(support.ENV_PG_URL, raising=False)  # restored after the test
    monkeypatch.setattr(support, "DEFAULT_PG_URL", silent)
    monkeypatch.setattr(support, "IN_CI", True)
    in_ci = support.find_postgres_for_tests()
    assert (in_ci.url, in_ci.embedded) == (silent, None)
    monkeypatch.setattr(support, "IN_CI", False)
    local = support.find_postgres_for_tests()
    assert local.embedded is not None
    try:
        assert local.url == local.embedded.url("postgres")
        assert os.environ[support.ENV_PG_URL] == local.url  # for child processes
        assert local.description.startswith("embedded PostgreSQL 18.6 at postgresql+asyncpg://")
        assert f"none answers at {silent}" in local.description
    finally:
        local.embedded.stop()
