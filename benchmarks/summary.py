"""From timed passes to figures: spreads over passes, percentiles, ratios and the noise rule.

Noise rule: a comparison of A and B takes the medians' ratio, and its range from the passes'
extremes, ``min(A) / max(B)`` to ``max(A) / min(B)``. When that range includes 1.0 the two are
not told apart by this run, and the comparison is reported as "within noise", never as a win.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Final

from benchmarks.runner import CellKey, PassResult

#: The ratios the issue asks for, numerator over denominator, on each backend.
STACK_RATIOS: Final = (
    ("uow", "session"),
    ("uow", "driver"),
    ("uow", "uow-nopool"),
    ("uow", "uow-flush"),  # the flush-free paths' effect
    # The hot-path cost of db.metrics() and of watching units of work (asked for with --stacks).
    ("uow", "uow-nometrics"),
    ("uow", "uow-unobserved"),
)


@dataclass(frozen=True, slots=True)
class Spread:
    """A figure over repeated passes: median and extremes."""

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Iterable[float]) -> Spread:
        items = [v for v in values if not math.isnan(v)]
        if not items:
            return cls(math.nan, math.nan, math.nan)
        return cls(statistics.median(items), min(items), max(items))

    @property
    def relative(self) -> float:
        """Half the range, as a fraction of the median."""
        if not self.median or math.isnan(self.median):
            return math.nan
        return (self.high - self.low) / 2 / self.median


def percentile(sorted_values: Sequence[int], fraction: float) -> float:
    """Nearest-rank percentile of already sorted values (NaN when there are none)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return float(sorted_values[rank - 1])


@dataclass(frozen=True, slots=True)
class Summary:
    """One cell over every pass."""

    key: CellKey
    passes: int
    ops: int
    throughput: Spread  # successful ops per second
    p50_ms: Spread
    p95_ms: Spread
    p99_ms: Spread
    cpu_us_per_op: Spread
    errors: dict[str, int]
    locked: int
    samples: dict[str, str]
    per_pass: list[dict[str, float]]


def _pass_figures(result: PassResult) -> dict[str, float]:
    ordered = sorted(result.latencies_ns)
    return {
        "throughput": result.ok / result.seconds if result.seconds > 0 else math.nan,
        "p50_ms": percentile(ordered, 0.50) / 1e6,
        "p95_ms": percentile(ordered, 0.95) / 1e6,
        "p99_ms": percentile(ordered, 0.99) / 1e6,
        "cpu_us_per_op": result.cpu_seconds / result.ops * 1e6,
        "seconds": result.seconds,
        "ok": float(result.ok),
        "errors": float(sum(result.errors.values())),
    }


def summarize(key: CellKey, results: Sequence[PassResult]) -> Summary:
    """Fold the passes of one cell."""
    figures = [_pass_figures(result) for result in results]
    errors: Counter[str] = Counter()
    samples: dict[str, str] = {}
    for result in results:
        errors.update(result.errors)
        for kind, message in result.samples.items():
            samples.setdefault(kind, message)

    def spread(name: str) -> Spread:
        return Spread.of(figure[name] for figure in figures)

    return Summary(
        key=key,
        passes=len(results),
        ops=results[0].ops if results else 0,
        throughput=spread("throughput"),
        p50_ms=spread("p50_ms"),
        p95_ms=spread("p95_ms"),
        p99_ms=spread("p99_ms"),
        cpu_us_per_op=spread("cpu_us_per_op"),
        errors=dict(errors),
        locked=sum(result.locked for result in results),
        samples=samples,
        per_pass=figures,
    )


@dataclass(frozen=True, slots=True)
class Ratio:
    """``a / b`` of two throughputs, with its range over passes and the noise verdict."""

    value: float
    low: float
    high: float

    @classmethod
    def of(cls, a: Spread, b: Spread) -> Ratio:
        if not (b.median and b.low and b.high) or any(map(math.isnan, (a.median, b.median))):
            return cls(math.nan, math.nan, math.nan)
        return cls(a.median / b.median, a.low / b.high, a.high / b.low)

    @property
    def within_noise(self) -> bool:
        return self.low <= 1.0 <= self.high

    def text(self) -> str:
        if math.isnan(self.value):
            return "n/a"
        return f"{self.value:.2f}" + (" within noise" if self.within_noise else "")


class Results:
    """Every summary of a run, looked up by cell; pool-independent cells serve every pool size."""

    def __init__(self, summaries: Iterable[Summary]) -> None:
        self._by_key = {summary.key: summary for summary in summaries}

    def __iter__(self) -> Any:
        return iter(self._by_key.values())

    def get(
        self, backend: str, workload: str, stack: str, concurrency: int, pool_size: int
    ) -> Summary | None:
        for pool in (pool_size, None):
            found = self._by_key.get(CellKey(backend, workload, stack, concurrency, pool))
            if found is not None:
                return found
        return None

    def ratio(
        self,
        numerator: tuple[str, str],
        denominator: tuple[str, str],
        workload: str,
        concurrency: int,
        pool_size: int,
    ) -> Ratio | None:
        """``(backend, stack)`` over ``(backend, stack)`` for one workload, concurrency, pool."""
        a = self.get(numerator[0], workload, numerator[1], concurrency, pool_size)
        b = self.get(denominator[0], workload, denominator[1], concurrency, pool_size)
        if a is None or b is None:
            return None
        return Ratio.of(a.throughput, b.throughput)


def ratio_rows(
    results: Results,
    backends: Sequence[str],
    workloads: Sequence[str],
    levels: Mapping[str, Sequence[int]],
    pool_sizes: Sequence[int],
    stacks: Sequence[str],
) -> list[dict[str, Any]]:
    """Every ratio the run can give, as JSON-ready rows."""
    rows: list[dict[str, Any]] = []
    for pool in pool_sizes:
        for workload in workloads:
            for concurrency in levels[workload]:
                where = {"workload": workload, "concurrency": concurrency, "pool_size": pool}
                for backend in backends:
                    for num, den in STACK_RATIOS:
                        r = results.ratio(
                            (backend, num), (backend, den), workload, concurrency, pool
                        )
                        if r is not None:
                            rows.append(
                                {**where, "backend": backend, "ratio": f"{num}/{den}", **asdict(r)}
                                | {"within_noise": r.within_noise}
                            )
                if "sqlite" in backends and "postgresql" in backends:
                    for stack in stacks:
                        r = results.ratio(
                            ("sqlite", stack), ("postgresql", stack), workload, concurrency, pool
                        )
                        if r is not None:
                            rows.append(
                                {**where, "backend": "both", "ratio": f"sqlite/postgresql {stack}"}
                                | asdict(r)
                                | {"within_noise": r.within_noise}
                            )
    return rows
