"""``asyncdal.otel``: a span per unit of work, database client metrics, tested with the SDK's
in-memory exporters; without it nothing imports OpenTelemetry."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from asyncdal import Database
from asyncdal.errors import NotFoundError, RetryableError
from asyncdal.models import User
from asyncdal.otel import instrument
from asyncdal.users import UserUnitOfWork
from tests.support import Backend


class Telemetry:
    """An SDK tracer and meter provider exporting to memory."""

    def __init__(self) -> None:
        self.spans = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    def ours(self) -> list[ReadableSpan]:
        return [s for s in self.spans.get_finished_spans() if s.kind is SpanKind.INTERNAL]

    def points(self, name: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        assert data is not None
        return [
            point
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
            if metric.name == name
            for point in metric.data.data_points
        ]


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    found = Telemetry()
    yield found
    found.tracer_provider.shutdown()
    found.meter_provider.shutdown()


def _instrumented(backend: Backend, telemetry: Telemetry) -> Database[UserUnitOfWork]:
    db = backend.database()
    instrument(
        db,
        tracer_provider=telemetry.tracer_provider,
        meter_provider=telemetry.meter_provider,
    )
    return db


async def test_each_unit_of_work_is_one_span_with_its_outcome(
    backend: Backend, telemetry: Telemetry
) -> None:
    db = _instrumented(backend, telemetry)
    try:
        async with db.unit_of_work() as uow:
            await uow.users.add(User(name="span", age=1))
            await uow.commit()
        with pytest.raises(NotFoundError):
            async with db.unit_of_work(read_only=True) as uow:
                await uow.users.get_one(-1)
    finally:
        await db.dispose()
    committed, failed = telemetry.ours()
    system = "sqlite" if backend.name == "sqlite" else "postgresql"
    assert committed.name == "unit_of_work"
    assert committed.attributes is not None
    assert failed.attributes is not None
    assert committed.attributes["db.system.name"] == system
    assert committed.attributes["db.namespace"]
    assert committed.attributes["asyncdal.read_only"] is False
    assert committed.attributes["asyncdal.outcome"] == "committed"
    assert "error.type" not in committed.attributes
    assert failed.attributes["asyncdal.read_only"] is True
    assert failed.attributes["asyncdal.outcome"] == "failed"
    assert failed.attributes["error.type"] == "NotFoundError"
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.status.description == "NotFoundError"


async def test_each_attempt_of_run_in_transaction_is_a_span(
    backend: Backend, telemetry: Telemetry
) -> None:
    db = _instrumented(backend, telemetry)
    attempts = 0

    async def flaky(uow: UserUnitOfWork) -> None:
        nonlocal attempts
        attempts += 1
        await uow.users.count()
        if attempts == 1:
            raise RetryableError("transient, for the test")

    try:
        await db.run_in_transaction(flaky, base_delay=0)
    finally:
        await db.dispose()
    first, second = telemetry.ours()
    assert first.name == second.name
    assert first.name.startswith("run_in_transaction ")
    assert first.name.endswith("flaky")
    assert first.attributes is not None
    assert second.attributes is not None
    assert (first.attributes["asyncdal.attempt"], second.attributes["asyncdal.attempt"]) == (1, 2)
    assert first.attributes["error.type"] == "RetryableError"
    assert second.attributes["asyncdal.outcome"] == "committed"


async def test_statement_spans_of_the_sqlalchemy_instrumentation_are_children(
    backend: Backend, telemetry: Telemetry
) -> None:
    db = _instrumented(backend, telemetry)
    instrumentor = SQLAlchemyInstrumentor()
    # Its metadata still says "sqlalchemy < 2.1"; it works on 2.1, the check refuses it.
    instrumentor.instrument(
        engine=db.engine.sync_engine,
        tracer_provider=telemetry.tracer_provider,
        skip_dep_check=True,
    )
    try:
        async with db.unit_of_work(read_only=True) as uow:
            await uow.users.count()
            await uow.users.list(limit=1)
    finally:
        instrumentor.uninstrument()
        await db.dispose()
    [ours] = telemetry.ours()
    statements = [s for s in telemetry.spans.get_finished_spans() if s.kind is SpanKind.CLIENT]
    queries = [s for s in statements if s.name.split()[0] == "SELECT"]
    assert len(queries) == 2
    assert ours.context is not None
    for span in queries:
        assert span.parent is not None
        assert span.parent.span_id == ours.context.span_id
        assert span.context is not None
        assert span.context.trace_id == ours.context.trace_id
    assert ours.attributes is not None
    assert ours.attributes["asyncdal.statements"] == 2


async def test_client_metrics_follow_the_semantic_conventions(
    backend: Backend, telemetry: Telemetry
) -> None:
    db = _instrumented(backend, telemetry)
    try:
        async with db.unit_of_work() as uow:
            await uow.users.add(User(name="metric", age=1))
            await uow.commit()
        async with db.unit_of_work(read_only=True) as uow:
            await uow.users.count()
        operations = {
            point.attributes["db.operation.name"]: point
            for point in telemetry.points("db.client.operation.duration")
        }
        waits = telemetry.points("db.client.connection.wait_time")
        counts = telemetry.points("db.client.connection.count")
    finally:
        await db.dispose()
    assert {"INSERT", "SELECT"} <= set(operations)
    assert operations["SELECT"].count == 1
    assert operations["SELECT"].attributes["db.system.name"] in ("sqlite", "postgresql")
    [wait] = waits
    assert wait.count == 2
    assert wait.attributes["db.client.connection.pool.name"] == "primary"
    states = {p.attributes["db.client.connection.state"]: p.value for p in counts}
    assert states["used"] == 0
    assert states["idle"] >= 1


async def test_a_failed_statement_is_measured_with_its_error_type(
    backend: Backend, telemetry: Telemetry
) -> None:
    db = _instrumented(backend, telemetry)
    email = "dup-otel@example.com"
    try:
        async with db.unit_of_work() as uow:
            await uow.users.add(User(name="a", age=1, email=email))
            await uow.commit()
        with pytest.raises(Exception, match=r"ConflictError|failed"):
            async with db.unit_of_work() as uow:
                await uow.users.add(User(name="b", age=1, email=email))
        failed = [
            point
            for point in telemetry.points("db.client.operation.duration")
            if "error.type" in point.attributes
        ]
    finally:
        async with db.unit_of_work() as uow:
            await uow.users.delete_where(email=email)
            await uow.commit()
        await db.dispose()
    assert [point.attributes["error.type"] for point in failed] == ["ConflictError"]


def _run(code: str, **env: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_without_instrumenting_nothing_imports_opentelemetry(tmp_path: object) -> None:
    out = _run(
        f"""
        import asyncio, sys
        from asyncdal import Database
        async def main():
            db = Database("sqlite+aiosqlite:///{tmp_path}/x.db", )
            async with db.unit_of_work(read_only=True) as uow:
                await uow.session.connection()
            await db.dispose()
        asyncio.run(main())
        print(sorted(name for name in sys.modules if name.startswith("opentelemetry")))
        """
    )
    assert out == "[]"


def test_the_otel_setting_instruments_with_the_global_providers(tmp_path: object) -> None:
    out = _run(
        """
        import asyncio
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        from asyncdal import Database
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        async def main():
            db = Database.from_env()
            async with db.unit_of_work(read_only=True) as uow:
                await uow.session.connection()
            await db.dispose()
        asyncio.run(main())
        print([span.name for span in exporter.get_finished_spans()])
        """,
        DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/y.db",
        ASYNCDAL_OTEL="true",
    )
    assert out == "['unit_of_work']"
