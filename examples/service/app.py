"""An HTTP service on asyncdal: users over JSON, FastAPI under uvicorn.

From the repository root (``pip install -e '.[service]'``)::

    DATABASE_URL=postgresql+asyncpg://postgres@127.0.0.1:5432/test uvicorn examples.service.app:app

Without ``DATABASE_URL`` it keeps its users in ``./service.db`` (SQLite). Every ``ASYNCDAL_*``
variable applies (pool size, timeouts, ``ASYNCDAL_SLOW_UNIT_OF_WORK_MS``, ``ASYNCDAL_OTEL``...);
``SERVICE_REQUEST_TIMEOUT`` and ``SERVICE_SHUTDOWN_TIMEOUT`` (seconds) bound a request's database
work and the wait for work in flight at shutdown.

- The ``Database`` lives in the lifespan: built from the environment, migrated at start (an
  advisory lock makes that safe with several instances starting at once), disposed at shutdown
  with a deadline for the work in flight.
- Reads get a read-only unit of work per request from a dependency. Writes run in
  ``db.run_in_transaction()``: a transient failure (a serialization failure, a deadlock, a version
  that moved on meanwhile) re-runs the whole read-check-write in a fresh unit of work.
- ``errors.py`` is the one place that turns errors into status codes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request, Response
from fastapi.responses import JSONResponse

from asyncdal import Database, DatabaseSettings
from asyncdal.migrations import current, head, upgrade
from asyncdal.models import User
from asyncdal.users import UserUnitOfWork
from examples.service import errors
from examples.service.schemas import NewUser, UserChanges, UserOut, UserPage

DEFAULT_URL = "sqlite+aiosqlite:///service.db"
logger = logging.getLogger("service")


def _seconds(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


def create_app(
    settings: DatabaseSettings | None = None,
    *,
    request_timeout: float | None = None,
    shutdown_timeout: float | None = None,
) -> FastAPI:
    """The application; ``settings`` default to ``DATABASE_URL`` and ``ASYNCDAL_*`` variables."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # uvicorn sets up its own loggers only: show ours and asyncdal's (slow units of work,
        # the shutdown summary) next to them, unless the application configured logging.
        logging.basicConfig(level=logging.INFO, format="%(levelname)-9s %(name)s: %(message)s")
        logging.getLogger("alembic").setLevel(logging.WARNING)
        if settings is None:
            db = Database.from_env(unit_of_work=UserUnitOfWork, default_url=DEFAULT_URL)
        else:
            db = Database(settings, unit_of_work=UserUnitOfWork)
        try:
            await upgrade(db)
            app.state.db = db
            app.state.head = head()
            app.state.request_timeout = request_timeout or _seconds("SERVICE_REQUEST_TIMEOUT", 10)
            logger.info("serving users from %s", db.url)
            yield
        finally:
            # uvicorn has let the requests in flight finish by now; whatever else still runs
            # (background tasks) gets this long before it is cancelled and rolled back.
            await db.dispose(timeout=shutdown_timeout or _seconds("SERVICE_SHUTDOWN_TIMEOUT", 10))
            pools = {name: pool.checked_out for name, pool in db.metrics().pools.items()}
            logger.info("database disposed; connections still checked out: %s", pools)

    app = FastAPI(title="users", lifespan=lifespan)
    errors.install(app)
    app.include_router(router)
    return app


# -- dependencies ---------------------------------------------------------------------------------


def database(request: Request) -> Database[UserUnitOfWork]:
    """The application's ``Database``."""
    db: Database[UserUnitOfWork] = request.app.state.db
    return db


DB = Annotated[Database[UserUnitOfWork], Depends(database)]


async def reading(request: Request, db: DB) -> AsyncIterator[UserUnitOfWork]:
    """A read-only unit of work for this request, ended as soon as the handler returns."""
    async with db.unit_of_work(read_only=True, timeout=request.app.state.request_timeout) as uow:
        yield uow


Reading = Annotated[UserUnitOfWork, Depends(reading, scope="function")]
IfMatch = Annotated[str | None, Header()]


def etag(user: User) -> str:
    """A strong ETag made from the row's version: it changes with every committed update."""
    return f'"{user.version}"'


