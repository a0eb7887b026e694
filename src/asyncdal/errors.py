"""The error tree, and the one place that translates driver and SQLAlchemy errors into it.

::

    DataAccessError
    ├── NotFoundError             get_one() and friends found no row
    ├── ConflictError             unique / foreign-key / check violation
    │   └── StaleVersionError     a stale version on update (also a RetryableError)
    ├── InvalidQueryError         (also a ValueError) unknown filter or order_by name, bad argument
    │   └── ConfigurationError    a setting or URL is invalid
    ├── InvalidDataError          (also a ValueError) a value the database rejects
    ├── QueryTimeoutError         statement timeout, or a timeout around a unit of work
    ├── UnavailableError          cannot connect, pool timeout, database shut down
    ├── CommitOutcomeUnknownError lost during COMMIT: it may or may not have applied
    ├── UnitOfWorkStateError      (also a RuntimeError) the unit of work's state forbids the call
    └── RetryableError            serialization failure, deadlock, lock timeout, SQLite busy
        ├── ConnectionLostError   the connection dropped mid-transaction; nothing was committed
        └── StaleVersionError

Classification is by PostgreSQL SQLSTATE, SQLite error name and exception type, never by message
text. ``AttributeError``, ``TypeError`` and anything unrecognised pass through untouched: those are
bugs, and hiding them behind a data-access error would make them harder to find.
"""

from __future__ import annotations

import builtins
import sqlite3
from typing import Final, NoReturn

from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import exc as orm_exc


class DataAccessError(Exception):
    """Base of every error asyncdal raises for a database failure."""


class NotFoundError(DataAccessError):
    """Raised by ``get_one()`` when no row has the requested key."""


class ConflictError(DataAccessError):
    """Raised on a unique, foreign-key or check violation, or a stale version."""


class InvalidQueryError(DataAccessError, ValueError):
    """Raised before any SQL is sent for an unknown filter/order_by name or a bad argument."""


class ConfigurationError(InvalidQueryError):
    """Raised when a setting or database URL is invalid; the message names the field."""


class InvalidDataError(DataAccessError, ValueError):
    """Raised for a value the database (or the model, on its behalf) rejects."""


class QueryTimeoutError(DataAccessError):
    """Raised when a statement timeout or a timeout around a unit of work expires."""


class UnavailableError(DataAccessError):
    """Raised when the database cannot be reached: refused, pool timeout, shutting down."""


class CommitOutcomeUnknownError(DataAccessError):
    """Raised when the connection dropped during COMMIT: the transaction may have applied."""


class UnitOfWorkStateError(DataAccessError, RuntimeError):
    """Raised for a call the unit of work's state forbids (ended, read-only, committed)."""


class RetryableError(DataAccessError):
    """Raised for a transient failure that re-running the whole transaction may fix."""


class ConnectionLostError(RetryableError):
    """Raised when the connection dropped mid-transaction; nothing of it was committed."""


class StaleVersionError(ConflictError, RetryableError):
    """Raised when an update finds its row's version changed since it was read."""


# PostgreSQL SQLSTATE codes -> error class. Exact codes first, then two-character classes.
_PG_CODES: Final[dict[str, type[DataAccessError]]] = {
    "23505": ConflictError,  # unique_violation
    "23503": ConflictError,  # foreign_key_violation
    "23514": ConflictError,  # check_violation
    "23P01": ConflictError,  # exclusion_violation
    "23502": InvalidDataError,  # not_null_violation
    "40001": RetryableError,  # serialization_failure
    "40P01": RetryableError,  # deadlock_detected
    "55P03": RetryableError,  # lock_not_available (lock_timeout)
    "57014": QueryTimeoutError,  # query_canceled (statement_timeout)
    "25P03": QueryTimeoutError,  # idle_in_transaction_session_timeout
    "57P01": ConnectionLostError,  # admin_shutdown (pg_terminate_backend, fast shutdown)
    "57P02": ConnectionLostError,  # crash_shutdown
    "57P03": UnavailableError,  # cannot_connect_now (starting up / shutting down)
    "53300": UnavailableError,  # too_many_connections
    "3D000": UnavailableError,  # invalid_catalog_name: the database does not exist
    "28000": UnavailableError,  # invalid_authorization_specification
    "28P01": UnavailableError,  # invalid_password
}
_PG_CLASSES: Final[dict[str, type[DataAccessError]]] = {
    "22": InvalidDataError,  # data exception: too long, out of range, bad encoding
    "08": ConnectionLostError,  # connection exception
    "53": UnavailableError,  # insufficient resources
}

