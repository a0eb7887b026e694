"""``python -m benchmarks growth``: what reads and writes cost as the table grows.

On each backend, in a fresh scratch database:

1. bulk writes: rows/s of ``add_many`` (tracked objects), ``insert_many`` (checked rows, COPY on
   PostgreSQL) and the driver's own best path (aiosqlite ``executemany``; asyncpg ``COPY``), on
   an empty table, in transactions of ``--batch`` rows, ``--repeat`` times;
2. seeds ``--rows`` users with ``insert_many``;
3. a page of 50 at depth 0, 10% and 99% of the table, by offset (``list(offset=N)``) and by
   keyset (``page(after=cursor)``), ``--samples`` times each, each in its own read-only unit of
   work;
4. one walk over every row by ``list()`` and by ``stream()``, each in a fresh process, with its
   rows/s and the peak RSS it added (``benchmarks/growth_memory.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import aiosqlite
import asyncpg
from rich.console import Console
from sqlalchemy import text
from sqlalchemy.engine import make_url

from asyncdal import Database, DatabaseSettings
from asyncdal._keyset import ordering
from asyncdal._model import model_info
from asyncdal.models import User
from asyncdal.users import UserUnitOfWork
from benchmarks.backends import (
    Backend,
    BenchError,
    check_postgres,
    postgres_backend,
    sqlite_backend,
)
from benchmarks.drivers import connect_kwargs
from benchmarks.growth_memory import MODES, URL_VARIABLE
from benchmarks.growth_report import print_report, write_report

ENV_PG_URL = "ASYNCDAL_BENCH_PG_URL"
PAGE = 50
DEPTHS = (("0%", 0.0), ("10%", 0.10), ("99%", 0.99))
_COLUMNS = ("name", "age", "created_at", "updated_at", "version")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text.replace("_", ""))
        except ValueError:
            value = low - 1
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}")
        return value

    return parse


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m benchmarks growth", description=__doc__.split("\n\n")[0])
    add = p.add_argument
    add("--rows", type=_at_least(PAGE * 2), default=10_000, metavar="N",
        help="users in the table for the page and walk measurements (default 10000)")  # fmt: skip
    add("--postgres", metavar="URL", default=os.environ.get(ENV_PG_URL),
        help=f"also run on PostgreSQL, in a scratch database (default: ${ENV_PG_URL})")  # fmt: skip
    add("--backends", default=None, metavar="LIST", help="sqlite,postgresql")
    add("--bulk-rows", type=_at_least(1), default=50_000, metavar="N",
        help="rows per bulk measurement (default 50000, at most --rows)")  # fmt: skip
    add("--batch", type=_at_least(1), default=10_000, metavar="N",
        help="rows per bulk transaction (default 10000)")  # fmt: skip
    add("--repeat", type=_at_least(1), default=5, metavar="N", help="bulk passes (default 5)")
    add("--samples", type=_at_least(1), default=20, metavar="N",
        help="timed pages per depth and method (default 20)")  # fmt: skip
    add("--stream-batch", type=_at_least(1), default=1000, metavar="N",
        help="stream() batch_size (default 1000)")  # fmt: skip
    add("--output", type=Path, default=Path(__file__).resolve().parent / "results", metavar="DIR")
    return p


def _users(start: int, count: int) -> list[dict[str, Any]]:
    return [{"name": f"grow {i}", "age": i % 151} for i in range(start, start + count)]


def _records(start: int, count: int) -> list[tuple[Any, ...]]:
    now = datetime.now(UTC)
    return [(f"grow {i}", i % 151, now, now, 1) for i in range(start, start + count)]


async def _timed(fn: Callable[[], Awaitable[None]]) -> float:
    started = time.perf_counter()
    await fn()
    return time.perf_counter() - started


async def _driver_bulk(backend: Backend, rows: int, batch: int) -> float:
    """The driver's best bulk path: one transaction per batch."""
    if backend.name == "sqlite":
        path = make_url(backend.url).database
        assert path is not None
        async with aiosqlite.connect(path, isolation_level=None) as conn:
            await conn.execute("PRAGMA journal_mode=WAL")
            await conn.execute("PRAGMA synchronous=NORMAL")
            sql = f"INSERT INTO users ({', '.join(_COLUMNS)}) VALUES (?, ?, ?, ?, ?)"

            async def sqlite_all() -> None:
                for start in range(0, rows, batch):
                    await conn.execute("BEGIN IMMEDIATE")
                    await conn.executemany(sql, _records(start, min(batch, rows - start)))
                    await conn.execute("COMMIT")

            return await _timed(sqlite_all)
    conn = await asyncpg.connect(**connect_kwargs(DatabaseSettings(backend.url)))
    try:

        async def copy_all() -> None:
            for start in range(0, rows, batch):
                async with conn.transaction():
                    await conn.copy_records_to_table(
                        "users", records=_records(start, min(batch, rows - start)), columns=_COLUMNS
                    )

        return await _timed(copy_all)
    finally:
        await conn.close()


