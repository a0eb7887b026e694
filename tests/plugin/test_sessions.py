"""Whole pytest sessions in child processes: pytest-xdist workers, a scratch database that is
dropped after a failing or interrupted run, a password that never prints, and a project that
does not use the plugin."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from tests.plugin._child import project
from tests.support import pg_admin_dsn, require_postgres

#: Each test writes "<xdist worker> <database>" to $CHILD_RECORD.
RECORDING = """
import asyncio
import os

import pytest
from sqlalchemy.engine import make_url

from asyncdal.models import User
from asyncdal.users import UserUnitOfWork


@pytest.fixture(scope="session")
def asyncdal_unit_of_work():
    return UserUnitOfWork


@pytest.fixture(autouse=True)
def record(asyncdal_settings):
    worker = os.environ.get("PYTEST_XDIST_WORKER", "-")
    line = f"{worker} {make_url(asyncdal_settings.url).database}"
    with open(os.environ["CHILD_RECORD"], "a") as out:
        out.write(line + "\\n")


async def count(db):
    async with db.unit_of_work(read_only=True) as uow:
        return await uow.users.count()


@pytest.mark.parametrize("n", range(6))
async def test_committing(asyncdal_committing_db, n):
    assert await count(asyncdal_committing_db) == 0
    async with asyncdal_committing_db.unit_of_work() as uow:
        await uow.users.add(User(name=f"n{n}", age=n))
        await uow.commit()
    await asyncio.sleep(0.05)  # the other worker writes meanwhile
    assert await count(asyncdal_committing_db) == 1


@pytest.mark.parametrize("n", range(6))
async def test_rolled_back(asyncdal_db, n):
    async with asyncdal_db.unit_of_work() as uow:
        await uow.users.add(User(name=f"n{n}", age=n))
        await uow.commit()
    await asyncio.sleep(0.05)
    assert await count(asyncdal_db) == 1
"""

FAILING = """
import asyncio
import os

import pytest


async def test_fails(asyncdal_db, asyncdal_settings, asyncdal_url):
    with open(os.environ["CHILD_RECORD"], "a") as out:
        out.write(asyncdal_settings.masked_url + "\\n")
    if os.environ.get("CHILD_WAIT"):
        await asyncio.sleep(120)  # until the parent interrupts the session
    assert asyncdal_db is None
"""


def _records(path: Path) -> list[tuple[str, str]]:
    return [tuple(line.split(" ", 1)) for line in path.read_text().splitlines()]  # type: ignore[misc]  # two fields


def test_two_xdist_workers_never_see_each_others_rows(
    pytester: pytest.Pytester, child_backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = pytester.path / "record.txt"
    monkeypatch.setenv("CHILD_RECORD", str(record))
    project(pytester, files={"test_recording": RECORDING})
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2")
    result.assert_outcomes(passed=12)
    databases: dict[str, set[str]] = {}
    for worker, database in _records(record):
        databases.setdefault(worker, set()).add(database)
    assert sorted(databases) == ["gw0", "gw1"]
    assert all(len(each) == 1 for each in databases.values())  # one database per worker
    assert databases["gw0"] != databases["gw1"]


async def _exists(url: str, name: str) -> bool:
    connection = await asyncpg.connect(pg_admin_dsn(url))
    try:
        return bool(await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name))
    finally:
        await connection.close()


@pytest.mark.postgres
async def test_the_scratch_database_is_dropped_after_a_failing_run(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = await require_postgres()
    record = pytester.path / "record.txt"
    monkeypatch.setenv("ASYNCDAL_TEST_URL", url)
    monkeypatch.setenv("CHILD_RECORD", str(record))
    project(pytester, files={"test_failing": FAILING})
    result = await asyncio.to_thread(pytester.runpytest_subprocess, "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    name = make_url(record.read_text().strip()).database or ""
    assert name.startswith("asyncdal_test_main_")
    assert not await _exists(url, name)


@pytest.mark.postgres
async def test_the_scratch_database_is_dropped_after_ctrl_c(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = await require_postgres()
    record = pytester.path / "record.txt"
    monkeypatch.setenv("ASYNCDAL_TEST_URL", url)
    monkeypatch.setenv("CHILD_RECORD", str(record))
    monkeypatch.setenv("CHILD_WAIT", "1")
    project(pytester, files={"test_failing": FAILING})
    child = pytester.popen(
        [*pytester._getpytestargs(), "-p", "no:cacheprovider"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not (record.exists() and record.read_text().strip()):
            assert child.poll() is None, child.stdout.read() if child.stdout else ""
            assert time.monotonic() < deadline, "the child never reached its test"
            await asyncio.sleep(0.05)
        name = make_url(record.read_text().strip()).database or ""
        assert await _exists(url, name)  # the session's scratch database, in use
        child.send_signal(signal.SIGINT)
        output, _ = await asyncio.to_thread(child.communicate, timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == pytest.ExitCode.INTERRUPTED, output
    assert b"KeyboardInterrupt" in output
    assert not await _exists(url, name)


@pytest.mark.postgres
async def test_the_password_is_never_printed_even_with_vv(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = make_url(await require_postgres())
    if url.password is None:  # trust authentication takes any password
        url = url.set(password="S3cret-never-shown")
    secret = str(url.password)
    monkeypatch.setenv("CHILD_RECORD", str(pytester.path / "record.txt"))
    project(pytester, files={"test_failing": FAILING})
    loud = ("-p", "no:cacheprovider", "-vv", "-l", "--setup-show", "--tb=long")
    for where in (url, url.set(port=1)):  # the server, and nothing listening
        monkeypatch.setenv("ASYNCDAL_TEST_URL", where.render_as_string(hide_password=False))
        result = await asyncio.to_thread(pytester.runpytest_subprocess, *loud)
        output = result.stdout.str() + result.stderr.str()
        assert result.ret == pytest.ExitCode.TESTS_FAILED
        assert "***" in output  # the URL is shown, masked
        assert secret not in output


UNRELATED_CONFTEST = """
import sys

HEAVY = ("sqlalchemy", "asyncpg", "aiosqlite", "alembic", "asyncdal.database")


def pytest_sessionfinish(session):
    loaded = sorted(name for name in HEAVY if name in sys.modules)
    print(f"\\nplugin registered: {session.config.pluginmanager.has_plugin('asyncdal')}")
    print(f"heavy modules imported: {loaded}")
"""


def test_an_unrelated_project_runs_as_without_the_plugin(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(UNRELATED_CONFTEST)
    pytester.makepyfile(test_plain="def test_plain():\n    assert 1 + 1 == 2\n")
    result = pytester.runpytest_subprocess("-p", "asyncdal", "-s", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["plugin registered: True", "heavy modules imported: []"])
    assert not list(Path(str(pytester.path)).rglob("asyncdal*"))  # no database, no files
    fixtures = pytester.runpytest_subprocess("-p", "asyncdal", "--fixtures")
    fixtures.stdout.fnmatch_lines(["*asyncdal_db*", "*asyncdal_committing_db*"])
