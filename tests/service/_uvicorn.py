"""The example service as a real ``uvicorn`` process on a free port, and a client workload."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.faults._cluster import free_port

ROOT = Path(__file__).resolve().parents[2]


class Uvicorn:
    """``uvicorn examples.service.app:app`` from the repository root, as a user runs it."""

    def __init__(self, database_url: str, application_name: str) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "ASYNCDAL_APPLICATION_NAME": application_name,
            "SERVICE_SHUTDOWN_TIMEOUT": "5",
        }
        command = [sys.executable, "-m", "uvicorn", "examples.service.app:app"]
        options = ["--host", "127.0.0.1", "--port", str(self.port), "--no-access-log"]
        self.process = subprocess.Popen(
            [*command, *options],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.output = ""

    async def ready(self, within: float = 60) -> None:
        """Wait until ``/readyz`` answers 200."""
        deadline = time.monotonic() + within
        async with httpx.AsyncClient(base_url=self.base_url) as client:
            while True:
                if self.process.poll() is not None:
                    raise AssertionError(f"uvicorn exited at start:\n{self.finish()}")
                try:
                    if (await client.get("/readyz")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(f"uvicorn not ready in {within} s:\n{self.finish()}")
                await asyncio.sleep(0.1)

    def terminate(self) -> None:
        """SIGTERM, as an orchestrator stops a container."""
        self.process.send_signal(signal.SIGTERM)

    def finish(self, within: float = 30) -> str:
        """Wait for the process to exit (killing it past ``within``); everything it printed."""
        try:
            out, _ = self.process.communicate(timeout=within)
        except subprocess.TimeoutExpired:
            self.process.kill()
            out, _ = self.process.communicate()
        self.output += out or ""
        return self.output


@dataclass
class Load:
    """What a mixed workload sent and what the service acknowledged."""

    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    ages: dict[int, int] = field(default_factory=dict)  # acknowledged users -> acknowledged age
    seconds: float = 0.0

    def count(self, status: int, latency: float) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1
        self.latencies.append(latency)

    @property
    def server_errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status >= 500)

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


async def mixed_workload(base_url: str, clients: int, requests: int, seed: int = 9) -> Load:
    """``clients`` concurrent clients, each sending ``requests`` requests: create, read, list,
    change (with If-Match) and delete their own users."""
    load = Load()
    # Idle connections expire before uvicorn's keep-alive timeout (5 s) closes them under us.
    limits = httpx.Limits(
        max_connections=clients, max_keepalive_connections=clients, keepalive_expiry=2
    )
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=60) as http:

        async def call(method: str, url: str, **kwargs: object) -> httpx.Response:
            started = time.perf_counter()
            response = await http.request(method, url, **kwargs)  # type: ignore[arg-type]
            load.count(response.status_code, time.perf_counter() - started)
            return response

        async def client(number: int) -> dict[int, int]:
            """Run one client; the ages of its users as it last saw them acknowledged."""
            chance = random.Random(seed * 1000 + number)
            mine: dict[int, int] = {}  # id -> version
            ages: dict[int, int] = {}  # id -> age
            for step in range(requests):
                roll = chance.random()
                if not mine or roll < 0.3:
                    body = {"name": f"load {number}-{step}", "age": chance.randrange(150)}
                    response = await call("POST", "/users", json=body)
                    if response.status_code == 201:
                        created = response.json()
                        mine[created["id"]] = created["version"]
                        ages[created["id"]] = created["age"]
                elif roll < 0.55:
                    await call("GET", f"/users/{chance.choice(list(mine))}")
                elif roll < 0.7:
                    await call("GET", "/users", params={"limit": 20})
                elif roll < 0.9:
                    user_id = chance.choice(list(mine))
                    age = chance.randrange(150)
                    response = await call(
                        "PATCH",
                        f"/users/{user_id}",
                        json={"age": age},
                        headers={"If-Match": f'"{mine[user_id]}"'},
                    )
                    if response.status_code == 200:
                        mine[user_id] = response.json()["version"]
                        ages[user_id] = age
                else:
                    user_id = chance.choice(list(mine))
                    response = await call("DELETE", f"/users/{user_id}")
                    if response.status_code == 204:
                        del mine[user_id]
                        del ages[user_id]
            return ages

        started = time.perf_counter()
        # Each client keeps its own book: SQLite hands a deleted highest id to the next insert, so
        # one client's 201 for id N can arrive before another's 204 for its old id N.
        for ages in await asyncio.gather(*(client(number) for number in range(clients))):
            load.ages.update(ages)
        load.seconds = time.perf_counter() - started
    return load
