"""Run the sweep: every cell (backend x workload x concurrency x pool size x stack), whole passes
repeated, each cell on a fresh stack: warm up, then time a fixed number of ops."""

from __future__ import annotations

import asyncio
import gc
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import make_url

from benchmarks.backends import Backend
from benchmarks.stacks import Stack, open_stack, pool_independent
from benchmarks.workloads import SINGLE_TASK, WORKLOADS, Context, Workload, increments

#: The row the lost-update check increments; the workloads never run at the same time as it.
CHECK_USER_ID = 1
CHECK_INCREMENTS = 150
CHECK_CONCURRENCY = 64


@dataclass(frozen=True, slots=True)
class Config:
    """What to run; validated by the command line."""

    backends: tuple[str, ...]
    workloads: tuple[str, ...]
    stacks: tuple[str, ...]
    concurrency: tuple[int, ...]
    pool_sizes: tuple[int, ...]
    repeat: int
    ops: int
    warmup: int
    users: int
    bulk_size: int
    seed: int
    quick: bool
    #: The event loop every stack runs on: "asyncio" or "uvloop" (see benchmarks.loops).
    loop: str = "asyncio"


@dataclass(frozen=True, slots=True)
class CellKey:
    """One cell of the sweep; ``pool_size`` is None for stacks that keep no pool."""

    backend: str
    workload: str
    stack: str
    concurrency: int
    pool_size: int | None


@dataclass(slots=True)
class PassResult:
    """One timed pass of one cell."""

    ops: int
    ok: int
    seconds: float
    latencies_ns: list[int]
    cpu_seconds: float
    errors: dict[str, int] = field(default_factory=dict)
    locked: int = 0
    samples: dict[str, str] = field(default_factory=dict)


def cells(config: Config, backend: str, pass_index: int = 0) -> Iterator[CellKey]:
    """The cells of one pass on one backend, stacks innermost so neighbours are compared.

    The stack order rotates with each pass: whichever stack runs first after another workload
    (or after seeding) pays for the server's catch-up work (autovacuum, checkpoints), measured
    here as up to 1.6x on PostgreSQL updates. Rotating spreads that cost over every stack
    instead of always charging it to the first one.
    """
    shift = pass_index % len(config.stacks)
    stacks = (*config.stacks[shift:], *config.stacks[:shift])
    for workload in config.workloads:
        levels = (1,) if workload in SINGLE_TASK else config.concurrency
        for concurrency in levels:
            for index, pool_size in enumerate(config.pool_sizes):
                for stack in stacks:
                    if pool_independent(stack, backend):
                        if index == 0:
                            yield CellKey(backend, workload, stack, concurrency, None)
                    else:
                        yield CellKey(backend, workload, stack, concurrency, pool_size)


def is_locked(error: BaseException) -> bool:
    """SQLite refused a lock (SQLITE_BUSY / SQLITE_LOCKED), anywhere in the exception chain."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        name = getattr(current, "sqlite_errorname", "")
        if isinstance(name, str) and name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
            return True
        orig = getattr(current, "orig", None)
        current = orig if isinstance(orig, BaseException) else current.__cause__
    return False


async def _run_ops(
    stack: Stack, workload: Workload, ctx: Context, ops: int, concurrency: int, redact: str
) -> PassResult:
    remaining = ops
    latencies: list[int] = []
    errors: Counter[str] = Counter()
    samples: dict[str, str] = {}
    locked = 0

    async def worker() -> None:
        nonlocal remaining, locked
        while remaining > 0:
            remaining -= 1
            start = time.perf_counter_ns()
            try:
                await workload(stack, ctx)
            except Exception as error:
                kind = type(error).__name__
                errors[kind] += 1
                locked += is_locked(error)
                if kind not in samples:
                    message = str(error).splitlines()[0] if str(error) else kind
                    samples[kind] = (message.replace(redact, "***") if redact else message)[:200]
            else:
                latencies.append(time.perf_counter_ns() - start)

    cpu = time.process_time()
    wall = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for _ in range(min(concurrency, ops)):
            group.create_task(worker())
    seconds = time.perf_counter() - wall
    cpu_seconds = time.process_time() - cpu
    return PassResult(
        ops, len(latencies), seconds, latencies, cpu_seconds, dict(errors), locked, samples
    )


async def run_cell(
    key: CellKey, backend: Backend, config: Config, pass_index: int, redact: str
) -> PassResult:
    """Open a fresh stack, warm it up at the cell's concurrency, then time ``ops`` ops."""
    pool_size = key.pool_size or config.pool_sizes[0]
    stack = await open_stack(key.stack, backend.url, pool_size)
    try:
        workload = WORKLOADS[key.workload]
        bulk = key.workload in SINGLE_TASK
        seed = zlib.crc32(
            f"{config.seed}/{pass_index}/{key.workload}/{key.concurrency}/{key.stack}".encode()
        )
        warm = Context(config.users, max(1, config.bulk_size // 100))
        warm.rng.seed(seed ^ 0x5A5A)
        # Enough concurrent ops to open every pooled connection and fill the statement caches.
        warm_ops = 1 if bulk else max(config.warmup, min(key.concurrency, pool_size))
        await _run_ops(stack, workload, warm, warm_ops, key.concurrency, redact)
        # Start every timed part with the same heap: garbage left by the previous cell would
        # otherwise be collected on this one's clock.
        gc.collect()
        ctx = Context(config.users, config.bulk_size)
        ctx.rng.seed(seed)
        ops = 1 if bulk else config.ops
        return await _run_ops(stack, workload, ctx, ops, key.concurrency, redact)
    finally:
        await stack.close()


async def run_backend(
    backend: Backend,
    config: Config,
    on_cell: Callable[[CellKey, int], None],
    results: dict[CellKey, list[PassResult]],
) -> list[dict[str, Any]]:
    """All passes on one backend, then the lost-update check for each stack."""
    redact = _password(backend.url)
    for pass_index in range(config.repeat):
        for key in cells(config, backend.name, pass_index):
            on_cell(key, pass_index)
            result = await run_cell(key, backend, config, pass_index, redact)
            results.setdefault(key, []).append(result)
    checks: list[dict[str, Any]] = []
    for name in config.stacks:
        on_cell(CellKey(backend.name, "lost-update check", name, CHECK_CONCURRENCY, None), -1)
        stack = await open_stack(name, backend.url, config.pool_sizes[0])
        try:
            check = await increments(stack, CHECK_USER_ID, CHECK_INCREMENTS, CHECK_CONCURRENCY)
        finally:
            await stack.close()
        checks.append(
            {
                "backend": backend.name,
                "stack": name,
                "pool_size": None if pool_independent(name, backend.name) else config.pool_sizes[0],
                "concurrency": CHECK_CONCURRENCY,
                "increments": check.increments,
                "succeeded": check.succeeded,
                "final": check.final,
                "lost_updates": check.lost,
                "errors": check.errors,
            }
        )
    return checks


def _password(url: str) -> str:
    return make_url(url).password or ""


def total_steps(config: Config, backends: tuple[str, ...]) -> int:
    """How many progress steps the run takes (cells x passes + one check per stack)."""
    per_pass = sum(len(list(cells(config, name))) for name in backends)
    return per_pass * config.repeat + len(config.stacks) * len(backends)
