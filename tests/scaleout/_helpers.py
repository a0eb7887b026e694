"""Helpers for the scale-out tests: the servers' URLs, replay control, where a read ran."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
from sqlalchemy import text

from asyncdal import UnitOfWork
from asyncdal.routing import parse_position
from tests.scaleout._topology import Topology

#: The test database on the topology (one per session; tests empty its tables).
DATABASE = "asyncdal_scaleout"


@dataclass(frozen=True)
class Servers:
    """The topology's URLs for the test database."""

    topology: Topology

    @property
    def primary_url(self) -> str:
        return self.topology.primary.url(DATABASE)

    @property
    def primary_dsn(self) -> str:
        return self.topology.primary.dsn(DATABASE)

    @property
    def replica_urls(self) -> tuple[str, ...]:
        return tuple(replica.url(DATABASE) for replica in self.topology.replicas)

    @property
    def replica_dsns(self) -> tuple[str, ...]:
        return tuple(replica.dsn(DATABASE) for replica in self.topology.replicas)

    @property
    def pgbouncer_url(self) -> str:
        return self.topology.pgbouncer.url(DATABASE)

    @property
    def primary_port(self) -> int:
        return self.topology.primary.port

    @property
    def replica_ports(self) -> tuple[int, ...]:
        return tuple(replica.port for replica in self.topology.replicas)


async def port_of(uow: UnitOfWork) -> int:
    """The port of the server a unit of work runs on (``inet_server_port()``)."""
    port: int = (await uow.session.execute(text("SELECT inet_server_port()"))).scalar_one()
    return port


async def scalar(dsn: str, query: str, *args: object) -> object:
    """One value from a fresh plain asyncpg connection."""
    connection = await asyncpg.connect(dsn)
    try:
        return await connection.fetchval(query, *args)
    finally:
        await connection.close()


async def wait_until_replayed(servers: Servers, within: float = 30.0) -> None:
    """Until every replica has replayed the primary's current WAL position."""
    target = parse_position(
        str(await scalar(servers.primary_dsn, "SELECT pg_current_wal_lsn()::text"))
    )
    deadline = time.monotonic() + within
    for replica in servers.topology.replicas:
        dsn = replica.dsn()  # the maintenance database: ours may not have replayed yet
        while True:
            found = await scalar(dsn, "SELECT pg_last_wal_replay_lsn()::text")
            if found is not None and parse_position(str(found)) >= target:
                break
            assert time.monotonic() < deadline, f"a replica did not catch up within {within} s"
            await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def replay_paused(dsn: str) -> AsyncIterator[None]:
    """``pg_wal_replay_pause()`` on a replica; resumed on the way out, always."""
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute("SELECT pg_wal_replay_pause()")
        state = "pause requested"
        while state != "paused":  # a pause takes effect at the next record replayed
            await asyncio.sleep(0.01)
            state = await connection.fetchval("SELECT pg_get_wal_replay_pause_state()")
        yield
    finally:
        try:
            await connection.execute("SELECT pg_wal_replay_resume()")
        finally:
            await connection.close()
