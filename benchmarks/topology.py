"""The scale-out comparison (``--replicas URL,...``, ``--pgbouncer URL``): the same unit of work on
the primary alone, routed to replicas, with read-your-writes, and through PgBouncer, in one run.

A scratch database is created on the primary (``--postgres``), migrated and seeded, and reached
through each replica (streaming replicas of that primary: they get it by replication) and through
PgBouncer (which must route any database name to the primary, e.g. ``* = host=... port=...``).

Stacks, all ``asyncdal`` units of work over ``Database(..., pool_size=N, max_overflow=0)``:

- ``primary``: the primary alone (reads in autocommit, read-only enforced by the server);
- ``replicas``: the same primary with ``replica_urls``: reads round robin on the replicas,
  writes on the primary plus the commit token (one more round trip per commit);
- ``replicas+after``: reads with ``after=token`` (verified on the replica: one more round trip);
- ``pgbouncer``: the primary through PgBouncer, ``pgbouncer=True`` (reads in BEGIN READ ONLY,
  unnamed prepared statements: two more round trips per read, one more per statement).

On one machine the replicas share the cores with the primary and the client: they cannot add
throughput here, the ratios show what routing costs.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import asyncpg
from rich.console import Console
from sqlalchemy.engine import make_url

from asyncdal import Database, DatabaseSettings
from asyncdal.routing import parse_position
from asyncdal.settings import mask_url
from asyncdal.users import UserUnitOfWork
from benchmarks.backends import BenchError, postgres_backend
from benchmarks.results import machine, versions, write
from benchmarks.runner import CellKey, Config, PassResult, _run_ops
from benchmarks.stacks import UowStack
from benchmarks.summary import Ratio, Summary, summarize
from benchmarks.tables import _rich, latency_text, markdown, throughput_text
from benchmarks.workloads import WORKLOADS, Context

BACKEND: Final = "postgresql"
STACKS: Final = ("primary", "replicas", "replicas+after", "pgbouncer")
#: (workload, stacks measured for it)
CELLS: Final = (("read", STACKS), ("write", ("primary", "replicas", "pgbouncer")))
#: (workload, numerator, denominator, what the ratio shows)
RATIOS: Final = (
    ("read", "replicas", "primary", "routing reads to replicas"),
    ("read", "replicas+after", "replicas", "after=token (its check on the replica)"),
    ("read", "pgbouncer", "primary", "PgBouncer (BEGIN READ ONLY, unnamed statements)"),
    ("write", "replicas", "primary", "the commit token"),
    ("write", "pgbouncer", "primary", "PgBouncer"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--replicas`` and ``--pgbouncer`` (the primary is ``--postgres``)."""
    parser.add_argument(
        "--replicas",
        metavar="URL,...",
        type=lambda text: tuple(part.strip() for part in text.split(",") if part.strip()),
        help="also compare reads on the --postgres primary alone with reads routed to these "
        "streaming replicas of it (see benchmarks/README.md, 'Scaling out')",
    )
    parser.add_argument(
        "--pgbouncer",
        metavar="URL",
        help="also compare the --postgres primary directly with it through this PgBouncer "
        "(transaction mode, routing any database name to the primary)",
    )


@dataclass(frozen=True, slots=True)
class Urls:
    """The scratch database as each stack reaches it. URLs hold passwords: never print them."""

    primary: str
    replicas: tuple[str, ...]
    pgbouncer: str | None

    def stacks(self) -> tuple[str, ...]:
        wanted = {"primary"}
        if self.replicas:
            wanted |= {"replicas", "replicas+after"}
        if self.pgbouncer:
            wanted.add("pgbouncer")
        return tuple(stack for stack in STACKS if stack in wanted)


class AfterTokenStack(UowStack):
    """``UowStack`` whose reads ask for a replica that has replayed a commit of its own."""

    token = "0/0"

    async def get_age(self, user_id: int) -> int | None:
        async with self._db.unit_of_work(read_only=True, after=self.token) as uow:
            user = await uow.users.get(user_id)
            return None if user is None else user.age


