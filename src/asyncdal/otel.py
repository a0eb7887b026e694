"""OpenTelemetry for asyncdal: a span per unit of work, and database client metrics.

The ``otel`` extra (``pip install 'asyncdal[otel]'``) brings ``opentelemetry-api`` only; the SDK,
exporters and their configuration are the application's. Nothing in asyncdal imports this module
unless asked to: ``instrument(db)``, or the ``otel`` setting (``ASYNCDAL_OTEL=true``), which
calls it with the global providers. Without it a unit of work costs nothing more.

What ``instrument(db)`` adds, following the database client semantic conventions:

- a span per unit of work (each attempt of ``run_in_transaction`` is one), kind ``INTERNAL``,
  named ``unit_of_work`` or ``run_in_transaction <function>``, with ``db.system.name``,
  ``db.namespace``, ``server.address``/``server.port``, ``asyncdal.read_only``,
  ``asyncdal.outcome`` (committed, rolled_back, read_only, failed), ``asyncdal.statements``,
  ``asyncdal.attempt`` and, when it failed, ``error.type`` (the asyncdal error class) and an
  error status. Never a statement, a parameter or an error message. The span is current while
  the unit of work runs, so the per-statement ``CLIENT`` spans of
  ``opentelemetry-instrumentation-sqlalchemy``, if installed, are its children: asyncdal makes
  no statement spans of its own, so nothing is recorded twice;
- ``db.client.operation.duration`` (histogram, s): each statement, with ``db.operation.name``
  (``SELECT``, ``INSERT``...) and ``error.type`` when it failed;
- ``db.client.connection.wait_time`` (histogram, s): each unit of work's wait for its
  connection, by ``db.client.connection.pool.name`` (``primary``, or ``replica`` for reads
  routed to a replica);
- ``db.client.connection.count`` (``db.client.connection.state`` idle/used),
  ``db.client.connection.max`` and ``db.client.connection.pending_requests``, observed per node.

Example:
    >>> from asyncdal.otel import instrument  # doctest: +SKIP
    >>> instrument(db)  # the global tracer and meter providers  # doctest: +SKIP
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Iterator
from time import perf_counter_ns
from typing import TYPE_CHECKING, Any, Final, cast

from sqlalchemy import event
from sqlalchemy.engine import make_url

from ._observer import Entry, pool_metrics
from .errors import ConfigurationError, classify

try:
    from opentelemetry import context as otel_context
    from opentelemetry import metrics, trace
    from opentelemetry.metrics import CallbackOptions, Observation
    from opentelemetry.trace import SpanKind, Status, StatusCode
except ImportError as missing:  # pragma: no cover - the dev extra installs it
    raise ConfigurationError(
        "asyncdal.otel needs OpenTelemetry's API: pip install 'asyncdal[otel]'"
    ) from missing

if TYPE_CHECKING:
    from contextvars import Token

    from opentelemetry.context import Context
    from opentelemetry.metrics import Histogram, Meter, MeterProvider
    from opentelemetry.trace import Span, TracerProvider

    from .database import Database
    from .uow import UnitOfWork

#: The semantic conventions' advice for db.client.operation.duration (seconds).
_DURATION_BUCKETS: Final = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0)
_SCOPE: Final = "asyncdal"


def instrument(
    db: Database[Any],
    *,
    tracer_provider: TracerProvider | None = None,
    meter_provider: MeterProvider | None = None,
) -> None:
    """Trace ``db``'s units of work and measure its statements and pools (see the module).

    Idempotent: a second call changes nothing. ``None`` providers mean the global ones.

    Example:
        >>> instrument(db, tracer_provider=provider)  # doctest: +SKIP
    """
    observer = db._observer
    if observer.tracing is not None:
        return
    base = _attributes(db)
    tracer = trace.get_tracer(_SCOPE, tracer_provider=tracer_provider)
    meter = metrics.get_meter(_SCOPE, meter_provider=meter_provider)
    observer.count_statements(db.engines.values())
    statements = _Statements(meter, base)
    for engine in db.engines.values():
        statements.listen(engine.sync_engine)
    _observe_pools(meter, db, base)
    observer.tracing = _Spans(tracer, meter, base)


def _attributes(db: Database[Any]) -> dict[str, str | int]:
    url = make_url(db.settings.url)
    found: dict[str, str | int] = {"db.system.name": db.backend}
    if url.database:
        found["db.namespace"] = url.database
    if db.backend == "postgresql":
        found["server.address"] = url.host or "localhost"
        found["server.port"] = url.port or 5432
    return found


class _Spans:
    """The ``Tracing`` hooks ``asyncdal._observer.Observer`` calls around each unit of work."""

    def __init__(self, tracer: trace.Tracer, meter: Meter, base: dict[str, str | int]) -> None:
        self._tracer = tracer
        self._base = base
        self._wait: Histogram = meter.create_histogram(
            "db.client.connection.wait_time",
            unit="s",
            description="The time it took to obtain an open connection from the pool.",
        )
        self._pools = {
            name: {**base, "db.client.connection.pool.name": name}
            for name in ("primary", "replica")
        }

    def start(self, uow: UnitOfWork) -> object:
        attributes: dict[str, Any] = {**self._base, "asyncdal.read_only": uow.read_only}
        name = "unit_of_work"
        if uow._attempt is not None:
            fn, attributes["asyncdal.attempt"] = uow._attempt
            name = f"run_in_transaction {getattr(fn, '__qualname__', type(fn).__name__)}"
        span = self._tracer.start_span(name, kind=SpanKind.INTERNAL, attributes=attributes)
        # Current while the unit of work runs: statement spans made inside become its children.
        token = otel_context.attach(trace.set_span_in_context(span))
        pool = "replica" if uow._opener is not None else "primary"
        return span, token, pool

    def finish(
        self, handle: object, entry: Entry, outcome: str, error: BaseException | None
    ) -> None:
        span, token, pool = cast("tuple[Span, Token[Context], str]", handle)  # from start()
        otel_context.detach(token)
        if entry.connected:
            self._wait.record((entry.connected - entry.start) / 1e9, self._pools[pool])
        _end(span, entry, outcome, error)


def _end(span: Span, entry: Entry, outcome: str, error: BaseException | None) -> None:
    span.set_attribute("asyncdal.outcome", outcome)
    span.set_attribute("asyncdal.statements", entry.statements)
    if error is not None and outcome == "failed":
        # The class only: messages of driver errors can quote values.
        kind = type(error).__name__
        span.set_attribute("error.type", kind)
        span.set_status(Status(StatusCode.ERROR, kind))
    span.end()


class _Statements:
    """``db.client.operation.duration`` for each statement, from SQLAlchemy's cursor events."""

    def __init__(self, meter: Meter, base: dict[str, str | int]) -> None:
        self._histogram = meter.create_histogram(
            "db.client.operation.duration",
            unit="s",
            description="Duration of database client operations.",
            explicit_bucket_boundaries_advisory=list(_DURATION_BUCKETS),
        )
        self._base = base
        self._attributes: dict[tuple[str, str | None], dict[str, str | int]] = {}

    def listen(self, engine: Any) -> None:
        event.listen(engine, "before_cursor_execute", self._before)
        event.listen(engine, "after_cursor_execute", self._after)
        event.listen(engine, "handle_error", self._failed)

    def _before(
        self, _conn: Any, _cursor: Any, _sql: str, _params: Any, context: Any, _many: bool
    ) -> None:
        context._asyncdal_started = perf_counter_ns()

    def _after(
        self, _conn: Any, _cursor: Any, sql: str, _params: Any, context: Any, _many: bool
    ) -> None:
        self._record(context, sql, None)

    def _failed(self, exception_context: Any) -> None:
        context = exception_context.execution_context
        if context is not None:
            error = exception_context.original_exception
            mapped = classify(error)
            kind = (mapped or type(error)).__name__
            self._record(context, exception_context.statement or "", kind)

    def _record(self, context: Any, sql: str, error: str | None) -> None:
        started = getattr(context, "_asyncdal_started", None)
        if started is None:
            return
        context._asyncdal_started = None  # once: a failed statement reaches only handle_error
        operation = sql.lstrip().split(None, 1)[0].upper() if sql.strip() else "UNKNOWN"
        key = (operation, error)
        attributes = self._attributes.get(key)
        if attributes is None:
            attributes = {**self._base, "db.operation.name": operation}
            if error is not None:
                attributes["error.type"] = error
            if len(self._attributes) < 256:  # bounded: operation names come from statements
                self._attributes[key] = attributes
        self._histogram.record((perf_counter_ns() - started) / 1e9, attributes)


