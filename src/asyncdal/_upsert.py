"""``INSERT ... ON CONFLICT`` statements for ``upsert`` and ``get_or_create``, per dialect.

Both PostgreSQL and SQLite (>= 3.35) take the same clause and ``RETURNING``: one statement, atomic
on either backend, where a read-then-insert races. The ``DO UPDATE`` side moves the version counter
and ``onupdate`` columns exactly as a flushed update would.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from ._values import ModelValues, model_values
from .errors import ConflictError, InvalidQueryError

if TYPE_CHECKING:
    from .repository import Repository

_Insert = postgresql.Insert | sqlite.Insert


def _insert(dialect: str, values: ModelValues, row: Mapping[str, Any]) -> _Insert:
    if dialect == "postgresql":
        return postgresql.insert(values.mapper.class_).values(dict(row))
    if dialect == "sqlite":
        return sqlite.insert(values.mapper.class_).values(dict(row))
    raise InvalidQueryError(f"INSERT ... ON CONFLICT is not supported on {dialect}")


def require_keys(op: str, values: ModelValues, row: Mapping[str, Any], on: Sequence[str]) -> None:
    for key in on:
        if row.get(key) is None:
            raise InvalidQueryError(
                f"{op} needs a value for conflict column {values.name}.{key}: "
                "a NULL never conflicts, so it would always insert"
            )


def dialect(session: AsyncSession) -> str:
    return session.sync_session.get_bind().dialect.name


def row_of(op: str, values: ModelValues, obj_or_values: object) -> dict[str, Any]:
    if isinstance(obj_or_values, Mapping):
        return values.check(op, obj_or_values)
    return values.from_object(op, obj_or_values)


async def upsert(
    repo: Repository[Any], obj_or_values: object, on: Sequence[str], update: Sequence[str] | None
) -> object:
    """See ``Repository.upsert``."""
    op = repo._op("upsert")
    session = repo._uow._require_writable(op)
    values = model_values(repo._info.mapper)
    row = row_of(op, values, obj_or_values)
    stmt = upsert_statement(
        op, dialect(session), values, row, values.conflict_target(op, on), update
    )
    options = {"populate_existing": True}
    result = await repo._uow._run(op, session.scalars(stmt, execution_options=options))
    return result.one()


async def get_or_create(
    repo: Repository[Any], defaults: Mapping[str, Any] | None, key: Mapping[str, Any]
) -> tuple[object, bool]:
    """See ``Repository.get_or_create``."""
    op = repo._op("get_or_create")
    session = repo._uow._require_writable(op)
    values = model_values(repo._info.mapper)
    if not key:
        raise InvalidQueryError(f"{op} needs the unique key as keyword arguments")
    on = values.conflict_target(op, key)
    defaults = {} if defaults is None else defaults
    if not isinstance(defaults, Mapping):
        raise InvalidQueryError(f"{op}: defaults must be a mapping, got {type(defaults).__name__}")
    clash = sorted(set(defaults) & set(key))
    if clash:
        raise InvalidQueryError(f"{op}: {', '.join(clash)} given both as key and in defaults")
    row = values.check(op, {**defaults, **key})
    stmt = insert_or_nothing(op, dialect(session), values, row, on)
    lookup = select(values.mapper.class_).where(*(values.columns[k] == row[k] for k in on))
    # A conflicting row deleted between the two statements sends us round once more. On
    # PostgreSQL (READ COMMITTED) the INSERT waits for a concurrent inserter of the same key:
    # if that one commits, the SELECT's fresh snapshot sees its row; if it rolls back, ours
    # inserts. Under REPEATABLE READ a row committed after our snapshot is a serialization
    # failure (RetryableError), never a silent miss.
    for _attempt in range(3):
        inserted = await repo._uow._run(op, session.scalars(stmt))
        obj = inserted.one_or_none()
        if obj is not None:
            return obj, True
        found = await repo._uow._run(op, session.scalars(lookup))
        obj = found.one_or_none()
        if obj is not None:
            return obj, False
    raise ConflictError(f"{op}: the conflicting row kept disappearing; try again")


def upsert_statement(
    op: str,
    dialect: str,
    values: ModelValues,
    row: Mapping[str, Any],
    on: Sequence[str],
    update: Sequence[str] | None,
) -> Any:
    """The ``INSERT ... ON CONFLICT (on) DO UPDATE ... RETURNING`` statement."""
    require_keys(op, values, row, on)
    if update is None:
        chosen = [k for k in row if k not in on and k not in values.primary_key]
    else:
        chosen = list(dict.fromkeys([update] if isinstance(update, str) else update))
        for key in chosen:
            if key not in values.columns:
                raise values.unknown(key, "update column")
            if key not in row:
                raise InvalidQueryError(f"{op}: update column {key!r} has no value in the row")
            if key == values.version_key or key in on:
                raise InvalidQueryError(f"{op}: {key!r} cannot be an update column")
    if not chosen:
        raise InvalidQueryError(
            f"{op}: nothing to update on a conflict (give non-key values, or use get_or_create())"
        )
    stmt = _insert(dialect, values, row)
    columns = values.columns
    set_: dict[Any, Any] = {columns[key]: stmt.excluded[columns[key].key] for key in chosen}
    for key, value in values.update_defaults(chosen).items():
        set_[columns[key]] = value
    return stmt.on_conflict_do_update(
        index_elements=[columns[key] for key in on], set_=set_
    ).returning(values.mapper.class_)


def insert_or_nothing(
    op: str, dialect: str, values: ModelValues, row: Mapping[str, Any], on: Sequence[str]
) -> Any:
    """The ``INSERT ... ON CONFLICT (on) DO NOTHING RETURNING`` statement."""
    require_keys(op, values, row, on)
    stmt = _insert(dialect, values, row)
    return stmt.on_conflict_do_nothing(
        index_elements=[values.columns[key] for key in on]
    ).returning(values.mapper.class_)
