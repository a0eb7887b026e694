"""``python -m benchmarks``: check the options, run the sweep with a progress bar, report."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from asyncdal.settings import mask_url
from benchmarks import loops
from benchmarks.backends import (
    Backend,
    BenchError,
    check_postgres,
    postgres_backend,
    sqlite_backend,
)
from benchmarks.plot import plot
from benchmarks.results import document, write
from benchmarks.runner import CellKey, Config, PassResult, run_backend, total_steps
from benchmarks.stacks import OPTIONAL_STACKS, STACKS
from benchmarks.summary import Results, ratio_rows, summarize
from benchmarks.tables import markdown_report, print_report
from benchmarks.topology import add_arguments as add_topology_arguments
from benchmarks.topology import run_topology
from benchmarks.which_postgres import DEFAULT_PG_URL, postgres_for_run
from benchmarks.workloads import SINGLE_TASK, WORKLOADS

ENV_PG_URL = "ASYNCDAL_BENCH_PG_URL"
BACKENDS = ("sqlite", "postgresql")
RESULTS_DIR = Path(__file__).resolve().parent / "results"
#: (full run, --quick) defaults for the options that --quick shrinks.
DEFAULTS: dict[str, tuple[int, int]] = {
    "ops": (200, 20),
    "warmup": (100, 5),
    "repeat": (3, 2),
    "bulk_size": (10_000, 500),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, not a usage dump: the user sees exactly what to fix.
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _names(choices: Sequence[str]) -> Callable[[str], tuple[str, ...]]:
    def parse(text: str) -> tuple[str, ...]:
        items = tuple(part.strip() for part in text.split(",") if part.strip())
        unknown = [item for item in items if item not in choices]
        if not items or unknown:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated list of {', '.join(choices)}, got {text!r}"
            )
        return tuple(dict.fromkeys(items))

    return parse


def _positive_ints() -> Callable[[str], tuple[int, ...]]:
    def parse(text: str) -> tuple[int, ...]:
        try:
            items = tuple(int(part) for part in text.split(","))
        except ValueError:
            items = ()
        if not items or min(items) < 1:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated list of integers >= 1, got {text!r}"
            )
        return tuple(sorted(set(items)))

    return parse


def _positive_int() -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = 0
        if value < 1:
            raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
        return value

    return parse


def parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m benchmarks",
        description=(
            "Measure asyncdal's unit of work against the layers beneath it (bare AsyncSession, "
            "Core, the raw driver) and against no pooling, on a fresh seeded SQLite file and a "
            "scratch PostgreSQL database side by side, in one run. Prints tables, writes JSON "
            "and a PNG plot to benchmarks/results/."
        ),
        epilog=f"Stacks: {', '.join(STACKS)}. Workloads: {', '.join(WORKLOADS)}. "
        "See benchmarks/README.md for the method. `python -m benchmarks growth --help`: what "
        "bulk writes, pages and full walks cost as the table grows. `python -m benchmarks "
        "instructions --help`: client work per op counted by callgrind.",
    )
    add = p.add_argument
    add(
        "--postgres",
        metavar="URL",
        help="the PostgreSQL to measure beside SQLite: a scratch database is created next to "
        "URL's and dropped afterwards; 'embedded' starts a throwaway server (default: "
        f"${ENV_PG_URL}, else the server answering at {DEFAULT_PG_URL}, else an embedded one)",
    )
    add("--sqlite-only", action="store_true", help="measure SQLite alone, no PostgreSQL")
    add("--quick", action="store_true", help="a short smoke run (CI): fewer ops, 2 passes")
    add("--backends", type=_names(BACKENDS), metavar="LIST",
        help="sqlite,postgresql (default: both; sqlite alone is --sqlite-only)")  # fmt: skip
    add("--workloads", type=_names(tuple(WORKLOADS)), default=tuple(WORKLOADS), metavar="LIST",
        help=f"default: {','.join(WORKLOADS)}")  # fmt: skip
    add("--stacks", type=_names(STACKS + OPTIONAL_STACKS), default=STACKS, metavar="LIST",
        help=f"default: {','.join(STACKS)} (most abstraction to least); "
        f"also {','.join(OPTIONAL_STACKS)}")  # fmt: skip
    add("--concurrency", type=_positive_ints(), default=(1, 16, 64), metavar="LIST",
        help="concurrent asyncio tasks per cell (default: 1,16,64)")  # fmt: skip
    add("--pool-size", type=_positive_ints(), default=(10,), metavar="LIST",
        help="connection pool sizes to sweep, e.g. 5,10,20 (default: 10)")  # fmt: skip
    for name, (full, quick) in DEFAULTS.items():
        option = "--" + name.replace("_", "-")
        helps = {
            "ops": "timed ops per cell and pass",
            "warmup": "untimed warm-up ops per cell (at least min(concurrency, pool size))",
            "repeat": "whole passes over every cell; the spread is over passes",
            "bulk_size": "users per bulk transaction",
        }
        add(
            option,
            type=_positive_int(),
            metavar="N",
            help=f"{helps[name]} (default {full}; quick {quick})",
        )
    add("--users", type=_positive_int(), default=10_000, metavar="N",
        help="users seeded before the run (default 10000)")  # fmt: skip
    add("--seed", type=int, default=1, metavar="N", help="random seed for ids, ages and names")
    add("--loop", choices=loops.LOOPS, default="asyncio",
        help="the event loop of every stack (uvloop: pip install 'asyncdal[uvloop]')")  # fmt: skip
    add("--output", type=Path, default=RESULTS_DIR, metavar="DIR",
        help="where the JSON, PNG and Markdown go (default: benchmarks/results)")  # fmt: skip
    add_topology_arguments(p)
    return p


def config_from(args: argparse.Namespace) -> tuple[Config, str | None, str]:
    """Resolve defaults and cross-option checks; also the PostgreSQL asked for, and by what."""
    p = parser()
    if args.sqlite_only and (args.postgres or (args.backends and "postgresql" in args.backends)):
        p.error("--sqlite-only contradicts --postgres and --backends postgresql")
    backends = ("sqlite",) if args.sqlite_only else (args.backends or BACKENDS)
    requested = args.postgres or os.environ.get(ENV_PG_URL) or None
    requested_by = "--postgres" if args.postgres else f"${ENV_PG_URL}"
    values = {
        name: getattr(args, name) if getattr(args, name) is not None else pair[args.quick]
        for name, pair in DEFAULTS.items()
    }
    if args.users < 2:
        p.error(f"--users must be >= 2, got {args.users}")
    config = Config(
        backends=backends,
        workloads=args.workloads,
        stacks=args.stacks,
        concurrency=args.concurrency,
        pool_sizes=args.pool_size,
        users=args.users,
        seed=args.seed,
        quick=args.quick,
        loop=args.loop,
        **values,
    )
    return config, requested if "postgresql" in backends else None, requested_by


def masked_command(argv: Sequence[str]) -> str:
    """The command line with any URL's password hidden."""
    shown = []
    for arg in argv:
        name, eq, value = arg.partition("=")
        if "://" in arg:
            arg = f"{name}={mask_url(value)}" if eq and "://" in value else mask_url(arg)
        shown.append(arg)
    return " ".join(["python -m benchmarks", *shown])