# SQLite extended error names (sqlite3.Error.sqlite_errorname, Python >= 3.11).
_SQLITE_NAMES: Final[dict[str, type[DataAccessError]]] = {
    "SQLITE_CONSTRAINT_UNIQUE": ConflictError,
    "SQLITE_CONSTRAINT_PRIMARYKEY": ConflictError,
    "SQLITE_CONSTRAINT_FOREIGNKEY": ConflictError,
    "SQLITE_CONSTRAINT_CHECK": ConflictError,
    "SQLITE_CONSTRAINT_TRIGGER": ConflictError,
    "SQLITE_CONSTRAINT_NOTNULL": InvalidDataError,
    "SQLITE_TOOBIG": InvalidDataError,
    "SQLITE_MISMATCH": InvalidDataError,
    "SQLITE_RANGE": InvalidDataError,
    "SQLITE_INTERRUPT": QueryTimeoutError,
    "SQLITE_CANTOPEN": UnavailableError,
    "SQLITE_NOTADB": UnavailableError,
    "SQLITE_FULL": UnavailableError,
}
_SQLITE_PREFIXES: Final[dict[str, type[DataAccessError]]] = {
    "SQLITE_BUSY": RetryableError,  # includes SQLITE_BUSY_SNAPSHOT, _RECOVERY, _TIMEOUT
    "SQLITE_LOCKED": RetryableError,
    "SQLITE_CONSTRAINT": ConflictError,
    "SQLITE_CANTOPEN": UnavailableError,
    "SQLITE_IOERR": UnavailableError,
}


def _sqlstate(error: BaseException | None) -> str | None:
    """The SQLSTATE carried by a driver error or by anything it chains to."""
    seen = 0
    while error is not None and seen < 4:
        code = getattr(error, "sqlstate", None) or getattr(error, "pgcode", None)
        if isinstance(code, str) and len(code) == 5:
            return code
        error = error.__cause__ or error.__context__
        seen += 1
    return None


def _driver_class_name(error: BaseException | None) -> set[str]:
    names: set[str] = set()
    seen = 0
    while error is not None and seen < 4:
        names.update(cls.__name__ for cls in type(error).__mro__)
        error = error.__cause__ or error.__context__
        seen += 1
    return names


def _classify_sqlite(error: sqlite3.Error) -> type[DataAccessError] | None:
    name = getattr(error, "sqlite_errorname", None)
    if not isinstance(name, str):
        return None
    exact = _SQLITE_NAMES.get(name)
    if exact is not None:
        return exact
    for prefix, mapped in _SQLITE_PREFIXES.items():
        if name.startswith(prefix):
            return mapped
    return None


def _classify_sqlstate(code: str) -> type[DataAccessError]:
    return _PG_CODES.get(code) or _PG_CLASSES.get(code[:2]) or DataAccessError


