"""Migrations under pressure: replicas migrating at once, and a revision that fails halfway.

Eight processes (four ``alembic upgrade head``, four ``asyncdal.migrations.upgrade``) start on one
fresh PostgreSQL database, held at the advisory lock until all eight wait there, then let go
together. An event trigger the test installs logs every DDL command that commits: each revision's
DDL must appear once. A revision that fails after its first DDL must leave nothing behind.
"""

from __future__ import annotations

import asyncio
import collections
import os
import shutil
import sys
import textwrap
import time
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.exc import DBAPIError

from asyncdal import Database, DatabaseSettings, migrations
from asyncdal.errors import DataAccessError
from asyncdal.migrations import ADVISORY_LOCK_KEY, head, script_location
from tests._figures import Figure
from tests.faults._cluster import NewDatabase
from tests.support import pg_admin_dsn

pytestmark = pytest.mark.postgres

REPO = Path(__file__).resolve().parents[2]
ALEMBIC = Path(sys.executable).with_name("alembic")
UPGRADE_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from asyncdal import Database, DatabaseSettings
    from asyncdal.migrations import upgrade

    async def main() -> None:
        settings = DatabaseSettings(sys.argv[1], application_name=sys.argv[2])
        async with Database(settings) as db:
            await upgrade(db)

    asyncio.run(main())
    """
)
DDL_LOG = """
CREATE TABLE ddl_log (
    tag text NOT NULL, object_identity text, application_name text, pid int NOT NULL
);
CREATE FUNCTION log_ddl() RETURNS event_trigger LANGUAGE plpgsql AS $$
DECLARE command record;
BEGIN
    FOR command IN SELECT * FROM pg_event_trigger_ddl_commands() LOOP
        INSERT INTO ddl_log VALUES (command.command_tag, command.object_identity,
                                    current_setting('application_name'), pg_backend_pid());
    END LOOP;
END $$;
CREATE EVENT TRIGGER log_ddl ON ddl_command_end EXECUTE FUNCTION log_ddl();
"""


def _env(url: str, app_name: str) -> dict[str, str]:
    return {**os.environ, "DATABASE_URL": url, "ASYNCDAL_APPLICATION_NAME": app_name}


async def _waiting_at_the_lock(admin: asyncpg.Connection, app_name: str) -> int:
    waiting: int = await admin.fetchval(
        "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
        "WHERE l.locktype = 'advisory' AND NOT l.granted AND a.application_name LIKE $1",
        f"{app_name}-%",
    )
    return waiting


@pytest.mark.slow
async def test_eight_concurrent_upgrades_all_succeed_and_apply_each_revision_once(
    new_database: NewDatabase, app_name: str, figure: Figure
) -> None:
    url = await new_database(migrate=False)
    admin = await asyncpg.connect(
        pg_admin_dsn(url, database=url.rsplit("/", 1)[1]),
        server_settings={"application_name": f"{app_name}-admin"},
    )
    processes: list[asyncio.subprocess.Process] = []
    try:
        await admin.execute(DDL_LOG)
        # Hold the migrations' advisory lock, so that all eight queue at it and then race.
        await admin.execute("SELECT pg_advisory_lock($1)", ADVISORY_LOCK_KEY)
        for i in range(4):
            name = f"{app_name}-cli-{i}"
            processes.append(
                await asyncio.create_subprocess_exec(
                    str(ALEMBIC), "upgrade", "head", cwd=REPO, env=_env(url, name),
                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                )
            )  # fmt: skip
            name = f"{app_name}-api-{i}"
            processes.append(
                await asyncio.create_subprocess_exec(
                    sys.executable, "-c", UPGRADE_SCRIPT, url, name, cwd=REPO,
                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                )
            )  # fmt: skip
        deadline = time.monotonic() + 60
        while (waiting := await _waiting_at_the_lock(admin, app_name)) < len(processes):
            exited = [p for p in processes if p.returncode is not None]
            assert not exited, "an upgrade finished while another replica held the lock"
            assert time.monotonic() < deadline, f"only {waiting} of 8 upgrades queued at the lock"
            await asyncio.sleep(0.05)
        await admin.execute("SELECT pg_advisory_unlock($1)", ADVISORY_LOCK_KEY)

        outputs = await asyncio.wait_for(
            asyncio.gather(*(p.communicate() for p in processes)), timeout=60
        )
        failed = [
            (p.returncode, err.decode(errors="replace")[-2000:])
            for p, (_, err) in zip(processes, outputs, strict=True)
            if p.returncode != 0
        ]
        assert not failed, f"{len(failed)} of 8 upgrades failed: {failed}"

        rows = await admin.fetch("SELECT tag, object_identity, application_name, pid FROM ddl_log")
        applied = collections.Counter((row["tag"], row["object_identity"]) for row in rows)
        expected = {
            ("CREATE TABLE", "public.alembic_version"),
            ("CREATE TABLE", "public.users"),
            ("CREATE TABLE", "public.posts"),
            ("CREATE INDEX", "public.ix_posts_author_id"),
        }
        assert expected <= set(applied), f"DDL missing from the log: {applied}"
        twice = {ddl: n for ddl, n in applied.items() if n != 1}
        assert not twice, f"DDL applied more than once: {twice}"
        appliers = {(row["application_name"], row["pid"]) for row in rows}
        assert len(appliers) == 1, f"several processes ran DDL: {appliers}"
        versions = await admin.fetch("SELECT version_num FROM alembic_version")
        assert [row["version_num"] for row in versions] == [head()]
        figure(
            f"8/8 upgrades succeeded (4 alembic CLI, 4 asyncdal.migrations.upgrade), "
            f"{len(rows)} DDL commands logged, each once, all by 1 process "
            f"({next(iter(appliers))[0].removeprefix(app_name + '-')})"
        )
    finally:
        for process in processes:
            if process.returncode is None:
                process.kill()
                await process.communicate()
        await admin.close()


FAILING_REVISION = '''"""creates a table and a column, then fails

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("halfway", sa.Column("id", sa.Integer(), primary_key=True))
    op.add_column("users", sa.Column("nickname", sa.String(50), nullable=True))
    op.execute("INSERT INTO alembic_version VALUES ('bogus')")
    op.execute("SELECT 1 / 0")  # division_by_zero: the revision fails halfway


