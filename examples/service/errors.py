"""The one place that turns errors into HTTP responses.

Bodies carry a fixed sentence per kind of error, never the exception's message: a driver's message
can quote SQL, a parameter (``Key (email)=(ann@example.com) already exists``) or a server detail.
The full error goes to the log, not to the client.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from asyncdal.errors import (
    ConflictError,
    DataAccessError,
    InvalidDataError,
    InvalidQueryError,
    NotFoundError,
    QueryTimeoutError,
    RetryableError,
    StaleVersionError,
    UnavailableError,
)

logger = logging.getLogger("service")

#: How long a client should wait before trying a 503 again, in seconds.
RETRY_AFTER = "1"


class PreconditionFailed(Exception):
    """The ``If-Match`` header names another version than the current one."""


# Most specific first: StaleVersionError is also a ConflictError and a RetryableError.
STATUS: list[tuple[type[Exception], int, str]] = [
    (PreconditionFailed, 412, "the user has changed since that version (If-Match)"),
    (StaleVersionError, 412, "the user was changed by someone else meanwhile"),
    (NotFoundError, 404, "no such user"),
    (ConflictError, 409, "conflicts with existing data (e.g. the email is taken)"),
    (InvalidQueryError, 400, "bad request (e.g. a malformed page cursor)"),
    (InvalidDataError, 422, "a value was rejected"),
    (QueryTimeoutError, 504, "the database did not answer in time"),
    (UnavailableError, 503, "the database is unavailable"),
    (RetryableError, 503, "a transient database failure: try again"),
]


def status_of(error: Exception) -> tuple[int, str]:
    """The status code and the sentence for ``error``; 500 for anything unexpected."""
    for kind, status, sentence in STATUS:
        if isinstance(error, kind):
            return status, sentence
    return 500, "internal error"


def _respond(error: Exception) -> JSONResponse:
    status, sentence = status_of(error)
    if status >= 500:
        logger.warning("answering %d for %s", status, type(error).__name__, exc_info=error)
    headers = {"Retry-After": RETRY_AFTER} if status == 503 else None
    return JSONResponse({"error": sentence}, status_code=status, headers=headers)


async def _mapped(_request: Request, error: Exception) -> JSONResponse:
    return _respond(error)


async def _invalid_request(_request: Request, error: Exception) -> JSONResponse:
    # FastAPI's default body echoes the input back; say where and what, not the value.
    problems = error.errors() if isinstance(error, RequestValidationError) else []
    details = [{"loc": list(each["loc"]), "msg": each["msg"]} for each in problems]
    return JSONResponse({"error": "invalid request", "details": details}, status_code=422)


def install(app: FastAPI) -> None:
    """Register the mapping on ``app``; ``Exception`` covers everything else as a bare 500."""
    app.add_exception_handler(DataAccessError, _mapped)
    app.add_exception_handler(PreconditionFailed, _mapped)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(Exception, _mapped)