def check_if_match(user: User, if_match: str | None) -> None:
    """Raise ``PreconditionFailed`` unless ``If-Match`` is absent, ``*`` or names this version."""
    if if_match is None:
        return
    tags = [tag.strip() for tag in if_match.split(",")]
    if "*" not in tags and etag(user) not in tags:
        raise errors.PreconditionFailed


def shown(user: User, status: int = 200, **headers: str) -> JSONResponse:
    """``user`` as JSON, with its ETag."""
    body = UserOut.of(user).model_dump()
    return JSONResponse(body, status_code=status, headers={"ETag": etag(user), **headers})


# -- routes -------------------------------------------------------------------------------------

router = APIRouter()


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up; the database is not asked."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request, db: DB) -> JSONResponse:
    """200 when the database answers and its schema is at the newest revision, else 503."""
    try:
        round_trip = await db.ping()
        revision = await current(db)
    except Exception as error:
        logger.warning("not ready: %s", type(error).__name__)
        return JSONResponse({"ready": False}, status_code=503, headers=_RETRY)
    ready = revision == request.app.state.head
    body: dict[str, Any] = {"ready": ready, "ping_ms": round(round_trip * 1000, 3)}
    return JSONResponse(body, status_code=200 if ready else 503, headers=None if ready else _RETRY)


_RETRY = {"Retry-After": errors.RETRY_AFTER}


@router.get("/metrics")
async def metrics(db: DB) -> dict[str, Any]:
    """``db.metrics()`` as JSON: pools, connection wait, units of work, retries."""
    return db.metrics().as_dict()


@router.post("/users", status_code=201)
async def create_user(new: NewUser, request: Request, db: DB) -> JSONResponse:
    """Add a user: 201 with its ``Location`` and ``ETag``."""

    async def create(uow: UserUnitOfWork) -> User:
        return await uow.users.add(User(**new.model_dump()))

    user = await db.run_in_transaction(create, timeout=request.app.state.request_timeout)
    return shown(user, 201, Location=str(request.url_for("get_user", user_id=user.id)))


@router.get("/users/{user_id}")
async def get_user(
    user_id: int,
    uow: Reading,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    """One user, with its ``ETag``; 304 when ``If-None-Match`` names the current version."""
    user = await uow.users.get_one(user_id)
    if if_none_match is not None and etag(user) in if_none_match.split(", "):
        return Response(status_code=304, headers={"ETag": etag(user)})
    return shown(user)


@router.get("/users")
async def list_users(
    request: Request,
    uow: Reading,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: str | None = None,
) -> JSONResponse:
    """A keyset page of users by id; ``next`` (and a ``Link: rel="next"`` header) is the URL
    of the following page, null on the last."""
    page = await uow.users.page(order_by="id", limit=limit, after=after)
    following = None
    headers = {}
    if page.next_cursor is not None:
        query = urlencode({"limit": limit, "after": page.next_cursor})
        following = f"{request.url_for('list_users')}?{query}"
        headers["Link"] = f'<{following}>; rel="next"'
    body = UserPage(items=[UserOut.of(user) for user in page.items], next=following)
    return JSONResponse(body.model_dump(), headers=headers)


@router.patch("/users/{user_id}")
async def patch_user(
    user_id: int, changes: UserChanges, request: Request, db: DB, if_match: IfMatch = None
) -> JSONResponse:
    """Change some fields; with ``If-Match``, only if the user is still at that version (412)."""

    async def change(uow: UserUnitOfWork) -> User:
        user = await uow.users.get_one(user_id)
        # The UPDATE checks the version it read (the mapper's version_id_col): if another
        # transaction commits in between it fails with StaleVersionError, and the retry reads
        # the new version, which no longer matches If-Match.
        check_if_match(user, if_match)
        return await uow.users.update(user, **changes.model_dump(exclude_unset=True))

    user = await db.run_in_transaction(change, timeout=request.app.state.request_timeout)
    return shown(user)


@router.delete("/users/{user_id}", status_code=204)
async def delete_user(user_id: int, request: Request, db: DB, if_match: IfMatch = None) -> Response:
    """Remove a user (and their posts); 404 if absent, 412 if ``If-Match`` is stale."""

    async def remove(uow: UserUnitOfWork) -> None:
        user = await uow.users.get_one(user_id)
        check_if_match(user, if_match)
        await uow.users.delete(user)

    await db.run_in_transaction(remove, timeout=request.app.state.request_timeout)
    return Response(status_code=204)


app = create_app()