def classify(error: BaseException, *, connecting: bool = False) -> type[DataAccessError] | None:
    """The asyncdal class for a driver/SQLAlchemy error, or ``None`` when it is not ours to map.

    ``connecting`` says the error happened while opening a connection: a lost or refused
    connection then means the database is unavailable rather than that work was interrupted.
    """
    if isinstance(error, DataAccessError):
        return type(error)
    if isinstance(error, builtins.AttributeError | builtins.TypeError):
        return None
    if isinstance(error, orm_exc.StaleDataError):
        return StaleVersionError
    if isinstance(error, sa_exc.TimeoutError):  # the pool's QueuePool timeout
        return UnavailableError
    if isinstance(error, sa_exc.DBAPIError):
        return _classify_dbapi(error, connecting=connecting)
    if isinstance(error, sqlite3.Error):
        return _classify_sqlite(error) or DataAccessError
    names = _driver_class_name(error)
    if "PostgresError" in names or "InterfaceError" in names:
        # asyncpg errors raised before SQLAlchemy could wrap them (e.g. while connecting).
        code = _sqlstate(error)
        if code is not None:
            mapped = _classify_sqlstate(code)
            return UnavailableError if connecting and mapped is ConnectionLostError else mapped
        return UnavailableError if connecting else ConnectionLostError
    if isinstance(error, OSError | builtins.TimeoutError):
        # ConnectionRefusedError, socket.gaierror, connect timeouts: the server is out of reach.
        return UnavailableError if connecting else ConnectionLostError
    if isinstance(error, OverflowError):
        return InvalidDataError  # sqlite3 refuses integers beyond 64 bits on the client side
    if isinstance(error, UnicodeEncodeError):
        return InvalidDataError  # sqlite3 refuses a lone surrogate in a parameter, client side
    return None


def _classify_dbapi(error: sa_exc.DBAPIError, *, connecting: bool) -> type[DataAccessError]:
    orig = error.orig
    if isinstance(orig, sqlite3.Error):
        mapped = _classify_sqlite(orig)
        if mapped is not None:
            return mapped
    code = _sqlstate(orig)
    names = _driver_class_name(orig)
    if "InvalidCachedStatementError" in names:
        # asyncpg's prepared statement outlived a DDL change; the next attempt re-prepares it.
        return RetryableError
    if code is not None and code not in ("08000", "08003", "08006"):
        mapped = _classify_sqlstate(code)
        if connecting and mapped is ConnectionLostError:
            return UnavailableError
        if mapped is not DataAccessError:
            return mapped
    if error.connection_invalidated or (code is not None and code.startswith("08")):
        return UnavailableError if connecting else ConnectionLostError
    if "DataError" in names or isinstance(error, sa_exc.DataError):
        return InvalidDataError
    if isinstance(error, sa_exc.IntegrityError):
        return ConflictError
    if connecting:
        return UnavailableError
    if "TimeoutError" in names:
        return QueryTimeoutError
    return DataAccessError


def translate(
    error: BaseException, operation: str, *, connecting: bool = False
) -> DataAccessError | None:
    """Build the asyncdal error for ``error`` (raise it ``from error``), or ``None`` to re-raise.

    Messages name the operation and the error class, never the SQL parameters or the URL.
    """
    mapped = classify(error, connecting=connecting)
    if mapped is None:
        return None
    if isinstance(error, DataAccessError):
        return error
    detail = _describe(error)
    return mapped(f"{operation} failed: {detail}")


def raise_translated(error: Exception, operation: str, *, connecting: bool = False) -> NoReturn:
    """Raise the asyncdal error for ``error``, chained ``from`` it, or ``error`` itself when it is
    not ours to map (or already is one)."""
    mapped = translate(error, operation, connecting=connecting)
    if mapped is None or mapped is error:
        raise error
    raise mapped from error


def _describe(error: BaseException) -> str:
    """A short description of a driver error without its SQL parameters."""
    orig = error.orig if isinstance(error, sa_exc.DBAPIError) else error
    code = _sqlstate(orig)
    if isinstance(orig, sqlite3.Error):
        code = getattr(orig, "sqlite_errorname", None)
    text = str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
    # Drop the driver's class prefix ("<class 'asyncpg...'>: ") that SQLAlchemy adds.
    if text.startswith("<class "):
        text = text.split(">: ", 1)[-1]
    prefix = f"[{code}] " if code else ""
    return f"{prefix}{type(orig).__name__}: {text[:500]}"
