"""``insert_many``: checked rows in batches, without tracked objects; ``COPY`` on PostgreSQL.

Rows are checked (names, validators) and completed (Python-side defaults, the version start) as
they are batched, so a bad row fails before its batch is sent and memory stays one batch deep for
any iterable. The whole call runs in a savepoint: after an error nothing of it stays.

On PostgreSQL the batches go through asyncpg's binary ``COPY`` on the unit of work's own
connection, inside its transaction; elsewhere (and for a default only the database can compute)
through one Core ``executemany`` per batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import Column, ColumnElement, delete, insert, update
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncSession

from ._model import shorten
from ._values import ModelValues, model_values
from .errors import InvalidQueryError

if TYPE_CHECKING:
    from .repository import Repository


def _checked_rows(op: str, values: ModelValues, rows: Iterable[Any]) -> Iterator[dict[str, Any]]:
    if isinstance(rows, Mapping | str | bytes):
        raise InvalidQueryError(f"{op} takes an iterable of rows, got {type(rows).__name__}")
    for row in rows:
        if type(row) is dict or isinstance(row, Mapping):  # the exact type first: ABCs are slow
            checked = values.check(op, row)
        elif isinstance(row, values.mapper.class_):
            checked = values.from_object(op, row)
        else:
            raise InvalidQueryError(
                f"{op} takes dicts or {values.name} objects, got {shorten(row)}"
            )
        yield checked


def _batches(rows: Iterator[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


class _Group:
    """Rows of one batch that give the same columns: one statement."""

    __slots__ = ("copyable", "keys", "rows")

    def __init__(self, keys: tuple[str, ...], copyable: bool) -> None:
        self.keys = keys
        self.copyable = copyable
        self.rows: list[dict[str, Any]] = []


def _groups(values: ModelValues, batch: list[dict[str, Any]]) -> list[_Group]:
    groups: dict[tuple[tuple[str, ...], bool], _Group] = {}
    for row in batch:
        completed = values.insert_defaults(row)
        keys = tuple(row)
        found = groups.get((keys, completed is not None))
        if found is None:
            found = groups[(keys, completed is not None)] = _Group(keys, completed is not None)
        found.rows.append(row)
    return list(groups.values())


def _processors(columns: list[Column[Any]], dialect: Dialect) -> list[Callable[[Any], Any] | None]:
    # The dialect's own type (SQLite's DATETIME, not the generic DateTime): its processor is
    # what turns a value into the stored form a flush would write.
    return [column.type.dialect_impl(dialect).bind_processor(dialect) for column in columns]


async def _copy(session: AsyncSession, values: ModelValues, group: _Group) -> int | None:
    """COPY the group on the session's asyncpg connection; ``None`` when COPY does not apply."""
    connection = await session.connection()
    raw = await connection.get_raw_connection()
    driver = raw.driver_connection
    if driver is None or not callable(getattr(driver, "copy_records_to_table", None)):
        return None
    if not driver.is_in_transaction():
        return None  # never COPY outside the unit of work's transaction
    columns = [values.columns[key] for key in group.keys]
    processors = _processors(columns, connection.dialect)
    records: list[tuple[Any, ...]]
    if any(processors):
        records = [
            tuple(
                value if proc is None or value is None else proc(value)
                for proc, value in zip(processors, row.values(), strict=True)
            )
            for row in group.rows
        ]
    else:
        records = [tuple(row.values()) for row in group.rows]
    await driver.copy_records_to_table(
        values.table.name,
        records=records,
        columns=[column.name for column in columns],
        schema_name=values.table.schema,
    )
    return len(records)


