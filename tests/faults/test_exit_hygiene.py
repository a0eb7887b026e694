"""Exit hygiene: a process that used a ``Database`` exits promptly, with or without ``dispose()``.

A child process runs a few units of work on PostgreSQL and on a SQLite file, optionally disposes
both databases, then reports (as JSON) its backends left in ``pg_stat_activity`` and its threads
once ``asyncio.run()`` has returned, and the moment it is done. The test times the exit from
there: nothing may keep the interpreter alive (SQLite's driver threads, pooled sockets).
"""

from __future__ import annotations

import asyncio
import json
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from asyncdal import Database, DatabaseSettings
from asyncdal.migrations import upgrade
from tests._figures import Figure
from tests.faults._cluster import NewDatabase, wait_for_no_backends
from tests.support import pg_admin_dsn

pytestmark = [pytest.mark.postgres, pytest.mark.sqlite]

REPO = Path(__file__).resolve().parents[2]
EXIT_WITHIN = 5.0
CHILD = textwrap.dedent(
    """
    import asyncio, json, sys, threading, time
    import asyncpg
    from asyncdal import Database, DatabaseSettings
    from asyncdal.models import User
    from asyncdal.users import UserUnitOfWork

    pg_url, sqlite_url, app_name, admin_dsn, dispose = sys.argv[1:6]

    async def backends() -> int:
        admin = await asyncpg.connect(
            admin_dsn, server_settings={"application_name": app_name + "-admin"}
        )
        try:
            return await admin.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", app_name
            )
        finally:
            await admin.close()

    async def use(db) -> None:
        for i in range(3):
            async with db.unit_of_work() as uow:
                await uow.users.add(User(name=f"exit-{i}", age=i))
                await uow.commit()

        async def read() -> None:
            async with db.unit_of_work(read_only=True) as uow:
                await uow.users.count()

        await asyncio.gather(*(read() for _ in range(4)))

    async def main() -> int:
        databases = [
            Database(DatabaseSettings(url, application_name=app_name), unit_of_work=UserUnitOfWork)
            for url in (pg_url, sqlite_url)
        ]
        for db in databases:
            await use(db)
        if dispose == "dispose":
            for db in databases:
                await db.dispose()
            # A closed connection's backend exits a moment after the socket closes.
            for _ in range(100):
                if await backends() == 0:
                    break
                await asyncio.sleep(0.02)
        return await backends()

    left = asyncio.run(main())
    others = [t for t in threading.enumerate() if t is not threading.main_thread()]
    print(json.dumps({
        "backends": left,
        "threads": [t.name for t in others],
        "non_daemon_threads": [t.name for t in others if not t.daemon],
        "done_at": time.time(),
    }), flush=True)
    """
)


async def _migrated_sqlite(path: Path) -> str:
    url = f"sqlite+aiosqlite:///{path}"
    async with Database(DatabaseSettings(url)) as db:
        await upgrade(db)
    return url


@pytest.mark.parametrize("dispose", ["dispose", "no dispose"])
async def test_a_process_that_used_a_database_exits_within_5_s_and_dispose_leaves_nothing(
    dispose: str,
    new_database: NewDatabase,
    tmp_path: Path,
    app_name: str,
    figure: Figure,
) -> None:
    pg_url = await new_database()
    sqlite_url = await _migrated_sqlite(tmp_path / "exit.db")
    admin_dsn = pg_admin_dsn(pg_url)
    child = await asyncio.create_subprocess_exec(
        # ResourceWarnings shown: an unclosed connection or socket would print one at exit.
        sys.executable, "-W", "default::ResourceWarning", "-c", CHILD,
        pg_url, sqlite_url, app_name, admin_dsn, dispose,
        cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert child.stdout is not None
        line = await asyncio.wait_for(child.stdout.readline(), timeout=60)
        assert line, "the child reported nothing"
        report: dict[str, Any] = json.loads(line)
        try:
            await asyncio.wait_for(child.wait(), timeout=EXIT_WITHIN + 10)
        except TimeoutError:
            pytest.fail(f"the child did not exit within {EXIT_WITHIN + 10} s of finishing")
        exit_took = time.time() - report["done_at"]
        _, stderr = await child.communicate()
    finally:
        if child.returncode is None:
            child.kill()
            await child.communicate()

    errors = stderr.decode(errors="replace")
    assert child.returncode == 0, errors[-2000:]
    assert "Traceback" not in errors, errors[-2000:]
    assert "Exception ignored" not in errors, errors[-2000:]
    unclosed = errors.count("ResourceWarning: ") - errors.count("ResourceWarning: Enable")
    assert exit_took < EXIT_WITHIN, f"exit took {exit_took:.2f} s after the work was done"
    assert report["non_daemon_threads"] == []
    if dispose == "dispose":
        assert report["backends"] == 0, "backends outlived dispose()"
        assert report["threads"] == [], f"threads outlived dispose(): {report['threads']}"
        assert errors == "", f"disposed, yet the child left this on stderr: {errors[-2000:]}"
    else:
        assert report["backends"] > 0, "the pool kept no connection: the test proved nothing"
    # Either way the server lets go of the child's backends once it is gone.
    assert await wait_for_no_backends(admin_dsn, app_name) == 0
    figure(
        f"{dispose}: exited {exit_took:.2f} s after its work, {report['backends']} backends "
        f"and {len(report['threads'])} threads ({len(report['non_daemon_threads'])} non-daemon) "
        f"left before exit, {unclosed} ResourceWarnings at exit, 0 backends after"
    )
