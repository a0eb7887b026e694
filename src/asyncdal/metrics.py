"""What ``Database.metrics()`` returns, and the plain counters and histograms behind it.

No dependency, and next to nothing on the hot path: a unit of work costs a few integer increments
and one histogram slot. Percentiles are computed only when a snapshot is taken.

Durations go into a log-linear histogram of integer nanoseconds (8 buckets per power of two, as
HdrHistogram does with 3 significant bits): a bucket spans at most 1/8 of its lower bound, so a
reported percentile (the middle of its bucket) is within 6.25% of the true value, at any scale
from a nanosecond to centuries, in 496 fixed slots. Everything is cumulative since the
``Database`` was built, so a scraper can take rates and windowed quantiles from the buckets.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Final

_SUB_BITS: Final = 3
_SUB: Final = 1 << _SUB_BITS  # buckets per power of two
_SLOTS: Final = (64 - _SUB_BITS) << _SUB_BITS | (_SUB - 1)  # the highest index for 63-bit values


def _slot(ns: int) -> int:
    """The histogram slot of ``ns``: exact below 8, then 8 per power of two."""
    if ns < _SUB:
        return ns if ns > 0 else 0
    bits = ns.bit_length()
    return (bits - _SUB_BITS) << _SUB_BITS | (ns >> (bits - _SUB_BITS - 1)) & (_SUB - 1)


def _bounds(slot: int) -> tuple[int, int]:
    """The smallest and the largest value (ns) that fall in ``slot``."""
    if slot < _SUB:
        return slot, slot
    exponent = (slot >> _SUB_BITS) - 1
    low = (_SUB | slot & (_SUB - 1)) << exponent
    return low, low + (1 << exponent) - 1


@dataclass(frozen=True, slots=True)
class Durations:
    """A summary of recorded durations, in seconds (``None`` until something was recorded).

    ``p50`` and ``p99`` are within 6.25% of the exact value; ``max`` and ``total`` are exact.
    ``buckets`` lists ``(upper bound in seconds, count)`` for each non-empty bucket, in order.
    """

    count: int = 0
    total: float = 0.0
    p50: float | None = None
    p99: float | None = None
    max: float | None = None
    buckets: tuple[tuple[float, int], ...] = ()


class Histogram:
    """Counts of durations in log-linear buckets; ``record`` is a handful of integer operations."""

    __slots__ = ("count", "counts", "max", "total")

    def __init__(self) -> None:
        self.count = 0
        self.total = 0
        self.max = 0
        self.counts = [0] * (_SLOTS + 1)

    def record(self, ns: int) -> None:
        """Add one duration of ``ns`` nanoseconds."""
        self.count += 1
        self.total += ns
        if ns > self.max:
            self.max = ns
        self.counts[_slot(ns)] += 1

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile (0 < q <= 1) in seconds: the middle of its bucket, at most max."""
        if self.count == 0:
            return None
        rank = max(1, math.ceil(self.count * q - 1e-9))  # 1e-9: 100 * 0.99 is not quite 99
        seen = 0
        for slot, n in enumerate(self.counts):
            seen += n
            if n and seen >= rank:
                low, high = _bounds(slot)
                return min((low + high) / 2, self.max) / 1e9
        return self.max / 1e9  # pragma: no cover - the counts always add up to count

    def summary(self) -> Durations:
        """A snapshot: count, total, p50, p99, max and the non-empty buckets, in seconds."""
        if self.count == 0:
            return Durations()
        buckets = tuple(
            ((_bounds(slot)[1] + 1) / 1e9, n) for slot, n in enumerate(self.counts) if n
        )
        return Durations(
            count=self.count,
            total=self.total / 1e9,
            p50=self.quantile(0.5),
            p99=self.quantile(0.99),
            max=self.max / 1e9,
            buckets=buckets,
        )


@dataclass(frozen=True, slots=True)
class PoolMetrics:
    """One node's connection pool: its size, what is checked out, overflow, and tasks queued.

    ``waiting`` counts tasks queued for a connection of this pool (``None`` for a pool that keeps
    no queue: in-memory SQLite's single connection, ``NullPool``).
    """

    size: int
    checked_out: int
    idle: int
    overflow: int
    waiting: int | None


@dataclass(frozen=True, slots=True)
class UnitOfWorkMetrics:
    """Units of work by how they ended, and how long they took (cumulative).

    - ``committed``: ``commit()`` succeeded;
    - ``rolled_back``: a read-write unit of work left without committing (or ``rollback()``);
    - ``read_only``: a read-only unit of work that ended without an error (nothing to commit);
    - ``failed``: ended by an exception, by its class name (``ConflictError``, ...); the work was
      rolled back;
    - ``slow``: how many took longer than ``slow_threshold`` seconds (``None``: not watched);
    - ``in_flight``: entered and not yet ended; ``waiting``: of those, still waiting for their
      connection (on SQLite, writers waiting for the write lock too).
    """

    committed: int = 0
    rolled_back: int = 0
    read_only: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    slow: int = 0
    slow_threshold: float | None = None
    in_flight: int = 0
    waiting: int = 0
    duration: Durations = field(default_factory=Durations)


@dataclass(frozen=True, slots=True)
class DatabaseMetrics:
    """A snapshot of a ``Database``: pools by node, connection wait, units of work, retries.

    ``connection_wait`` is the time from entering a unit of work to holding its connection (pool
    queue, connecting, and on SQLite the write lock). ``retries`` counts the attempts
    ``run_in_transaction`` made again, by the error class that caused them. ``enabled`` is
    false when the ``metrics`` setting is off: then only the pools are measured.

    Example:
        >>> snapshot = db.metrics()  # doctest: +SKIP
        >>> snapshot.pools["primary"].checked_out, snapshot.connection_wait.p99  # doctest: +SKIP
        (3, 0.00042)
    """

    pools: dict[str, PoolMetrics]
    connection_wait: Durations
    units_of_work: UnitOfWorkMetrics
    retries: dict[str, int]
    enabled: bool = True

    def as_dict(self) -> dict[str, Any]:
        """Plain dicts, lists and numbers: ready for ``json.dumps``."""
        return dataclasses.asdict(self)


class Recorder:
    """The mutable counters a ``Database`` feeds; ``snapshot()`` freezes them."""

    __slots__ = (
        "committed",
        "duration",
        "failed",
        "read_only",
        "retries",
        "rolled_back",
        "slow",
        "slow_threshold",
        "wait",
        "waiting",
    )

    def __init__(self, slow_threshold: float | None) -> None:
        self.committed = 0
        self.rolled_back = 0
        self.read_only = 0
        self.failed: dict[str, int] = {}
        self.slow = 0
        self.slow_threshold = slow_threshold
        self.waiting = 0
        self.wait = Histogram()
        self.duration = Histogram()
        self.retries: dict[str, int] = {}

    def retried(self, reason: str) -> None:
        """Count one retry caused by the error class ``reason``."""
        self.retries[reason] = self.retries.get(reason, 0) + 1

    def snapshot(self, pools: dict[str, PoolMetrics], in_flight: int) -> DatabaseMetrics:
        """Everything recorded so far, with ``pools`` measured by the caller."""
        units = UnitOfWorkMetrics(
            committed=self.committed,
            rolled_back=self.rolled_back,
            read_only=self.read_only,
            failed=dict(self.failed),
            slow=self.slow,
            slow_threshold=self.slow_threshold,
            in_flight=in_flight,
            waiting=self.waiting,
            duration=self.duration.summary(),
        )
        return DatabaseMetrics(pools, self.wait.summary(), units, dict(self.retries))
