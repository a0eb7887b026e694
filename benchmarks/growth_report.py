"""The growth view's tables, JSON and plot."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: files only

import matplotlib.pyplot as plt
from rich.console import Console
from rich.table import Table

from benchmarks.results import machine, versions

_LABEL = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}
_SHORT = {"list": "list()", "stream": "stream() ro", "stream-rw": "stream() rw"}
_WALKS = {
    "list": "list()",
    "stream": "stream(), read-only uow",
    "stream-rw": "stream(), read-write uow",
}


def print_report(console: Console, results: Sequence[dict[str, Any]], rows: int) -> None:
    bulk = Table(title="Bulk writes: rows/s (median of passes)")
    for column in ("backend", "add_many", "insert_many", "driver", "insert_many/add_many",
                   "insert_many/driver"):  # fmt: skip
        bulk.add_column(column, justify="left" if column == "backend" else "right")
    for result in results:
        rate = result["bulk"]["rows_per_s"]
        bulk.add_row(
            _LABEL[result["backend"]],
            f"{rate['add_many']:,.0f}",
            f"{rate['insert_many']:,.0f}",
            f"{rate['driver']:,.0f}",
            f"{rate['insert_many'] / rate['add_many']:.1f}x",
            f"{rate['insert_many'] / rate['driver']:.2f}",
        )
    console.print(bulk)
    page = Table(title=f"A page of 50 in a table of {rows:,} users: p50 ms (p95)")
    page.add_column("backend")
    page.add_column("method")
    depths = list(dict.fromkeys(p["depth"] for p in results[0]["pages"])) if results else []
    for depth in depths:
        page.add_column(f"depth {depth}", justify="right")
    for result in results:
        for method in ("offset", "page"):
            cells = {p["depth"]: p for p in result["pages"] if p["method"] == method}
            page.add_row(
                _LABEL[result["backend"]],
                "list(offset=N)" if method == "offset" else "page(after=cursor)",
                *(f"{cells[d]['p50_ms']:.2f} ({cells[d]['p95_ms']:.2f})" for d in depths),
            )
    console.print(page)
    walk = Table(title="Walking every row, each in a fresh process")
    for column in ("backend", "how", "rows", "rows/s", "peak RSS added (MiB)"):
        walk.add_column(column, justify="left" if column in ("backend", "how") else "right")
    for result in results:
        for mode, found in result["walks"].items():
            walk.add_row(
                _LABEL[result["backend"]],
                _WALKS[mode],
                f"{found['rows']:,}",
                f"{found['rows_per_s']:,.0f}",
                f"{found['rss_added_mib']:.1f}",
            )
    console.print(walk)


def _plot(results: Sequence[dict[str, Any]], path: Path, subtitle: str) -> None:
    fig, axes = plt.subplots(len(results), 3, figsize=(13, 3.4 * len(results)), squeeze=False)
    for row, result in enumerate(results):
        name = _LABEL[result["backend"]]
        ax = axes[row][0]
        rate = result["bulk"]["rows_per_s"]
        ax.bar(list(rate), list(rate.values()), color=["#999999", "#1f77b4", "#2ca02c"])
        ax.set_title(f"{name}: bulk rows/s")
        ax = axes[row][1]
        for method, style in (("offset", "o-"), ("page", "s-")):
            found = [p for p in result["pages"] if p["method"] == method]
            ax.plot([p["depth"] for p in found], [p["p50_ms"] for p in found], style, label=method)
        ax.set_title(f"{name}: page of 50, p50 ms by depth")
        ax.set_yscale("log")
        ax.legend()
        ax = axes[row][2]
        walks = result["walks"]
        added = [max(0.1, w["rss_added_mib"]) for w in walks.values()]
        bars = ax.bar([_SHORT[m] for m in walks], added, color="#1f77b4")
        ax.bar_label(bars, labels=[f"{a:,.1f}" for a in added], fontsize=8)
        ax.set_yscale("log")  # a stream adds MiB where list() adds GiB
        ax.set_title(f"{name}: peak RSS added by a full walk (MiB)")
    fig.suptitle(f"asyncdal: cost as data grows · {subtitle}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(
    results: Sequence[dict[str, Any]], args: Any, started: datetime, argv: Sequence[str]
) -> list[Path]:
    """``growth-<stamp>.json`` and ``.png`` under ``args.output``, copied to ``growth-latest.*``."""
    from benchmarks.cli import masked_command  # the one place that hides URL passwords

    directory: Path = args.output
    directory.mkdir(parents=True, exist_ok=True)
    stamp = started.strftime("%Y%m%d-%H%M%S")
    doc: dict[str, Any] = {
        "format": 1,
        "started_at": started.isoformat(timespec="seconds"),
        "command": masked_command(["growth", *argv]),
        "machine": machine(),
        "versions": versions(),
        "settings": {
            "rows": args.rows,
            "bulk_rows": min(args.bulk_rows, args.rows),
            "batch": args.batch,
            "repeat": args.repeat,
            "samples": args.samples,
            "stream_batch": args.stream_batch,
        },
        "results": list(results),
    }
    json_path = directory / f"growth-{stamp}.json"
    json_path.write_text(json.dumps(doc, indent=1) + "\n")
    shutil.copyfile(json_path, directory / "growth-latest.json")
    info = doc["machine"]
    png_path = directory / f"growth-{stamp}.png"
    _plot(results, png_path, f"{args.rows:,} rows · {info['cpu']}, {info['cores']} cores")
    shutil.copyfile(png_path, directory / "growth-latest.png")
    return [json_path, png_path]