async def bulk(db: Database[UserUnitOfWork], backend: Backend, args: Any) -> dict[str, Any]:
    """Rows/s of each bulk path, medians over passes, on an emptied table each time."""
    rows, batch = min(args.bulk_rows, args.rows), args.batch

    async def add_many() -> None:
        for start in range(0, rows, batch):
            async with db.unit_of_work() as uow:
                count = min(batch, rows - start)
                await uow.users.add_many([User(**row) for row in _users(start, count)])
                await uow.commit()

    async def insert_many() -> None:
        for start in range(0, rows, batch):
            async with db.unit_of_work() as uow:
                await uow.users.insert_many(_users(start, min(batch, rows - start)))
                await uow.commit()

    async def driver() -> None:
        await _driver_bulk(backend, rows, batch)

    paths: dict[str, Callable[[], Awaitable[None]]] = {
        "add_many": add_many,
        "insert_many": insert_many,
        "driver": driver,
    }
    rates: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(args.repeat):
        for name, fn in paths.items():
            await _empty(db)
            rates[name].append(rows / await _timed(fn))
    await _empty(db)
    return {
        "rows": rows,
        "batch": batch,
        "rows_per_s": {name: statistics.median(found) for name, found in rates.items()},
        "passes": rates,
    }


async def _empty(db: Database[UserUnitOfWork]) -> None:
    async with db.engine.begin() as conn:
        if db.backend == "postgresql":
            await conn.execute(text("TRUNCATE posts, users RESTART IDENTITY CASCADE"))
        else:
            await conn.execute(text("DELETE FROM users"))


async def seed(db: Database[UserUnitOfWork], rows: int) -> float:
    """Fill the table to ``rows`` users with insert_many; returns rows/s."""
    step = 50_000

    async def fill() -> None:
        for start in range(0, rows, step):
            async with db.unit_of_work() as uow:
                await uow.users.insert_many(_users(start, min(step, rows - start)))
                await uow.commit()

    seconds = await _timed(fill)
    async with db.engine.connect() as conn:
        await conn.execute(text("ANALYZE users" if db.backend == "postgresql" else "ANALYZE"))
    return rows / seconds


async def pages(db: Database[UserUnitOfWork], rows: int, samples: int) -> list[dict[str, Any]]:
    """Median and p95 latency (ms) of a page of 50 at each depth, by offset and by keyset."""
    info = model_info(User)
    by_id = ordering(info.mapper, "id", info.columns)
    found: list[dict[str, Any]] = []
    for label, share in DEPTHS:
        depth = min(rows - PAGE, int(rows * share))
        cursor = None
        if depth:
            async with db.unit_of_work(read_only=True) as uow:
                (before,) = await uow.users.list(order_by=User.id, offset=depth - 1, limit=1)
            # The cursor page() would hand out after the row at depth - 1.
            cursor = by_id.encode([before.id])

        async def by_offset(offset: int = depth) -> None:
            async with db.unit_of_work(read_only=True) as uow:
                got = await uow.users.list(order_by=User.id, offset=offset, limit=PAGE)
                assert len(got) == PAGE

        async def by_keyset(after: str | None = cursor) -> None:
            async with db.unit_of_work(read_only=True) as uow:
                got = await uow.users.page(order_by="id", limit=PAGE, after=after)
                assert len(got.items) == PAGE

        for method, fn in (("offset", by_offset), ("page", by_keyset)):
            await fn()  # warm-up: caches, plans, the pages' own blocks
            times = sorted([await _timed(fn) * 1000 for _ in range(samples)])
            found.append(
                {
                    "depth": label,
                    "depth_rows": depth,
                    "method": method,
                    "p50_ms": statistics.median(times),
                    "p95_ms": times[min(len(times) - 1, round(0.95 * (len(times) - 1)))],
                }
            )
    return found


