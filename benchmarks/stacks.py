"""The stacks compared, from most abstraction to least, each doing the same logical work per op.

- ``uow``: asyncdal's public API, ``Database`` -> ``unit_of_work()`` -> ``uow.users``, pooled.
- ``uow-flush``: the same with ``DatabaseSettings(fast_paths=False)``: every write through
  ``Session.flush()``, as before the flush-free paths; ``uow/uow-flush`` is their effect.
- ``session``: a bare ``AsyncSession`` per op (``expire_on_commit=False``) on asyncdal's engine.
- ``core``: ``async with engine.begin()`` and Core statements on asyncdal's engine.
- ``driver``: asyncpg's own pool, or one aiosqlite connection behind an ``asyncio.Lock``
  (see ``benchmarks.drivers``).
- ``uow-nopool``: the ``uow`` code over a ``Database`` built with ``NullPool``.
- ``uow-nometrics`` (on request, ``--stacks``): the ``uow`` code with ``metrics=False``;
  ``uow-unobserved``: with no observer at all (no metrics, no in-flight tracking: what a unit of
  work cost before ``db.metrics()`` and ``dispose(timeout=)``). Their ratios to ``uow`` are the
  cost of those on the hot path.

Every SQLAlchemy stack uses ``asyncdal.engine.create_engine``, so the pragmas, the explicit BEGIN
recipe and the asyncpg options are the same. On SQLite the ``session`` and ``core`` stacks begin
reads DEFERRED and writes IMMEDIATE, what a careful user of that engine does by hand; they have no
in-process write queue, which is part of what the unit of work adds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Final, Protocol

from sqlalchemy import Table, bindparam, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlalchemy.pool import NullPool

from asyncdal import Database, DatabaseSettings
from asyncdal.engine import SQLITE_BEGIN, create_engine
from asyncdal.models import Base, User
from asyncdal.users import UserUnitOfWork

#: A new age computed from the current one (read-modify-write).
Change = Callable[[int], int]

#: Ordered from most abstraction to least, then the no-pool variant.
STACKS: Final = ("uow", "uow-flush", "session", "core", "driver", "uow-nopool")
#: Measured only when asked for with --stacks: what the observer costs a unit of work.
OPTIONAL_STACKS: Final = ("uow-nometrics", "uow-unobserved")


class StaleRowError(Exception):
    """An update matched no row: its version moved on (the ORM raises StaleDataError here)."""


class MissingRowError(LookupError):
    """The row to update does not exist."""


class Stack(Protocol):
    """What every stack offers the workloads; each method is one short transaction."""

    async def get_age(self, user_id: int) -> int | None:
        """Read one user by primary key; its age, or None."""
        ...

    async def add_user(self, name: str, age: int) -> None:
        """Insert one user and commit."""
        ...

    async def update_age(self, user_id: int, change: Change) -> None:
        """Read one user, set its age to ``change(age)``, commit (version checked)."""
        ...

    async def add_users(self, rows: Sequence[tuple[str, int]]) -> None:
        """Insert many users in one transaction."""
        ...

    async def close(self) -> None:
        """Release every connection."""
        ...


def settings_for(url: str, pool_size: int) -> DatabaseSettings:
    """The settings every SQLAlchemy stack uses: exactly ``pool_size`` connections, no overflow."""
    return DatabaseSettings(url, pool_size=pool_size, max_overflow=0)


def pool_independent(stack: str, backend: str) -> bool:
    """Stacks whose result does not depend on the pool size (measured once per sweep)."""
    return stack == "uow-nopool" or (stack == "driver" and backend == "sqlite")


async def open_stack(stack: str, url: str, pool_size: int) -> Stack:
    """Build the named stack on ``url``; no work is measured here."""
    settings = settings_for(url, pool_size)
    if stack == "uow":
        return UowStack(Database(settings, unit_of_work=UserUnitOfWork))
    if stack == "uow-flush":
        slow = settings.replace(fast_paths=False)
        return UowStack(Database(slow, unit_of_work=UserUnitOfWork))
    if stack == "uow-nometrics":
        return UowStack(Database(settings.replace(metrics=False), unit_of_work=UserUnitOfWork))
    if stack == "uow-unobserved":
        db = Database(settings, unit_of_work=UserUnitOfWork)
        db._observer = None  # type: ignore[assignment]  # the baseline: units of work unobserved
        return UowStack(db)
    if stack == "uow-nopool":
        return UowStack(Database(settings, unit_of_work=UserUnitOfWork, poolclass=NullPool))
    if stack == "session":
        return SessionStack(create_engine(settings))
    if stack == "core":
        return CoreStack(create_engine(settings))
    if stack == "driver":
        from benchmarks.drivers import open_driver

        return await open_driver(settings, pool_size)
    known = ", ".join(STACKS + OPTIONAL_STACKS)
    raise ValueError(f"unknown stack {stack!r}: expected one of {known}")


def users_table() -> Table:
    """The ``users`` table, for Core statements."""
    return Base.metadata.tables["users"]


def _now() -> datetime:
    return datetime.now(UTC)


def _readers_and_writers(engine: AsyncEngine) -> tuple[AsyncEngine, AsyncEngine]:
    if engine.dialect.name != "sqlite":
        return engine, engine
    return (
        engine.execution_options(**{SQLITE_BEGIN: "DEFERRED"}),
        engine.execution_options(**{SQLITE_BEGIN: "IMMEDIATE"}),
    )


class UowStack:
    """asyncdal's unit of work and repository, through the public API only."""

    def __init__(self, db: Database[UserUnitOfWork]) -> None:
        self._db = db

    async def get_age(self, user_id: int) -> int | None:
        async with self._db.unit_of_work(read_only=True) as uow:
            user = await uow.users.get(user_id)
            return None if user is None else user.age

    async def add_user(self, name: str, age: int) -> None:
        async with self._db.unit_of_work() as uow:
            await uow.users.add(User(name=name, age=age))
            await uow.commit()

    async def update_age(self, user_id: int, change: Change) -> None:
        async with self._db.unit_of_work() as uow:
            user = await uow.users.get(user_id)
            if user is None:
                raise MissingRowError(user_id)
            user.age = change(user.age)
            await uow.commit()

    async def add_users(self, rows: Sequence[tuple[str, int]]) -> None:
        async with self._db.unit_of_work() as uow:
            await uow.users.add_many(User(name=name, age=age) for name, age in rows)
            await uow.commit()

    async def close(self) -> None:
        await self._db.dispose()


