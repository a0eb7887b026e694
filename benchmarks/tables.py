"""The end-of-run tables: rich tables on the terminal, the same as Markdown for the README."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks import loops
from benchmarks.runner import Config
from benchmarks.summary import STACK_RATIOS, Ratio, Results, Summary

_LABEL = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}


def _num(value: float, digits: int = 0) -> str:
    return "n/a" if math.isnan(value) else f"{value:,.{digits}f}"


def _ms(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3g}"


def throughput_text(summary: Summary | None, scale: int = 1) -> str:
    """``1,234 ±3%``: median ops/s over passes, half the min-max range as a percentage."""
    if summary is None:
        return ""
    spread = summary.throughput
    text = _num(spread.median * scale)
    if summary.passes > 1 and not math.isnan(spread.relative):
        text += f" ±{spread.relative * 100:.0f}%"
    errors = sum(summary.errors.values())
    return text + (f" ({errors} err)" if errors else "")


def latency_text(summary: Summary | None) -> str:
    """``p50/p99 ms · CPU µs per op``, medians over passes."""
    if summary is None:
        return ""
    s = summary
    return f"{_ms(s.p50_ms.median)}/{_ms(s.p99_ms.median)} · {_num(s.cpu_us_per_op.median)}"


def grid(
    results: Results,
    backend: str,
    pool: int,
    config: Config,
    cell: Any,
) -> tuple[list[str], list[list[str]]]:
    """Rows of workload x concurrency, one column per stack, rendered by ``cell``."""
    header = ["workload", "c", *config.stacks]
    rows: list[list[str]] = []
    for workload in config.workloads:
        levels = (1,) if workload == "bulk" else config.concurrency
        for concurrency in levels:
            found = [results.get(backend, workload, s, concurrency, pool) for s in config.stacks]
            if not any(found):
                continue
            label = f"bulk {config.bulk_size:,} (rows/s)" if workload == "bulk" else workload
            rows.append([label, str(concurrency), *(cell(workload, f) for f in found)])
    return header, rows


def ratio_grid(
    results: Results, backends: Sequence[str], pool: int, config: Config
) -> tuple[list[str], list[list[str]]]:
    """Rows of backend x workload x concurrency: the stack ratios and SQLite/PostgreSQL."""
    both = "sqlite" in backends and "postgresql" in backends
    header = ["backend", "workload", "c", *(f"{a}/{b}" for a, b in STACK_RATIOS)]
    if both:
        header.append("uow SQLite/PG")
    rows: list[list[str]] = []
    for backend in backends:
        for workload in config.workloads:
            levels = (1,) if workload == "bulk" else config.concurrency
            for c in levels:
                texts = []
                for a, b in STACK_RATIOS:
                    r = results.ratio((backend, a), (backend, b), workload, c, pool)
                    texts.append("" if r is None else r.text())
                if both:
                    r = results.ratio(("sqlite", "uow"), ("postgresql", "uow"), workload, c, pool)
                    texts.append("" if r is None or backend != "sqlite" else r.text())
                rows.append([_LABEL.get(backend, backend), workload, str(c), *texts])
    return header, rows


def comparison_grid(
    results: Results, pool: int, config: Config
) -> tuple[list[str], list[list[str]]]:
    """The first table: every workload and stack, SQLite and PostgreSQL ops/s side by side at
    each concurrency, and SQLite/PostgreSQL (``≈`` marks a ratio within noise)."""
    levels = sorted(
        {c for w in config.workloads for c in ((1,) if w == "bulk" else config.concurrency)}
    )
    header = ["workload", "stack"]
    for c in levels:  # two-line headers keep the table within 140 columns
        header += [f"c={c}\nSQLite", f"c={c}\nPG", f"c={c}\nSQLite/PG"]
    rows: list[list[str]] = []
    for workload in config.workloads:
        scale = config.bulk_size if workload == "bulk" else 1
        for stack in config.stacks:
            cells: list[str] = []
            for c in levels:
                a = results.get("sqlite", workload, stack, c, pool)
                b = results.get("postgresql", workload, stack, c, pool)
                cells += [_median(a, scale), _median(b, scale), _ratio(a, b)]
            if any(cells):
                rows.append([workload, stack, *cells])
    return header, rows


def _median(summary: Summary | None, scale: int) -> str:
    return "" if summary is None else _num(summary.throughput.median * scale)


def _ratio(a: Summary | None, b: Summary | None) -> str:
    if a is None or b is None:
        return ""
    r = Ratio.of(a.throughput, b.throughput)
    if math.isnan(r.value):
        return "n/a"
    return ("≈" if r.within_noise else "") + f"{r.value:.2f}"


COMPARISON_NOTE = (
    "ops/s (bulk: rows/s), medians of the passes; SQLite/PG above 1: SQLite is faster; "
    "≈: within noise (the passes' range spans 1.0)"
)


def _rich(title: str, header: list[str], rows: list[list[str]]) -> Table:
    table = Table(title=title, title_justify="left", header_style="bold")
    for index, name in enumerate(header):
        table.add_column(name, justify="left" if index == 0 else "right")
    for row in rows:
        table.add_row(*row)
    return table


def markdown(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub Markdown table."""
    align = ["---" if i == 0 else "---:" for i in range(len(header))]
    lines = [[cell.replace("\n", " ") for cell in header], align, *rows]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