async def walks(backend: Backend, batch: int) -> dict[str, Any]:
    """list() against stream() over every row, each in a fresh process."""
    modes = MODES if backend.name == "postgresql" else ("list", "stream")
    found: dict[str, Any] = {}
    env = {**os.environ, URL_VARIABLE: backend.url}
    for mode in modes:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "benchmarks.growth_memory", mode, str(batch),
            stdout=asyncio.subprocess.PIPE, env=env,
        )  # fmt: skip
        out, _ = await process.communicate()
        if process.returncode != 0:
            raise BenchError(f"the {mode} walk failed (exit {process.returncode})")
        found[mode] = json.loads(out.decode().strip().splitlines()[-1])
    return found


async def run_backend(backend: Backend, args: Any, console: Console) -> dict[str, Any]:
    settings = DatabaseSettings(backend.url, pool_size=4, max_overflow=0)
    async with Database(settings, unit_of_work=UserUnitOfWork) as db:
        console.print(f"[cyan]{backend.label}[/]: bulk writes ({args.bulk_rows:,} rows)")
        bulk_result = await bulk(db, backend, args)
        console.print(f"[cyan]{backend.label}[/]: seeding {args.rows:,} users with insert_many")
        seed_rate = await seed(db, args.rows)
        console.print(f"[cyan]{backend.label}[/]: pages at depth 0 / 10% / 99%")
        page_result = await pages(db, args.rows, args.samples)
    console.print(f"[cyan]{backend.label}[/]: list() and stream() walks, each in a new process")
    walk_result = await walks(backend, args.stream_batch)
    return {
        "backend": backend.name,
        "url": backend.masked_url,
        "server_version": backend.server_version,
        "bulk": bulk_result,
        "seed_rows_per_s": seed_rate,
        "pages": page_result,
        "walks": walk_result,
    }


async def run(args: Any, backends: Sequence[str], console: Console, argv: Sequence[str]) -> None:
    if "postgresql" in backends:
        await check_postgres(args.postgres)
    started = datetime.now(UTC)
    results = []
    for name in backends:
        context = sqlite_backend(0) if name == "sqlite" else postgres_backend(args.postgres, 0)
        async with context as backend:
            results.append(await run_backend(backend, args, console))
    print_report(console, results, args.rows)
    paths = write_report(results, args, started, argv)
    console.print("wrote " + " and ".join(str(p) for p in paths))


def main(argv: Sequence[str]) -> int:
    """Entry point of ``python -m benchmarks growth``; returns the exit status."""
    p = parser()
    args = p.parse_args(list(argv))
    chosen = args.backends or ("sqlite,postgresql" if args.postgres else "sqlite")
    backends = [b.strip() for b in chosen.split(",") if b.strip()]
    if not backends or any(b not in ("sqlite", "postgresql") for b in backends):
        p.error(f"--backends takes sqlite,postgresql, got {chosen!r}")
    if "postgresql" in backends and not args.postgres:
        p.error(f"--backends postgresql needs --postgres URL (or ${ENV_PG_URL})")
    console = Console() if Console().is_terminal else Console(width=140)
    try:
        asyncio.run(run(args, backends, console, argv))
    except BenchError as error:
        print(f"python -m benchmarks growth: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("python -m benchmarks growth: interrupted; scratch databases were dropped")
        return 130
    return 0
