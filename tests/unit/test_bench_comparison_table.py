"""The benchmark report opens with SQLite and PostgreSQL side by side (made-up cells)."""

from __future__ import annotations

from rich.console import Console

from benchmarks.runner import CellKey, Config
from benchmarks.summary import Results, Spread, Summary
from benchmarks.tables import comparison_grid, markdown_report, print_report

CONFIG = Config(
    backends=("sqlite", "postgresql"),
    workloads=("read", "bulk"),
    stacks=("uow", "driver"),
    concurrency=(1, 16),
    pool_sizes=(10,),
    repeat=3,
    ops=10,
    warmup=1,
    users=10,
    bulk_size=100,
    seed=1,
    quick=False,
)


def _cell(backend: str, workload: str, stack: str, c: int, low: float, high: float) -> Summary:
    nan = Spread(float("nan"), float("nan"), float("nan"))
    return Summary(
        key=CellKey(backend, workload, stack, c, 10),
        passes=3,
        ops=10,
        throughput=Spread((low + high) / 2, low, high),
        p50_ms=nan,
        p95_ms=nan,
        p99_ms=nan,
        cpu_us_per_op=nan,
        errors={},
        locked=0,
        samples={},
        per_pass=[],
    )


def _results() -> Results:
    cells = []
    for stack, (sqlite, pg) in {"uow": (900, 600), "driver": (1000, 1000)}.items():
        for c in (1, 16):
            cells.append(_cell("sqlite", "read", stack, c, sqlite - 10, sqlite + 10))
            cells.append(_cell("postgresql", "read", stack, c, pg - 10, pg + 10))
        cells.append(_cell("sqlite", "bulk", stack, 1, 40, 40))
        cells.append(_cell("postgresql", "bulk", stack, 1, 20, 20))
    return Results(cells)


def test_comparison_sets_each_workload_and_stack_side_by_side_with_sqlite_over_pg() -> None:
    header, rows = comparison_grid(_results(), 10, CONFIG)
    assert [h.replace("\n", " ") for h in header] == [
        "workload", "stack",
        "c=1 SQLite", "c=1 PG", "c=1 SQLite/PG",
        "c=16 SQLite", "c=16 PG", "c=16 SQLite/PG",
    ]  # fmt: skip
    assert rows == [
        ["read", "uow", "900", "600", "1.50", "900", "600", "1.50"],
        # The passes' ranges overlap: 990/1010 .. 1010/990 spans 1.0, so "≈", never a win.
        ["read", "driver", "1,000", "1,000", "≈1.00", "1,000", "1,000", "≈1.00"],
        # Bulk runs at c=1 only and is shown in rows/s (ops/s x bulk size).
        ["bulk", "uow", "4,000", "2,000", "2.00", "", "", ""],
        ["bulk", "driver", "4,000", "2,000", "2.00", "", "", ""],
    ]


def test_report_opens_with_the_comparison_on_the_terminal_and_in_markdown() -> None:
    console = Console(record=True, width=140)
    print_report(console, _results(), ["sqlite", "postgresql"], CONFIG, [])
    text = console.export_text()
    assert text.lstrip().startswith("SQLite vs PostgreSQL · pool 10")
    assert text.index("SQLite vs PostgreSQL") < text.index("SQLite · pool 10 · ops/s")
    assert markdown_report(_results(), ["sqlite", "postgresql"], CONFIG, []).startswith(
        "SQLite vs PostgreSQL, pool 10"
    )


def test_report_has_no_comparison_when_only_sqlite_ran() -> None:
    console = Console(record=True, width=140)
    print_report(console, _results(), ["sqlite"], CONFIG, [])
    assert "SQLite vs PostgreSQL" not in console.export_text()
