"""``page()`` and ``stream()``: reading big tables by keyset, or through a server-side cursor.

A page is one SELECT of ``limit + 1`` rows after the cursor's position: the extra row says
whether there is a next page without a COUNT. The sort values travel as extra columns of the
SELECT, so the cursor holds what the database compared, not what an object says.

``stream()`` on PostgreSQL inside a transaction uses one server-side cursor (``yield_per``): one
snapshot, one sort. asyncpg cursors need a transaction, and read-only units of work run without
one (autocommit), so there, and on SQLite, it reads keyset batches instead: nothing stays open
between batches, so leaving the loop early leaves nothing to clean up on the connection.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncSession

from . import _keyset
from ._model import ORDERINGS_KEPT, shorten
from .errors import InvalidQueryError

if TYPE_CHECKING:
    from .repository import Load, Repository


def _count(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InvalidQueryError(f"{name} must be an integer >= 1, got {shorten(value)}")
    return value


def _ordering(repo: Repository[Any], order_by: object) -> _keyset.Ordering:
    info = repo._info
    names = [order_by] if isinstance(order_by, str) else order_by
    cacheable = order_by is None or (
        isinstance(names, list | tuple) and all(isinstance(name, str) for name in names)
    )
    cache_key: tuple[str, ...] | None = tuple(names) if cacheable and order_by is not None else None  # type: ignore[arg-type]  # strs here
    if cacheable:
        found = info.orderings.get(cache_key)
        if found is not None:
            return found
    made = _keyset.ordering(info.mapper, order_by, info.columns)
    if cacheable and len(info.orderings) < ORDERINGS_KEPT:
        info.orderings[cache_key] = made
    return made


def _select(
    repo: Repository[Any],
    ordering: _keyset.Ordering,
    where: Sequence[object],
    equals: Mapping[str, Any],
    after: Sequence[Any] | None,
) -> Select[Any]:
    clauses = repo._clauses(where, equals)
    if after is not None:
        clauses.append(ordering.after(after))
    stmt = select(repo._info.mapper.class_, *ordering.columns).where(*clauses)
    return stmt.order_by(*ordering.order_by())


async def page(
    repo: Repository[Any],
    where: Sequence[object],
    equals: Mapping[str, Any],
    order_by: object,
    limit: int,
    after: str | None,
    load: Sequence[Load],
) -> tuple[list[Any], str | None]:
    """See ``Repository.page``: the items and the next cursor."""
    op = repo._op("page")
    session = repo._uow._require_active(op)
    _count("limit", limit)
    ordering = _ordering(repo, order_by)
    position = None if after is None else ordering.decode(op, after)
    stmt = _select(repo, ordering, where, equals, position).limit(limit + 1)
    options = repo._options(load)
    if options:
        stmt = stmt.options(*options)
    result = await repo._uow._run(op, session.execute(stmt))
    rows = result.all()
    items = [row[0] for row in rows[:limit]]
    cursor = ordering.encode(rows[limit - 1][1:]) if len(rows) > limit else None
    return items, cursor


async def _in_transaction(session: AsyncSession) -> bool:
    """Whether the session's PostgreSQL connection runs in a transaction (not autocommit)."""
    connection = await session.connection()
    raw = await connection.get_raw_connection()
    driver = raw.driver_connection
    if driver is not None and driver.is_in_transaction():
        return True
    return not getattr(raw.dbapi_connection, "autocommit", True)


async def stream(
    repo: Repository[Any],
    where: Sequence[object],
    equals: Mapping[str, Any],
    order_by: object,
    batch_size: int,
) -> AsyncIterator[Any]:
    """See ``Repository.stream``."""
    op = repo._op("stream")
    uow = repo._uow
    session = uow._require_active(op)
    _count("batch_size", batch_size)
    ordering = _ordering(repo, order_by)
    base = _select(repo, ordering, where, equals, None)  # checks the filters before any SQL
    postgres = session.sync_session.get_bind().dialect.name == "postgresql"
    if postgres and await uow._run(op, _in_transaction(session)):
        options = {"yield_per": batch_size}
        result = await uow._run(op, session.stream_scalars(base, execution_options=options))
        try:
            while True:
                batch = await uow._run(op, result.fetchmany(batch_size))
                if not batch:
                    return
                for obj in batch:
                    yield obj
                del batch
        finally:
            # No round trip: asyncpg's portal lives until the transaction ends, and the
            # connection stays usable meanwhile. This drops the rows buffered client-side.
            await result.close()
    position: Sequence[Any] | None = None
    while True:
        stmt = base if position is None else _select(repo, ordering, where, equals, position)
        result_rows = await uow._run(op, session.execute(stmt.limit(batch_size)))
        rows = result_rows.all()
        for row in rows:
            yield row[0]
        if len(rows) < batch_size:
            return
        position = rows[-1][1:]
        del rows
