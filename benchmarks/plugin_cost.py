"""What isolating a test costs: ``python -m benchmarks.plugin_cost [--postgres URL]``.

Generates a pytest project whose tests each commit one row, through ``asyncdal_db`` (a rolled
back outer transaction) or ``asyncdal_committing_db`` (real commits, tables emptied after), and
times whole pytest runs of it in child processes. The cost per test is the difference between a
run of ``--tests`` tests and one of ``--baseline`` tests, divided by the difference in count, so
interpreter start, collection and the session's scratch database drop out. Both pytest-asyncio
loop scopes are measured: on a function-scoped loop each test also builds its own ``Database``
(a connect on PostgreSQL); on a session-scoped loop the pool is shared.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy.engine import make_url

TEST_FILE = """
import pytest

from asyncdal.models import User
from asyncdal.users import UserUnitOfWork


@pytest.fixture(scope="session")
def asyncdal_unit_of_work():
    return UserUnitOfWork


@pytest.mark.parametrize("n", range({count}))
async def test_commits_a_row({fixture}, n):
    async with {fixture}.unit_of_work() as uow:
        await uow.users.add(User(name=f"user {{n}}", age=n % 100))
        await uow.commit()
"""

INI = """[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = {loop}
asyncio_default_test_loop_scope = {loop}
"""


def _run(directory: Path, url: str | None) -> float:
    environment = dict(os.environ)
    environment.pop("ASYNCDAL_TEST_URL", None)
    if url:
        environment["ASYNCDAL_TEST_URL"] = url
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist"],
        cwd=directory,
        env=environment,
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"the generated tests failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return elapsed


def _project(root: Path, fixture: str, loop: str, count: int) -> Path:
    directory = root / f"{fixture}-{loop}-{count}"
    directory.mkdir(exist_ok=True)
    (directory / "pytest.ini").write_text(INI.format(loop=loop))
    (directory / "test_cost.py").write_text(TEST_FILE.format(count=count, fixture=fixture))
    return directory


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--postgres", metavar="URL", help="also measure on this server")
    parser.add_argument("--tests", type=int, default=500)
    parser.add_argument("--baseline", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=3, help="runs per cell (median shown)")
    args = parser.parse_args(argv)
    backends: list[tuple[str, str | None]] = [("SQLite", None)]
    if args.postgres:
        backends.append(("PostgreSQL", args.postgres))
    print(
        f"ms per test: ({args.tests} tests - {args.baseline} tests) / {args.tests - args.baseline}"
    )
    print(f"{'backend':<11} {'loop':<9} {'asyncdal_db':>12} {'committing':>11} {'ratio':>6}")
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        for name, url in backends:
            for loop in ("function", "session"):
                cost: dict[str, float] = {}
                for fixture in ("asyncdal_db", "asyncdal_committing_db"):
                    big = _project(root, fixture, loop, args.tests)
                    small = _project(root, fixture, loop, args.baseline)
                    samples = [
                        (_run(big, url) - _run(small, url)) / (args.tests - args.baseline)
                        for _ in range(args.repeat)
                    ]
                    cost[fixture] = statistics.median(samples) * 1000
                ratio = cost["asyncdal_committing_db"] / cost["asyncdal_db"]
                print(
                    f"{name:<11} {loop:<9} {cost['asyncdal_db']:>12.2f} "
                    f"{cost['asyncdal_committing_db']:>11.2f} {ratio:>6.1f}",
                    flush=True,
                )
    if args.postgres:
        print(f"PostgreSQL: {make_url(args.postgres)!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