async def open_topology_stack(stack: str, urls: Urls, pool_size: int) -> UowStack:
    """The named stack over ``urls``; no work measured here."""
    common: dict[str, Any] = {"pool_size": pool_size, "max_overflow": 0}
    if stack == "pgbouncer":
        assert urls.pgbouncer is not None
        settings = DatabaseSettings(urls.pgbouncer, pgbouncer=True, **common)
    elif stack == "primary":
        settings = DatabaseSettings(urls.primary, **common)
    else:
        settings = DatabaseSettings(urls.primary, replica_urls=urls.replicas, **common)
    db = Database(settings, unit_of_work=UserUnitOfWork)
    if stack != "replicas+after":
        return UowStack(db)
    opened = AfterTokenStack(db)
    async with db.unit_of_work() as uow:  # a commit of this stack's own to read after
        await uow.commit()
    opened.token = uow.commit_token or "0/0"
    return opened


def _cells(config: Config, stacks: tuple[str, ...], pass_index: int) -> Iterator[CellKey]:
    shift = pass_index % len(stacks)  # rotate, as the main sweep does (see runner.cells)
    pool = config.pool_sizes[0]
    for workload, measured in CELLS:
        if workload not in config.workloads:
            continue
        order = [s for s in (*stacks[shift:], *stacks[:shift]) if s in measured]
        for concurrency in config.concurrency:
            for stack in order:
                yield CellKey(f"{BACKEND}-topology", workload, stack, concurrency, pool)


async def _run_cell(key: CellKey, urls: Urls, config: Config, pass_index: int) -> PassResult:
    stack = await open_topology_stack(key.stack, urls, key.pool_size or config.pool_sizes[0])
    try:
        workload = WORKLOADS[key.workload]
        seed = zlib.crc32(f"{config.seed}/{pass_index}/topology/{key}".encode())
        warm = Context(config.users, 1)
        warm.rng.seed(seed ^ 0x5A5A)
        warm_ops = max(config.warmup, min(key.concurrency, config.pool_sizes[0]))
        await _run_ops(stack, workload, warm, warm_ops, key.concurrency, "")
        gc.collect()
        ctx = Context(config.users, 1)
        ctx.rng.seed(seed)
        return await _run_ops(stack, workload, ctx, config.ops, key.concurrency, "")
    finally:
        await stack.close()


@asynccontextmanager
async def topology_urls(
    primary: str, replicas: tuple[str, ...], pgbouncer: str | None, users: int
) -> AsyncIterator[Urls]:
    """A seeded scratch database on ``primary``, once every replica has replayed it."""
    async with postgres_backend(primary, users) as backend:
        name = make_url(backend.url).database
        urls = Urls(
            backend.url,
            tuple(_with_database(url, name) for url in replicas),
            None if pgbouncer is None else _with_database(pgbouncer, name),
        )
        await _wait_for_replicas(backend.url, replicas)
        yield urls


def _with_database(url: str, name: str | None) -> str:
    return make_url(url).set(database=name).render_as_string(hide_password=False)


def _dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def _wait_for_replicas(primary: str, replicas: tuple[str, ...], within: float = 60) -> None:
    """Until each replica (asked on its own URL's database) has replayed the seeded data."""
    target = parse_position(await _fetch(primary, "SELECT pg_current_wal_lsn()::text"))
    deadline = time.monotonic() + within
    for replica in replicas:
        while True:
            found = await _fetch(replica, "SELECT pg_last_wal_replay_lsn()::text")
            if found == "":
                raise BenchError(f"--replicas: {mask_url(replica)} is not a streaming replica")
            if parse_position(found) >= target:
                break
            if time.monotonic() > deadline:
                raise BenchError(f"--replicas: {mask_url(replica)} did not catch up in {within} s")
            await asyncio.sleep(0.05)


