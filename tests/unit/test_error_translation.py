"""The translator's table, row by row: driver errors become the asyncdal error tree."""

from __future__ import annotations

import sqlite3

import asyncpg
import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import exc as orm_exc

from asyncdal import errors
from asyncdal.errors import (
    CommitOutcomeUnknownError,
    ConflictError,
    ConnectionLostError,
    DataAccessError,
    InvalidDataError,
    InvalidQueryError,
    QueryTimeoutError,
    RetryableError,
    StaleVersionError,
    UnavailableError,
    classify,
    translate,
)


class AdaptedError(Exception):
    """The shape of SQLAlchemy's asyncpg adapter errors: a ``sqlstate`` on the instance."""

    def __init__(self, sqlstate: str) -> None:
        super().__init__("server error")
        self.sqlstate = sqlstate


def _pg(code: str) -> sa_exc.DBAPIError:
    return sa_exc.DBAPIError("SELECT 1", None, AdaptedError(code))


def _sqlite(name: str, kind: type[sqlite3.Error] = sqlite3.OperationalError) -> sa_exc.DBAPIError:
    orig = kind("boom")
    orig.sqlite_errorname = name
    return sa_exc.DBAPIError("SELECT 1", None, orig)


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("23505", ConflictError),
        ("23503", ConflictError),
        ("23514", ConflictError),
        ("23502", InvalidDataError),
        ("22001", InvalidDataError),
        ("22003", InvalidDataError),
        ("22021", InvalidDataError),
        ("40001", RetryableError),
        ("40P01", RetryableError),
        ("55P03", RetryableError),
        ("57014", QueryTimeoutError),
        ("25P03", QueryTimeoutError),
        ("57P01", ConnectionLostError),
        ("08006", ConnectionLostError),
        ("53300", UnavailableError),
        ("3D000", UnavailableError),
        ("42P01", DataAccessError),
    ],
)
def test_postgres_sqlstate_maps_to_its_class(code: str, expected: type[Exception]) -> None:
    assert classify(_pg(code)) is expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("SQLITE_CONSTRAINT_UNIQUE", ConflictError),
        ("SQLITE_CONSTRAINT_PRIMARYKEY", ConflictError),
        ("SQLITE_CONSTRAINT_FOREIGNKEY", ConflictError),
        ("SQLITE_CONSTRAINT_CHECK", ConflictError),
        ("SQLITE_CONSTRAINT_NOTNULL", InvalidDataError),
        ("SQLITE_TOOBIG", InvalidDataError),
        ("SQLITE_BUSY", RetryableError),
        ("SQLITE_BUSY_SNAPSHOT", RetryableError),
        ("SQLITE_LOCKED", RetryableError),
        ("SQLITE_INTERRUPT", QueryTimeoutError),
        ("SQLITE_CANTOPEN", UnavailableError),
        ("SQLITE_ERROR", DataAccessError),
    ],
)
def test_sqlite_error_name_maps_to_its_class(name: str, expected: type[Exception]) -> None:
    assert classify(_sqlite(name)) is expected


def test_lost_connection_while_connecting_means_unavailable() -> None:
    assert classify(_pg("57P01"), connecting=True) is UnavailableError
    assert classify(ConnectionRefusedError(111, "refused"), connecting=True) is UnavailableError
    assert classify(TimeoutError(), connecting=True) is UnavailableError


def test_invalidated_connection_mid_transaction_is_retryable() -> None:
    error = sa_exc.DBAPIError("SELECT 1", None, Exception("gone"), connection_invalidated=True)
    assert classify(error) is ConnectionLostError
    assert issubclass(ConnectionLostError, RetryableError)


def test_pool_timeout_is_unavailable() -> None:
    assert classify(sa_exc.TimeoutError("QueuePool limit reached")) is UnavailableError


def test_stale_version_is_a_conflict_and_retryable() -> None:
    assert classify(orm_exc.StaleDataError("version mismatch")) is StaleVersionError
    assert issubclass(StaleVersionError, ConflictError)
    assert issubclass(StaleVersionError, RetryableError)


def test_our_bugs_are_never_translated() -> None:
    assert classify(AttributeError("x")) is None
    assert classify(TypeError("x")) is None
    assert classify(KeyError("x")) is None
    assert translate(TypeError("x"), "Repo.list()") is None


def test_translated_message_names_the_operation_and_code_but_not_parameters() -> None:
    orig = asyncpg.UniqueViolationError("duplicate key value violates unique constraint")
    error = sa_exc.IntegrityError("INSERT ...", {"email": "secret@x"}, orig)
    mapped = translate(error, "UserRepository.add()")
    assert isinstance(mapped, ConflictError)
    assert str(mapped).startswith("UserRepository.add() failed: [23505]")
    assert "secret@x" not in str(mapped)


def test_error_tree_matches_the_design() -> None:
    for cls in (
        errors.NotFoundError,
        ConflictError,
        InvalidQueryError,
        InvalidDataError,
        QueryTimeoutError,
        UnavailableError,
        RetryableError,
        CommitOutcomeUnknownError,
    ):
        assert issubclass(cls, DataAccessError)
    assert issubclass(InvalidQueryError, ValueError)
    assert not issubclass(CommitOutcomeUnknownError, RetryableError)
