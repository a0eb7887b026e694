"""``ASYNCDAL_SLOW_UNIT_OF_WORK_MS``: one WARNING per slow unit of work, with its duration,
statement count and outcome, never a parameter value."""

from __future__ import annotations

import asyncio
import logging

import pytest

from asyncdal.errors import NotFoundError
from asyncdal.models import User
from asyncdal.users import UserUnitOfWork
from tests.support import Backend

SECRET = "secret-value-7f3a"


def _slow_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage().startswith("slow unit of work")]


async def test_a_slow_unit_of_work_logs_one_warning_without_parameter_values(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    db = backend.database(slow_unit_of_work_ms=50)
    try:
        with caplog.at_level(logging.WARNING, logger="asyncdal"):
            async with db.unit_of_work() as uow:
                await uow.users.add(User(name=SECRET, age=42, email=f"{SECRET}@example.com"))
                await uow.users.list(name=SECRET)
                await asyncio.sleep(0.1)
                await uow.commit()
    finally:
        await db.dispose()
    [record] = _slow_lines(caplog)
    message = record.getMessage()
    assert record.levelno == logging.WARNING
    assert "unit_of_work took" in message
    assert "(threshold 50 ms)" in message
    assert "outcome committed" in message
    assert "read-write" in message
    # SQLite: BEGIN IMMEDIATE, INSERT, SELECT; PostgreSQL: INSERT, SELECT (BEGIN is the driver's)
    assert f"statements {3 if backend.name == 'sqlite' else 2}," in message
    assert SECRET not in caplog.text
    assert "42" not in message.split("statements")[1]


async def test_fast_units_of_work_log_nothing(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    db = backend.database(slow_unit_of_work_ms=5000)
    try:
        with caplog.at_level(logging.WARNING, logger="asyncdal"):
            async with db.unit_of_work(read_only=True) as uow:
                await uow.users.count()
    finally:
        await db.dispose()
    assert _slow_lines(caplog) == []


async def test_a_failed_retried_unit_of_work_names_its_function_attempt_and_error(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    db = backend.database(slow_unit_of_work_ms=0)

    async def find_nobody(uow: UserUnitOfWork) -> None:
        await uow.users.get_one(-1)

    try:
        with caplog.at_level(logging.WARNING, logger="asyncdal"), pytest.raises(NotFoundError):
            await db.run_in_transaction(find_nobody)
    finally:
        await db.dispose()
    [record] = _slow_lines(caplog)
    message = record.getMessage()
    assert "run_in_transaction(" in message
    assert "find_nobody) attempt 1" in message
    assert "outcome failed (NotFoundError)" in message


async def test_without_the_setting_nothing_is_counted_or_logged(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    db = backend.database()
    try:
        with caplog.at_level(logging.WARNING, logger="asyncdal"):
            async with db.unit_of_work(read_only=True):
                await asyncio.sleep(0.05)
        assert db.metrics().units_of_work.slow_threshold is None
    finally:
        await db.dispose()
    assert _slow_lines(caplog) == []
