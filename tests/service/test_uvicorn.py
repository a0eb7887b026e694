"""The example service under a real uvicorn, on both backends: 64 clients x 20 requests of a
mixed workload (no 5xx, the rows are what was acknowledged), then SIGTERM with requests in
flight: they complete, the pool is disposed, uvicorn shuts down cleanly, no backend is left."""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from collections.abc import Callable

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import make_url

from tests.faults._cluster import backend_pids
from tests.service._uvicorn import Uvicorn, mixed_workload
from tests.support import Backend, pg_admin_dsn

pytestmark = pytest.mark.slow

CLIENTS, REQUESTS, IN_FLIGHT = 64, 20, 8


async def _rows(url: str) -> dict[int, int]:
    """Every user's id and age, read around the service."""
    if url.startswith("sqlite"):
        file = sqlite3.connect(make_url(url).database or "")
        try:
            return dict(file.execute("SELECT id, age FROM users").fetchall())
        finally:
            file.close()
    server = await asyncpg.connect(pg_admin_dsn(url, make_url(url).database or ""))
    try:
        return {row["id"]: row["age"] for row in await server.fetch("SELECT id, age FROM users")}
    finally:
        await server.close()


class Blocker:
    """Makes requests wait from outside the service: PostgreSQL, the rows locked FOR UPDATE;
    SQLite, the write lock. ``release()`` rolls that back."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._sqlite: sqlite3.Connection | None = None
        self._pg: asyncpg.Connection | None = None

    async def hold(self, ids: list[int]) -> None:
        if self._url.startswith("sqlite"):
            self._sqlite = sqlite3.connect(make_url(self._url).database or "", isolation_level=None)
            self._sqlite.execute("BEGIN IMMEDIATE")
            return
        self._pg = await asyncpg.connect(
            pg_admin_dsn(self._url, make_url(self._url).database or "")
        )
        await self._pg.execute("BEGIN")
        await self._pg.execute("SELECT id FROM users WHERE id = ANY($1) FOR UPDATE", ids)

    async def release(self) -> None:
        if self._sqlite is not None:
            self._sqlite.execute("ROLLBACK")
            self._sqlite.close()
        if self._pg is not None:
            await self._pg.execute("ROLLBACK")
            await self._pg.close()


async def test_uvicorn_serves_a_mixed_load_then_shuts_down_gracefully_on_sigterm(
    backend: Backend, empty_url: str, figure: Callable[[str], None]
) -> None:
    app_name = f"asyncdal-uvicorn-{uuid.uuid4().hex[:8]}"
    server = Uvicorn(empty_url, app_name)
    try:
        await server.ready()
        load = await mixed_workload(server.base_url, CLIENTS, REQUESTS)
        total = sum(load.statuses.values())
        figure(
            f"{backend.name}: {CLIENTS} clients x {REQUESTS} requests: {total} requests in "
            f"{load.seconds:.2f} s = {total / load.seconds:.0f} requests/s, "
            f"p50 {load.percentile(0.5) * 1000:.1f} ms, p99 {load.percentile(0.99) * 1000:.1f} ms, "
            f"{load.server_errors} 5xx; statuses {dict(sorted(load.statuses.items()))}"
        )
        assert total == CLIENTS * REQUESTS
        assert load.server_errors == 0, load.statuses
        assert await _rows(empty_url) == load.ages

        # SIGTERM with requests in flight, held back by a lock from outside.
        targets = sorted(load.ages)[:IN_FLIGHT]
        blocker = Blocker(empty_url)
        await blocker.hold(targets)
        async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as http:
            if backend.name == "sqlite":
                sent = [
                    http.post("/users", json={"name": f"late {n}", "age": n})
                    for n in range(IN_FLIGHT)
                ]
            else:
                sent = [http.patch(f"/users/{i}", json={"age": 149}) for i in targets]
            in_flight = [asyncio.ensure_future(request) for request in sent]
            metrics = await _wait_in_flight(http, IN_FLIGHT)
            terminated = time.monotonic()
            server.terminate()
            await asyncio.sleep(0.5)
            still_running = server.process.poll() is None
            done_before_release = sum(request.done() for request in in_flight)
            await blocker.release()
            responses = await asyncio.gather(*in_flight)
        finished = time.monotonic() - terminated
        output = await asyncio.to_thread(server.finish)
        exited = time.monotonic() - terminated
        left = await _backends_left(backend, empty_url, app_name)
        statuses = sorted(response.status_code for response in responses)
        figure(
            f"{backend.name}: SIGTERM with {metrics} units of work in flight; "
            f"{done_before_release} done before the lock was released 0.5 s later, "
            f"{len(responses)} finished {statuses[0]}..{statuses[-1]} by +{finished:.2f} s, "
            f"0 cancelled; exit {server.process.returncode} at +{exited:.2f} s; "
            f"{left} backends left"
        )
        assert still_running
        assert done_before_release == 0
        assert statuses == [200 if backend.name == "postgres" else 201] * IN_FLIGHT
        assert server.process.returncode in (0, -15), output
        assert "Application shutdown complete." in output
        assert "Finished server process" in output
        # asyncdal's own line from dispose(timeout=): uvicorn had drained the requests by then.
        assert "0 units of work in flight, 0 finished, 0 cancelled" in output
        assert "database disposed; connections still checked out: {'primary': 0}" in output
        assert left == 0
        rows = await _rows(empty_url)
        assert len(rows) == len(load.ages) + (IN_FLIGHT if backend.name == "sqlite" else 0)
    finally:
        if server.process.poll() is None:
            server.process.kill()
            server.finish()


async def _wait_in_flight(http: httpx.AsyncClient, n: int) -> int:
    """Wait until the service reports ``n`` units of work in flight (from ``/metrics``)."""
    for _ in range(300):
        in_flight = (await http.get("/metrics")).json()["units_of_work"]["in_flight"]
        if in_flight >= n:
            return int(in_flight)
        await asyncio.sleep(0.02)
    raise AssertionError(f"never saw {n} units of work in flight")


async def _backends_left(backend: Backend, url: str, app_name: str) -> int:
    if backend.name != "postgres":
        return 0
    return len(await backend_pids(pg_admin_dsn(url), app_name))