class SessionStack:
    """A bare ``AsyncSession`` per op, as SQLAlchemy's asyncio documentation shows it."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        read, write = _readers_and_writers(engine)
        self._readers = async_sessionmaker(read, expire_on_commit=False)
        self._writers = async_sessionmaker(write, expire_on_commit=False)

    async def get_age(self, user_id: int) -> int | None:
        async with self._readers() as session:
            user = await session.get(User, user_id)
            return None if user is None else user.age

    async def add_user(self, name: str, age: int) -> None:
        async with self._writers() as session:
            session.add(User(name=name, age=age))
            await session.commit()

    async def update_age(self, user_id: int, change: Change) -> None:
        async with self._writers() as session:
            user = await session.get(User, user_id)
            if user is None:
                raise MissingRowError(user_id)
            user.age = change(user.age)
            await session.commit()

    async def add_users(self, rows: Sequence[tuple[str, int]]) -> None:
        async with self._writers() as session:
            session.add_all([User(name=name, age=age) for name, age in rows])
            await session.commit()

    async def close(self) -> None:
        await self._engine.dispose()


class CoreStack:
    """Core statements in ``async with engine.begin()``: no ORM, same SQL as the ORM sends."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._read, self._write = _readers_and_writers(engine)
        users = users_table()
        # A read fetches the whole user, as the ORM stacks do.
        self._select_user = select(
            users.c.id,
            users.c.name,
            users.c.age,
            users.c.email,
            users.c.created_at,
            users.c.updated_at,
            users.c.version,
        ).where(users.c.id == bindparam("uid"))
        self._select_row = select(users.c.age, users.c.version).where(
            users.c.id == bindparam("uid")
        )
        self._insert = insert(users).returning(users.c.id)
        self._bulk_insert = insert(users)
        self._update = (
            update(users)
            .where(users.c.id == bindparam("uid"), users.c.version == bindparam("old_version"))
            .values(
                age=bindparam("new_age"),
                updated_at=bindparam("now"),
                version=bindparam("new_version"),
            )
        )

    async def get_age(self, user_id: int) -> int | None:
        async with self._read.begin() as conn:
            row = (await conn.execute(self._select_user, {"uid": user_id})).one_or_none()
            return None if row is None else int(row.age)

    async def add_user(self, name: str, age: int) -> None:
        now = _now()
        row = {"name": name, "age": age, "created_at": now, "updated_at": now, "version": 1}
        async with self._write.begin() as conn:
            (await conn.execute(self._insert, row)).scalar_one()

    async def update_age(self, user_id: int, change: Change) -> None:
        async with self._write.begin() as conn:
            found = (await conn.execute(self._select_row, {"uid": user_id})).one_or_none()
            if found is None:
                raise MissingRowError(user_id)
            age, version = found
            params = {
                "uid": user_id,
                "old_version": version,
                "new_age": change(age),
                "now": _now(),
                "new_version": version + 1,
            }
            if (await conn.execute(self._update, params)).rowcount != 1:
                raise StaleRowError(user_id)

    async def add_users(self, rows: Sequence[tuple[str, int]]) -> None:
        now = _now()
        params = [
            {"name": name, "age": age, "created_at": now, "updated_at": now, "version": 1}
            for name, age in rows
        ]
        async with self._write.begin() as conn:
            await conn.execute(self._bulk_insert, params)

    async def close(self) -> None:
        await self._engine.dispose()
