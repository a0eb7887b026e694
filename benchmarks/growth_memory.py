"""One walk over every user in a fresh process, reporting rows/s and how much peak RSS it added.

Run by ``benchmarks.growth`` as ``python -m benchmarks.growth_memory MODE BATCH``, with the URL in
``ASYNCDAL_GROWTH_URL`` (never on a command line, where ``ps`` would show its password), one
process per measurement, so one walk's memory never hides in another's high-water mark. Prints one
JSON line. Modes: ``list`` (``uow.users.list()``), ``stream`` (read-only unit of work: keyset
batches) and ``stream-rw`` (read-write unit of work: a server-side cursor on PostgreSQL).
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import resource
import sys
import time
from pathlib import Path

from asyncdal import Database
from asyncdal.users import UserUnitOfWork

MODES = ("list", "stream", "stream-rw")
URL_VARIABLE = "ASYNCDAL_GROWTH_URL"


def _status_kib(field: str) -> int:
    """A ``VmRSS``/``VmHWM`` figure from /proc in KiB; ru_maxrss where there is no /proc."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


async def walk(mode: str, url: str, batch: int) -> dict[str, float]:
    """Walk every user once; rows, seconds and RSS (MiB) before and at the peak."""
    async with Database(url, unit_of_work=UserUnitOfWork) as db:
        async with db.unit_of_work(read_only=True) as uow:  # connect, compile, warm caches
            await uow.users.list(limit=batch)
        gc.collect()
        before = _status_kib("VmRSS")
        started = time.perf_counter()
        rows = 0
        async with db.unit_of_work(read_only=mode != "stream-rw") as uow:
            if mode == "list":
                rows = len(await uow.users.list())
            else:
                async for _user in uow.users.stream(batch_size=batch):
                    rows += 1
        seconds = time.perf_counter() - started
        peak = _status_kib("VmHWM")
    return {
        "rows": rows,
        "seconds": seconds,
        "rows_per_s": rows / seconds if seconds else 0.0,
        "rss_before_mib": before / 1024,
        "rss_peak_mib": peak / 1024,
        "rss_added_mib": max(0, peak - before) / 1024,
    }


def main(argv: list[str]) -> int:
    mode, batch, url = argv[0], int(argv[1]), os.environ[URL_VARIABLE]
    if mode not in MODES:
        print(f"unknown mode {mode!r}: expected one of {', '.join(MODES)}", file=sys.stderr)
        return 2
    print(json.dumps(asyncio.run(walk(mode, url, batch))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
