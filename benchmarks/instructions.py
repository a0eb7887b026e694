"""``python -m benchmarks instructions``: client work per op as callgrind counts it.

Wall-clock figures and CPU time move with the load of a shared machine; the number of
instructions a process executes for an op does not. This runs the benchmark's stacks and workloads
in a child process under ``valgrind --tool=callgrind`` with instrumentation off, and turns it on
(``callgrind_control``) only around each timed block of ops, after a warm-up and a
``gc.collect()``. Reported: user-space instructions per op of the whole process (aiosqlite's
worker thread and SQLite's C code included; kernel time, the database server and waiting are
not). Needs valgrind (``apt-get install valgrind``); slow: about 50x the ops' normal time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from benchmarks import loops
from benchmarks.backends import BenchError, postgres_backend, sqlite_backend
from benchmarks.stacks import OPTIONAL_STACKS, STACKS, Stack, open_stack
from benchmarks.workloads import SINGLE_TASK, WORKLOADS, Context

ENV_PG_URL = "ASYNCDAL_BENCH_PG_URL"
_CHILD = "--child"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks instructions", description=__doc__)
    add = p.add_argument
    add("--postgres", metavar="URL", default=os.environ.get(ENV_PG_URL),
        help=f"also measure PostgreSQL (a scratch database; default ${ENV_PG_URL})")  # fmt: skip
    add("--backends", default=None, metavar="LIST", help="sqlite,postgresql")
    add("--stacks", default="uow,uow-flush,session,core,driver", metavar="LIST")
    add("--workloads", default="read,write,update", metavar="LIST")
    add("--concurrency", type=int, default=16, metavar="N")
    add("--ops", type=int, default=400, metavar="N", help="ops per block (default 400)")
    add("--loop", choices=loops.LOOPS, default="asyncio")
    return p


async def _block(stack: Stack, workload: str, ctx: Context, ops: int, c: int) -> None:
    left = ops

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            # An op that fails (a stale version under contention) is work done all the same.
            with contextlib.suppress(Exception):
                await WORKLOADS[workload](stack, ctx)

    await asyncio.gather(*(worker() for _ in range(c)))


async def _child(url: str, stacks: list[str], workloads: list[str], ops: int, c: int) -> None:
    """Runs under callgrind: each block is fenced by a line out and a line back."""

    def fence(name: str) -> None:
        print(name, flush=True)
        sys.stdin.readline()

    for name in stacks:
        stack = await open_stack(name, url, 10)
        try:
            for workload in workloads:
                ctx = Context(1000, 10)
                ctx.rng.seed(5)
                await _block(stack, workload, ctx, 30, c)
                gc.collect()
                fence(f"start {name}:{workload}")
                await _block(stack, workload, ctx, ops, c)
                fence(f"end {name}:{workload}")
        finally:
            await stack.close()


def _measure(url: str, args: argparse.Namespace, workloads: list[str]) -> dict[str, int]:
    """Run the child under callgrind; instructions per op by 'stack:workload'."""
    out = Path(tempfile.mkdtemp(prefix="asyncdal-callgrind-"))
    try:
        command = [
            "valgrind", "--tool=callgrind", "--instr-atstart=no",
            f"--callgrind-out-file={out}/cg.%p.out",
            sys.executable, "-m", "benchmarks.instructions", _CHILD, url, args.stacks,
            ",".join(workloads), str(args.ops), str(args.concurrency), args.loop,
        ]  # fmt: skip
        child = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True,
        )  # fmt: skip
        assert child.stdin is not None
        assert child.stdout is not None
        pid = str(child.pid)
        for line in child.stdout:
            what, _, name = line.strip().partition(" ")
            if what == "start":
                _control("-z", pid)
                _control("-i", "on", pid)
            elif what == "end":
                _control("-i", "off", pid)
                _control("-d", name, pid)
            child.stdin.write("go\n")
            child.stdin.flush()
        if child.wait() != 0:
            raise BenchError("the callgrind child failed (run it without valgrind to see why)")
        found: dict[str, int] = {}
        for dump in out.glob("cg.*.out.*"):
            text = dump.read_text(errors="replace")
            trigger = re.search(r"^desc: Trigger: dump (\S+)", text, re.M)
            total = re.search(r"^totals: (\d+)", text, re.M)
            if trigger and total:
                found[trigger.group(1)] = round(int(total.group(1)) / args.ops)
        return found
    finally:
        shutil.rmtree(out, ignore_errors=True)


def _control(*args: str) -> None:
    subprocess.run(["callgrind_control", *args], check=True, capture_output=True)


async def _run(args: argparse.Namespace, backends: list[str]) -> None:
    workloads = [w for w in args.workloads.split(",") if w and w not in SINGLE_TASK]
    stacks = args.stacks.split(",")
    print(f"instructions per op (callgrind), c={args.concurrency}, {loops.describe(args.loop)}")
    print("| backend | workload | " + " | ".join(stacks) + " |")
    print("| --- | --- |" + " ---: |" * len(stacks))
    for backend in backends:
        made_by = sqlite_backend if backend == "sqlite" else None
        context = made_by(1000) if made_by else postgres_backend(args.postgres, 1000)
        async with context as made:
            found = await asyncio.to_thread(_measure, made.url, args, workloads)
        for workload in workloads:
            cells = [f"{found.get(f'{s}:{workload}', 0) / 1e6:.2f} M" for s in stacks]
            print(f"| {made.label} | {workload} | " + " | ".join(cells) + " |")


def main(argv: Sequence[str]) -> int:
    """Entry point of ``python -m benchmarks instructions``; returns the exit status."""
    args = parser().parse_args(list(argv))
    unknown = set(args.stacks.split(",")) - set(STACKS + OPTIONAL_STACKS)
    if unknown:
        parser().error(f"--stacks: unknown {', '.join(sorted(unknown))}")
    backends = (args.backends or ("sqlite,postgresql" if args.postgres else "sqlite")).split(",")
    if "postgresql" in backends and not args.postgres:
        parser().error(f"--backends postgresql needs --postgres URL (or ${ENV_PG_URL})")
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("python -m benchmarks instructions: needs valgrind on PATH", file=sys.stderr)
        return 1
    try:
        asyncio.run(_run(args, backends))
    except BenchError as error:
        print(f"python -m benchmarks instructions: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__" and sys.argv[1:2] == [_CHILD]:
    url, stacks, workloads, ops, c, loop = sys.argv[2:8]
    with asyncio.Runner(loop_factory=loops.loop_factory(loop)) as runner:
        runner.run(_child(url, stacks.split(","), workloads.split(","), int(ops), int(c)))