def throughput_cell(config: Config) -> Any:
    def cell(workload: str, summary: Summary | None) -> str:
        return throughput_text(summary, config.bulk_size if workload == "bulk" else 1)

    return cell


def print_report(
    console: Console,
    results: Results,
    backends: Sequence[str],
    config: Config,
    checks: list[dict[str, Any]],
) -> None:
    """Every table of the run, to the terminal."""
    passes = f"median of {config.repeat} passes" if config.repeat > 1 else "1 pass, no spread"
    loop = f"{loops.describe(config.loop)} loop"
    if "sqlite" in backends and "postgresql" in backends:
        for pool in config.pool_sizes:
            table = _rich(
                f"SQLite vs PostgreSQL · pool {pool}", *comparison_grid(results, pool, config)
            )
            table.caption = COMPARISON_NOTE
            console.print(table)
    for backend in backends:
        for pool in config.pool_sizes:
            label = f"{_LABEL[backend]} · pool {pool}"
            header, rows = grid(results, backend, pool, config, throughput_cell(config))
            title = f"{label} · ops/s, {passes} (± half the range) · {loop}"
            console.print(_rich(title, header, rows))
            header, rows = grid(results, backend, pool, config, lambda _w, s: latency_text(s))
            title = f"{label} · latency p50/p99 ms · client CPU µs per op (medians) · {loop}"
            console.print(_rich(title, header, rows))
    for pool in config.pool_sizes:
        header, rows = ratio_grid(results, backends, pool, config)
        title = (
            f"Ratios of throughput · pool {pool} · {loop} · "
            "'within noise': the passes' range spans 1.0"
        )
        console.print(_rich(title, header, rows))
    console.print(_rich("Lost-update check", *check_grid(results, checks, config)))
    problems = error_rows(results)
    if problems:
        console.print(_rich("Errors (counted, not fatal)", *problems))


def check_grid(
    results: Results, checks: list[dict[str, Any]], config: Config
) -> tuple[list[str], list[list[str]]]:
    """The increment check per stack, with 'database is locked' counts of writes at top c."""
    top = max(config.concurrency)
    pool = config.pool_sizes[0]
    header = [
        "backend",
        "stack",
        "increments",
        "committed",
        "final",
        "lost updates",
        "errors",
        f"'database is locked' in write+update, c={top}",
    ]
    rows = []
    for check in checks:
        locked = 0
        for workload in ("write", "update"):
            found = results.get(check["backend"], workload, check["stack"], top, pool)
            locked += found.locked if found else 0
        errors = ", ".join(f"{k}: {v}" for k, v in sorted(check["errors"].items())) or "0"
        rows.append(
            [
                _LABEL[check["backend"]],
                check["stack"],
                str(check["increments"]),
                str(check["succeeded"]),
                str(check["final"]),
                str(check["lost_updates"]),
                errors,
                str(locked) if check["backend"] == "sqlite" else "n/a",
            ]
        )
    return header, rows


def error_rows(results: Results) -> tuple[list[str], list[list[str]]] | None:
    """Cells that had errors, with one sample message per error type."""
    header = ["backend", "workload", "stack", "c", "pool", "errors", "first message"]
    rows = []
    for s in results:
        if s.errors:
            k = s.key
            kinds = ", ".join(f"{kind}: {n}" for kind, n in sorted(s.errors.items()))
            sample = next(iter(s.samples.values()), "")[:80]
            pool = "-" if k.pool_size is None else str(k.pool_size)
            rows.append([k.backend, k.workload, k.stack, str(k.concurrency), pool, kinds, sample])
    return (header, rows) if rows else None


def markdown_report(
    results: Results, backends: Sequence[str], config: Config, checks: list[dict[str, Any]]
) -> str:
    """The README's tables: SQLite vs PostgreSQL, the ratios, then ops/s per backend, then the
    lost-update check."""
    loop = f"{loops.describe(config.loop)} loop"
    parts: list[str] = []
    for pool in config.pool_sizes:
        if "sqlite" in backends and "postgresql" in backends:
            parts += [
                f"SQLite vs PostgreSQL, pool {pool}, {COMPARISON_NOTE}:",
                markdown(*comparison_grid(results, pool, config)),
            ]
        parts += [
            f"Ratios of throughput, pool {pool}, {loop}:",
            markdown(*ratio_grid(results, backends, pool, config)),
        ]
        for backend in backends:
            header, rows = grid(results, backend, pool, config, throughput_cell(config))
            parts += [
                f"{_LABEL[backend]}, pool {pool}, {loop}, ops/s (median ± half the range):",
                markdown(header, rows),
            ]
            header, rows = grid(results, backend, pool, config, lambda _w, s: latency_text(s))
            parts += [
                f"{_LABEL[backend]}, pool {pool}, {loop}, "
                "latency p50/p99 ms · client CPU µs per op:",
                markdown(header, rows),
            ]
    parts += ["Lost-update check:", markdown(*check_grid(results, checks, config))]
    return "\n\n".join(parts) + "\n"