async def _fetch(url: str, query: str) -> str:
    try:
        connection = await asyncpg.connect(_dsn(url))
    except (OSError, TimeoutError, asyncpg.PostgresError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise BenchError(f"cannot connect to {mask_url(url)}: {reason}") from None
    try:
        return str(await connection.fetchval(query) or "")
    finally:
        await connection.close()


def _ratio(
    found: dict[CellKey, Summary], workload: str, a: str, b: str, c: int, pool: int
) -> Ratio | None:
    key = f"{BACKEND}-topology"
    num = found.get(CellKey(key, workload, a, c, pool))
    den = found.get(CellKey(key, workload, b, c, pool))
    return None if num is None or den is None else Ratio.of(num.throughput, den.throughput)


def _tables(
    found: dict[CellKey, Summary], config: Config, stacks: tuple[str, ...]
) -> list[tuple[str, list[str], list[list[str]]]]:
    pool = config.pool_sizes[0]
    key = f"{BACKEND}-topology"
    throughput, latency, ratios = [], [], []
    for workload, measured in CELLS:
        for c in config.concurrency:
            row = [
                found.get(CellKey(key, workload, s, c, pool)) if s in measured else None
                for s in stacks
            ]
            if any(row):
                throughput.append([workload, str(c), *(throughput_text(s) for s in row)])
                latency.append([workload, str(c), *(latency_text(s) for s in row)])
    for workload, a, b, meaning in RATIOS:
        for c in config.concurrency:
            r = _ratio(found, workload, a, b, c, pool)
            if r is not None:
                ratios.append([workload, str(c), f"{a}/{b}", r.text(), meaning])
    passes = f"median of {config.repeat} passes" if config.repeat > 1 else "1 pass"
    return [
        (
            f"Scaling out · ratios of throughput · pool {pool}",
            ["workload", "c", "ratio", "value", "what it costs"],
            ratios,
        ),
        (
            f"Scaling out · ops/s, {passes} (± half the range)",
            ["workload", "c", *stacks],
            throughput,
        ),
        (
            "Scaling out · latency p50/p99 ms · client CPU µs per op",
            ["workload", "c", *stacks],
            latency,
        ),
    ]


async def run_topology(
    config: Config,
    primary: str,
    replicas: tuple[str, ...],
    pgbouncer: str | None,
    output: Path,
    console: Console,
    command: str,
    on_cell: Callable[[str], None] = lambda _text: None,
) -> dict[str, Any]:
    """Every pass over every topology cell; prints the tables, writes topology[-quick]-latest.*."""
    started = datetime.now(UTC)
    clock = time.perf_counter()
    passes: dict[CellKey, list[PassResult]] = {}
    async with topology_urls(primary, replicas, pgbouncer, config.users) as urls:
        stacks = urls.stacks()
        for pass_index in range(config.repeat):
            for key in _cells(config, stacks, pass_index):
                where = f"pass {pass_index + 1}/{config.repeat}"
                on_cell(f"topology {key.workload} c={key.concurrency} {key.stack} ({where})")
                passes.setdefault(key, []).append(await _run_cell(key, urls, config, pass_index))
    found = {key: summarize(key, results) for key, results in passes.items()}
    tables = _tables(found, config, stacks)
    for title, header, rows in tables:
        console.print(_rich(title, header, rows))
    doc = {
        "format": 1,
        "started_at": started.isoformat(timespec="seconds"),
        "wall_seconds": round(time.perf_counter() - clock, 1),
        "command": command,
        "machine": machine(),
        "versions": versions(),
        "urls": {
            "primary": mask_url(primary),
            "replicas": [mask_url(u) for u in replicas],
            "pgbouncer": None if pgbouncer is None else mask_url(pgbouncer),
        },
        "cells": [
            {
                "stack": s.key.stack,
                "workload": s.key.workload,
                "concurrency": s.key.concurrency,
                "pool_size": s.key.pool_size,
                "ops_per_s": s.throughput.median,
                "p99_ms": s.p99_ms.median,
                "cpu_us_per_op": s.cpu_us_per_op.median,
                "errors": s.errors,
                "per_pass": s.per_pass,
            }
            for s in found.values()
        ],
    }
    name = "quick-topology-latest" if config.quick else "topology-latest"
    json_path, _ = write(doc, output, f"topology-{started:%Y%m%d-%H%M%S}", name)
    (output / f"{name}.md").write_text(
        "\n\n".join(f"{t}:\n\n{markdown(h, r)}" for t, h, r in tables) + "\n"
    )
    console.print(f"topology: wrote {json_path} (+ {name}.json, {name}.md)")
    return doc