def downgrade() -> None:
    op.drop_column("users", "nickname")
    op.drop_table("halfway")
'''


@pytest.fixture
def failing_scripts(tmp_path: Path) -> Path:
    """A copy of the real Alembic scripts plus a revision 0002 that fails halfway."""
    source = script_location()
    scripts = tmp_path / "alembic"
    (scripts / "versions").mkdir(parents=True)
    shutil.copy(source / "env.py", scripts / "env.py")
    shutil.copy(source / "script.py.mako", scripts / "script.py.mako")
    for revision in (source / "versions").glob("0001_*.py"):
        shutil.copy(revision, scripts / "versions" / revision.name)
    (scripts / "versions" / "0002_fails_halfway.py").write_text(FAILING_REVISION)
    # The repository's alembic.ini (env.py reads its logging sections), pointed at the copy.
    ini = (REPO / "alembic.ini").read_text()
    ini = ini.replace("script_location = %(here)s/alembic", f"script_location = {scripts}")
    assert str(scripts) in ini
    (tmp_path / "alembic.ini").write_text(ini)
    return scripts


async def _schema_and_version(url: str) -> tuple[list[str], list[str], list[str]]:
    admin = await asyncpg.connect(
        pg_admin_dsn(url, database=url.rsplit("/", 1)[1]),
        server_settings={"application_name": "asyncdal-faults-inspect"},
    )
    try:
        tables = await admin.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
        )
        columns = await admin.fetch(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_name = 'users' ORDER BY ordinal_position"
        )
        versions = await admin.fetch("SELECT version_num FROM alembic_version ORDER BY 1")
    finally:
        await admin.close()
    return (
        [row[0] for row in tables],
        [row[0] for row in columns],
        [row[0] for row in versions],
    )


@pytest.mark.parametrize("runner", ["alembic command line", "asyncdal.migrations.upgrade"])
async def test_a_revision_that_fails_halfway_leaves_schema_and_version_unchanged(
    runner: str,
    failing_scripts: Path,
    monkeypatch: pytest.MonkeyPatch,
    new_database: NewDatabase,
    app_name: str,
    figure: Figure,
) -> None:
    url = await new_database(migrate=True)  # at 0001, by the real scripts
    before = await _schema_and_version(url)
    assert before[2] == ["0001"]

    if runner == "alembic command line":
        process = await asyncio.create_subprocess_exec(
            str(ALEMBIC), "-c", str(failing_scripts.parent / "alembic.ini"), "upgrade", "head",
            cwd=REPO, env=_env(url, app_name),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
        assert process.returncode != 0
        assert b"division by zero" in stderr, stderr.decode(errors="replace")[-2000:]
    else:
        # asyncdal.migrations.upgrade() itself, on the application's engine, reading the copy.
        monkeypatch.setattr(migrations, "script_location", lambda: failing_scripts)
        async with Database(DatabaseSettings(url, application_name=app_name)) as db:
            with pytest.raises(DataAccessError, match="division by zero") as raised:
                await migrations.upgrade(db)
            assert isinstance(raised.value.__cause__, DBAPIError)
            assert await migrations.current(db) == "0001"

    after = await _schema_and_version(url)
    assert "halfway" not in after[0]
    assert "nickname" not in after[1]
    assert after == before, f"a failed revision changed the database: {before} -> {after}"
    figure(f"{runner}: 0002 failed; tables, columns and alembic_version {after[2]} unchanged")