async def _sqlite_executemany(
    session: AsyncSession, values: ModelValues, group: _Group
) -> int | None:
    """One aiosqlite ``executemany`` on the unit of work's connection, inside its transaction:
    SQLAlchemy's own executemany spent more time building parameters than SQLite inserting."""
    connection = await session.connection()
    raw = await connection.get_raw_connection()
    driver = raw.driver_connection
    if driver is None or not callable(getattr(driver, "executemany", None)):
        return None
    columns = [values.columns[key] for key in group.keys]
    processors = _processors(columns, connection.dialect)
    records = [
        tuple(
            value if proc is None or value is None else proc(value)
            for proc, value in zip(processors, row.values(), strict=True)
        )
        for row in group.rows
    ]
    names = ", ".join(connection.dialect.identifier_preparer.quote(c.name) for c in columns)
    table = connection.dialect.identifier_preparer.format_table(values.table)
    sql = f"INSERT INTO {table} ({names}) VALUES ({', '.join('?' * len(columns))})"
    await driver.executemany(sql, records)
    return len(records)


async def _executemany(session: AsyncSession, values: ModelValues, group: _Group) -> int:
    renamed = [values.columns[key].key for key in group.keys]
    if list(group.keys) == renamed:
        params = group.rows
    else:
        params = [dict(zip(renamed, row.values(), strict=True)) for row in group.rows]
    await session.execute(insert(values.table), params)
    return len(params)


async def insert_many(repo: Repository[Any], rows: Iterable[Any], batch_size: int) -> int:
    """See ``Repository.insert_many``."""
    op, uow = repo._op("insert_many"), repo._uow
    values = model_values(repo._info.mapper)
    session = uow._require_writable(op)
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise InvalidQueryError(f"batch_size must be an integer >= 1, got {shorten(batch_size)}")
    checked = _checked_rows(op, values, rows)
    first = next(checked, None)
    if first is None:
        return 0
    postgres = session.sync_session.get_bind().dialect.name == "postgresql"

    def everything() -> Iterator[dict[str, Any]]:
        yield first
        yield from checked

    total = 0
    async with uow.savepoint():
        for batch in _batches(everything(), batch_size):
            for group in _groups(values, batch):
                sent = None
                if postgres and group.copyable:
                    sent = await uow._run(op, _copy(session, values, group))
                elif not postgres and group.copyable:
                    sent = await uow._run(op, _sqlite_executemany(session, values, group))
                if sent is None:
                    sent = await uow._run(op, _executemany(session, values, group))
                total += sent
    return total


def _filters(
    repo: Repository[Any],
    op: str,
    where: Sequence[object],
    equals: Mapping[str, Any],
    all_rows: bool,
) -> list[ColumnElement[bool]]:
    clauses = repo._clauses(where, equals)
    if not clauses and all_rows is not True:
        raise InvalidQueryError(
            f"{op} without a filter would change every row: pass all_rows=True to mean it"
        )
    return clauses


async def update_where(
    repo: Repository[Any], where: Sequence[object], given: Mapping[str, Any], all_rows: bool
) -> int:
    """See ``Repository.update_where``."""
    op = repo._op("update_where")
    session = repo._uow._require_writable(op)
    values = model_values(repo._info.mapper)
    if not given:
        raise InvalidQueryError(f"{op} needs at least one column value to set")
    checked = values.check(op, given)
    clauses = _filters(repo, op, where, {}, all_rows)
    # The version step and updated_at as values, not left to the database: then the ORM can
    # apply them to loaded objects (plain values and `version + 1` evaluate in Python).
    checked.update(values.update_defaults(checked))
    stmt = update(values.mapper.class_).where(*clauses).values(checked)
    options = {"synchronize_session": "fetch"}
    result = await repo._uow._run(op, session.execute(stmt, execution_options=options))
    return int(result.rowcount)  # type: ignore[attr-defined]  # DML gives a CursorResult


async def delete_where(
    repo: Repository[Any], where: Sequence[object], equals: Mapping[str, Any], all_rows: bool
) -> int:
    """See ``Repository.delete_where``."""
    op = repo._op("delete_where")
    session = repo._uow._require_writable(op)
    clauses = _filters(repo, op, where, equals, all_rows)
    stmt = delete(repo._info.mapper.class_).where(*clauses)
    options = {"synchronize_session": "fetch"}
    result = await repo._uow._run(op, session.execute(stmt, execution_options=options))
    return int(result.rowcount)  # type: ignore[attr-defined]  # DML gives a CursorResult