async def run_with_postgres(
    config: Config,
    requested: tuple[str | None, str],
    output: Path,
    console: Console,
    cmd: str,
) -> None:
    """Find the PostgreSQL to measure (``requested``: URL and what asked for it), say which on
    one line, then :func:`run`; an embedded server is stopped at the end."""
    url, requested_by = requested
    wanted = "postgresql" in config.backends
    async with postgres_for_run(url, requested_by=requested_by, wanted=wanted) as pick:
        console.print(pick.line)
        if pick.url is None and wanted:
            config = dataclasses.replace(
                config, backends=tuple(b for b in config.backends if b != "postgresql")
            )
            if not config.backends:
                raise BenchError(pick.line)
        await run(config, pick.url, output, console, cmd, postgres_line=pick.line)


async def run(
    config: Config,
    pg_url: str | None,
    output: Path,
    console: Console,
    cmd: str,
    postgres_line: str = "",
) -> None:
    if pg_url is not None:
        await check_postgres(pg_url)  # fail now, not after the SQLite half of the run
    started = datetime.now(UTC)
    clock = time.perf_counter()
    passes: dict[CellKey, list[PassResult]] = {}
    checks: list[dict[str, Any]] = []
    done: list[Backend] = []
    columns = (
        TextColumn("{task.description}", style="cyan"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("starting", total=total_steps(config, config.backends))
        step = 0

        def on_cell(key: CellKey, pass_index: int) -> None:
            nonlocal step
            where = f"pass {pass_index + 1}/{config.repeat}" if pass_index >= 0 else "check"
            pool = "" if key.pool_size is None else f" pool {key.pool_size}"
            text = f"{key.backend} {key.workload} c={key.concurrency}{pool} {key.stack} ({where})"
            progress.update(task, completed=step, description=f"{text:<52}")
            step += 1

        for name in config.backends:
            progress.update(task, description=f"{name}: migrating, seeding {config.users:,} users")
            if name == "sqlite":
                context = sqlite_backend(config.users)
            else:
                assert pg_url is not None  # config_from() checked it
                context = postgres_backend(pg_url, config.users)
            async with context as backend:
                checks += await run_backend(backend, config, on_cell, passes)
                done.append(backend)
        progress.update(task, completed=step)
    wall = time.perf_counter() - clock
    results = Results(summarize(key, found) for key, found in passes.items())
    levels = {w: (1,) if w in SINGLE_TASK else config.concurrency for w in config.workloads}
    names = [b.name for b in done]
    ratios = ratio_rows(results, names, config.workloads, levels, config.pool_sizes, config.stacks)
    if postgres_line:
        console.print(postgres_line)  # the run's progress scrolled the first one away
    print_report(console, results, names, config, checks)
    stamp = started.strftime("%Y%m%d-%H%M%S")
    doc = document(
        config=config,
        command=cmd,
        backends=done,
        results=results,
        ratios=ratios,
        checks=checks,
        started=started.isoformat(timespec="seconds"),
        wall_seconds=wall,
    )
    if postgres_line:
        doc["postgresql_source"] = postgres_line
    # A --quick smoke run must not replace the full run's committed latest.* files.
    latest_name = "quick-latest" if config.quick else "latest"
    if config.loop != "asyncio":
        latest_name += f"-{config.loop}"  # a uvloop run keeps the asyncio run's files
    json_path, _ = write(doc, output, stamp, latest_name)
    machine = doc["machine"]
    subtitle = (
        f"{machine['cpu']}, {machine['cores']} cores · {loops.describe(config.loop)} loop"
        f" · {started:%Y-%m-%d}"
    )
    png_path, _ = plot(results, names, config, output, stamp, subtitle, latest_name)
    # The same tables as Markdown, for benchmarks/README.md (not committed: copy what you keep).
    (output / f"{latest_name}.md").write_text(markdown_report(results, names, config, checks))
    console.print(f"wall time {wall:.1f} s · wrote {json_path} and {png_path} (+ {latest_name}.*)")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["growth"]:  # the cost-as-data-grows view: benchmarks/growth.py
        from benchmarks.growth import main as growth

        return growth(argv[1:])
    if argv[:1] == ["instructions"]:  # load-independent client work: benchmarks/instructions.py
        from benchmarks.instructions import main as instructions

        return instructions(argv[1:])
    args = parser().parse_args(argv)
    config, requested, requested_by = config_from(args)
    if (args.replicas or args.pgbouncer) and not args.postgres:
        parser().error("--replicas and --pgbouncer need --postgres URL (their primary)")
    console = Console()
    if not console.is_terminal:
        console = Console(width=140)  # piped or in CI: wide enough that tables do not wrap
    try:
        command = masked_command(argv)
        factory = loops.loop_factory(config.loop)  # every stack, and the scale-out run, on it
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(
                run_with_postgres(config, (requested, requested_by), args.output, console, command)
            )
        if args.replicas or args.pgbouncer:
            with console.status("scale-out comparison") as status:
                topology = run_topology(
                    config, args.postgres, args.replicas or (), args.pgbouncer, args.output,
                    console, command, on_cell=status.update,
                )  # fmt: skip
                with asyncio.Runner(loop_factory=factory) as runner:
                    runner.run(topology)
    except (BenchError, loops.LoopUnavailableError) as error:
        print(f"python -m benchmarks: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("python -m benchmarks: interrupted; scratch databases were dropped", file=sys.stderr)
        return 130
    return 0
