"""The PNG: throughput by concurrency, one panel per backend and workload, one line per stack."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display: files only

import matplotlib.pyplot as plt
from matplotlib.ticker import FuncFormatter, NullFormatter

from benchmarks.runner import Config
from benchmarks.summary import Results

_LABEL = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}


def plot(
    results: Results,
    backends: Sequence[str],
    config: Config,
    directory: Path,
    stamp: str,
    subtitle: str,
    latest_name: str = "latest",
) -> tuple[Path, Path]:
    """Write ``bench-<stamp>.png`` and copy it to ``<latest_name>.png``; first pool size only."""
    pool = config.pool_sizes[0]
    workloads = list(config.workloads)
    fig, axes = plt.subplots(
        len(backends),
        len(workloads),
        figsize=(3.6 * len(workloads), 3.2 * len(backends)),
        squeeze=False,
    )
    for row, backend in enumerate(backends):
        for col, workload in enumerate(workloads):
            ax = axes[row][col]
            bulk = workload == "bulk"
            levels = (1,) if bulk else config.concurrency
            scale = config.bulk_size if bulk else 1
            for stack in config.stacks:
                found = [results.get(backend, workload, stack, c, pool) for c in levels]
                points = [(c, s) for c, s in zip(levels, found, strict=True) if s is not None]
                if not points:
                    continue
                xs = [c for c, _ in points]
                ys = [s.throughput.median * scale for _, s in points]
                lows = [y - s.throughput.low * scale for y, (_, s) in zip(ys, points, strict=True)]
                highs = [
                    s.throughput.high * scale - y for y, (_, s) in zip(ys, points, strict=True)
                ]
                ax.errorbar(xs, ys, yerr=[lows, highs], marker="o", capsize=3, label=stack)
            ax.set_title(f"{_LABEL[backend]} · {workload}", fontsize=10)
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:,.0f}"))
            ax.yaxis.set_minor_formatter(NullFormatter())
            if not bulk:
                ax.set_xscale("log", base=2)
                ax.set_xticks(list(levels), [str(c) for c in levels])
            else:
                ax.set_xticks([1], ["1"])
            ax.set_xlabel("concurrent tasks")
            ax.set_ylabel("rows/s" if bulk else "ops/s")
            ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=9)
    fig.suptitle(f"asyncdal benchmark · pool {pool} · {subtitle}", fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"bench-{stamp}.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    latest = directory / f"{latest_name}.png"
    shutil.copyfile(path, latest)
    return path, latest