def _observe_pools(meter: Meter, db: Database[Any], base: dict[str, str | int]) -> None:
    """Observable instruments over each node's pool, read at each export."""
    ref = weakref.ref(db)
    overflow = db.settings.max_overflow

    def pools() -> Iterator[tuple[dict[str, str | int], Any]]:
        found = ref()
        if found is None:
            return
        for name, engine in found.engines.items():
            yield {**base, "db.client.connection.pool.name": name}, pool_metrics(engine.pool)

    def count(_options: CallbackOptions) -> Iterable[Observation]:
        for attributes, pool in pools():
            yield Observation(pool.idle, {**attributes, "db.client.connection.state": "idle"})
            yield Observation(
                pool.checked_out, {**attributes, "db.client.connection.state": "used"}
            )

    def maximum(_options: CallbackOptions) -> Iterable[Observation]:
        for attributes, pool in pools():
            yield Observation(pool.size + overflow, attributes)

    def pending(_options: CallbackOptions) -> Iterable[Observation]:
        for attributes, pool in pools():
            yield Observation(pool.waiting or 0, attributes)

    for name, unit, description, callback in (
        ("db.client.connection.count", "{connection}", "Connections by state.", count),
        ("db.client.connection.max", "{connection}", "The most open connections allowed.", maximum),
        (
            "db.client.connection.pending_requests",
            "{request}",
            "Tasks waiting for a connection.",
            pending,
        ),
    ):
        meter.create_observable_up_down_counter(
            name, callbacks=[callback], unit=unit, description=description
        )
