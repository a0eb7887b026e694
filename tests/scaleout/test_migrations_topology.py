"""Migrations in the topology: through PgBouncer, around it (``migration_url``), never on a
replica."""

from __future__ import annotations

import asyncio
import collections
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from asyncdal import Database, DatabaseSettings
from asyncdal.errors import ConfigurationError, UnavailableError
from asyncdal.migrations import current, head, upgrade
from tests._figures import Figure
from tests.faults._cluster import free_port
from tests.scaleout._helpers import Servers, wait_until_replayed

pytestmark = pytest.mark.postgres

REPO = Path(__file__).resolve().parents[2]

DDL_LOG = """
CREATE TABLE ddl_log (tag text NOT NULL, object_identity text, pid int NOT NULL);
CREATE FUNCTION log_ddl() RETURNS event_trigger LANGUAGE plpgsql AS $$
DECLARE command record;
BEGIN
    FOR command IN SELECT * FROM pg_event_trigger_ddl_commands() LOOP
        INSERT INTO ddl_log VALUES (command.command_tag, command.object_identity, pg_backend_pid());
    END LOOP;
END $$;
CREATE EVENT TRIGGER log_ddl ON ddl_command_end EXECUTE FUNCTION log_ddl();
"""


@pytest.fixture
async def fresh(servers: Servers) -> AsyncIterator[str]:
    """An empty database on the topology's primary (its name); dropped afterwards."""
    name = f"asyncdal_migrate_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(servers.topology.primary.dsn())
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield name
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


UPGRADE_SCRIPT = """
import asyncio, sys
from asyncdal import Database, DatabaseSettings
from asyncdal.migrations import upgrade

async def main() -> None:
    settings = DatabaseSettings(sys.argv[1], pgbouncer=True, application_name=sys.argv[2])
    async with Database(settings) as db:
        await upgrade(db)

asyncio.run(main())
"""


async def _upgrade_in_processes(url: str, count: int) -> list[tuple[int | None, bytes]]:
    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            UPGRADE_SCRIPT,
            url,
            f"migrate-{i}",
            cwd=REPO,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        for i in range(count)
    ]
    try:
        outputs = await asyncio.wait_for(
            asyncio.gather(*(process.communicate() for process in processes)), timeout=60
        )
    finally:
        for process in processes:
            if process.returncode is None:
                process.kill()
                await process.communicate()
    return [(p.returncode, err) for p, (_, err) in zip(processes, outputs, strict=True)]


@pytest.mark.parametrize("where", ["4 processes", "4 tasks in one process"])
async def test_four_concurrent_upgrades_through_pgbouncer_apply_each_revision_once(
    servers: Servers, fresh: str, figure: Figure, where: str
) -> None:
    url = servers.topology.pgbouncer.url(fresh)
    log = await asyncpg.connect(servers.topology.primary.dsn(fresh))
    try:
        await log.execute(DDL_LOG)
        if where == "4 processes":
            results = await _upgrade_in_processes(url, 4)
            failed = [err.decode(errors="replace")[-1500:] for code, err in results if code]
            assert not failed, failed
        else:
            dbs = [
                Database(DatabaseSettings(url, pgbouncer=True, application_name=f"migrate-{i}"))
                for i in range(4)
            ]
            try:
                await asyncio.wait_for(asyncio.gather(*(upgrade(db) for db in dbs)), timeout=60)
            finally:
                await asyncio.gather(*(db.dispose() for db in dbs))
        rows = await log.fetch("SELECT tag, object_identity, pid FROM ddl_log")
        versions = await log.fetch("SELECT version_num FROM alembic_version")
    finally:
        await log.close()
    applied = collections.Counter((row["tag"], row["object_identity"]) for row in rows)
    assert ("CREATE TABLE", "public.users") in applied
    assert {ddl: n for ddl, n in applied.items() if n != 1} == {}
    assert len({row["pid"] for row in rows}) == 1
    assert [row["version_num"] for row in versions] == [head()]
    figure(
        f"{where}, upgrade() through PgBouncer (server pool 2): 4/4 succeeded, "
        f"{len(rows)} DDL commands logged, each once, by 1 server backend"
    )


async def test_migration_url_bypasses_the_application_url(servers: Servers, fresh: str) -> None:
    through_bouncer = servers.topology.pgbouncer.url(fresh)
    direct = servers.topology.primary.url(fresh)
    nowhere = f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/{fresh}"
    async with Database(
        DatabaseSettings(through_bouncer, pgbouncer=True, migration_url=nowhere)
    ) as db:
        with pytest.raises(UnavailableError):  # it went to migration_url, not through PgBouncer
            await upgrade(db)
    async with Database(
        DatabaseSettings(through_bouncer, pgbouncer=True, migration_url=direct)
    ) as db:
        await upgrade(db)
        assert await current(db) == head()


async def test_upgrade_pointed_at_a_replica_refuses_at_once(
    servers: Servers, fresh: str, figure: Figure
) -> None:
    await wait_until_replayed(servers)  # the new database exists on the replica
    replica = servers.topology.replicas[0].url(fresh)
    for settings in (
        DatabaseSettings(replica),
        DatabaseSettings(servers.topology.primary.url(fresh), migration_url=replica),
    ):
        async with Database(settings) as db:
            started = time.monotonic()
            with pytest.raises(ConfigurationError, match=r"hot standby \(pg_is_in_recovery"):
                await upgrade(db)
            took = time.monotonic() - started
        assert took < 1.0
    async with Database(servers.topology.primary.url(fresh)) as db:
        assert await current(db) is None  # nothing ran anywhere
    figure(
        f"upgrade() on a replica: ConfigurationError (pg_is_in_recovery()) in {took * 1000:.0f} ms"
    )
