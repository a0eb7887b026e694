"""``Repository[Model]``: generic async CRUD over one mapped class, bound to a unit of work.

Filters are plain SQLAlchemy expressions plus keyword equality on column names. Every name (keyword
filter, string ``order_by``, ``update()`` field, ``load`` relationship) is checked against the
mapper before any SQL is built: an unknown one raises ``InvalidQueryError``. Values are always
bound parameters.
"""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeAlias, TypeVar, cast

from sqlalchemy import ColumnElement, Select, exists, func, select
from sqlalchemy.orm import InstrumentedAttribute, selectinload
from sqlalchemy.orm.interfaces import ORMOption
from sqlalchemy.sql import ClauseElement

from . import _bulk, _fastpath, _pages, _upsert
from ._model import check_count, check_filter_value, model_info, shorten
from .errors import InvalidQueryError, NotFoundError

if TYPE_CHECKING:
    from .uow import UnitOfWork

M = TypeVar("M")

OrderBy: TypeAlias = "str | ColumnElement[Any] | InstrumentedAttribute[Any]"
Load: TypeAlias = "str | ORMOption"


@dataclass(frozen=True, slots=True)
class Page(Generic[M]):
    """One keyset page: its objects, and the cursor of the next page (``None`` on the last)."""

    items: list[M]
    next_cursor: str | None


class Repository(Generic[M]):
    """Async CRUD for one mapped class, bound to one unit of work.

    Declare one per model in one line, or get a generic one from ``uow.repository(Model)``.
    A repository is only valid inside its unit of work: afterwards every call raises.

    Raises:
        InvalidQueryError: an unknown filter/order_by/field name or a bad argument (no SQL sent).
        UnitOfWorkStateError: the unit of work has ended, or a write in a read-only one.

    Example:
        >>> class UserRepository(Repository[User]):  # doctest: +SKIP
        ...     model = User
    """

    model: ClassVar[type[Any]]

    def __init__(self, uow: UnitOfWork, model: type[M] | None = None) -> None:
        chosen = model if model is not None else getattr(type(self), "model", None)
        if chosen is None:
            raise InvalidQueryError(
                f"{type(self).__name__} declares no model: add `model = YourModel` to the class"
            )
        self._uow = uow
        self._model: type[M] = chosen
        self._info = model_info(chosen)
        self._label = type(self).__name__ if model is None else f"Repository[{self._info.name}]"

    @classmethod
    def for_model(cls, model: type[M], uow: UnitOfWork) -> Repository[M]:
        """A generic repository for ``model`` (what ``uow.repository(Model)`` returns)."""
        return Repository(uow, model)

    def _op(self, method: str) -> str:
        return f"{self._label}.{method}()"

    # -- writes -------------------------------------------------------------------------------

    def _check_instance(self, obj: object, method: str) -> M:
        if not isinstance(obj, self._model):
            raise InvalidQueryError(
                f"{self._op(method)} expects a {self._info.name}, got {type(obj).__name__}"
            )
        return obj

    async def add(self, obj: M) -> M:
        """Add ``obj`` and flush, so database defaults (``id``) are set on return.

        Raises:
            ConflictError: a unique or foreign-key constraint refused it.
        """
        op = self._op("add")
        session = self._uow._require_writable(op)
        checked = self._check_instance(obj, "add")
        if self._uow._fast_paths:
            # The common case without the flush's machinery; anything else still flushes.
            await self._uow._run(op, session.run_sync(_fastpath.add, checked))
            return obj
        session.add(checked)
        await self._uow._run(op, session.flush())
        return obj

    async def add_many(self, objs: Iterable[M]) -> builtins.list[M]:
        """Add all of ``objs`` and flush once (batched INSERTs); returns them in order."""
        op = self._op("add_many")
        session = self._uow._require_writable(op)
        items = [self._check_instance(obj, "add_many") for obj in objs]
        session.add_all(items)
        await self._uow._run(op, session.flush())
        return items

    async def update(self, obj: M, **values: Any) -> M:
        """Set column ``values`` on ``obj`` and flush.

        Raises:
            InvalidQueryError: a name is not a column of the model (nothing is changed).
            ConflictError: a constraint refused the new values, or the row's version moved on.
        """
        op = self._op("update")
        session = self._uow._require_writable(op)
        self._check_instance(obj, "update")
        for name in values:
            self._info.column(name, "field")
        if obj not in session:
            session.add(obj)
        for name, value in values.items():
            setattr(obj, name, value)
        flushed = session.run_sync(_fastpath.flush) if self._uow._fast_paths else session.flush()
        await self._uow._run(op, flushed)
        return obj

    async def delete(self, obj: M) -> None:
        """Delete ``obj`` and flush (children go by the database's ON DELETE CASCADE)."""
        op = self._op("delete")
        session = self._uow._require_writable(op)
        checked = self._check_instance(obj, "delete")
        await session.delete(checked)
        await self._uow._run(op, session.flush())

    # -- reads --------------------------------------------------------------------------------

    def _options(self, load: Sequence[Load]) -> builtins.list[ORMOption]:
        if isinstance(load, str):
            load = (load,)
        options: builtins.list[ORMOption] = []
        for item in load:
            if isinstance(item, str):
                options.append(selectinload(self._info.relationship(item)))
            elif isinstance(item, ORMOption):
                options.append(item)
            else:
                raise InvalidQueryError(
                    f"load takes relationship names or loader options, got {shorten(item)}"
                )
        return options

    def _where(
        self, where: Sequence[object], equals: Mapping[str, Any], stmt: Select[Any]
    ) -> Select[Any]:
        clauses = self._clauses(where, equals)
        return stmt.where(*clauses) if clauses else stmt

    def _clauses(
        self, where: Sequence[object], equals: Mapping[str, Any]
    ) -> builtins.list[ColumnElement[bool]]:
        clauses: builtins.list[Any] = []
        for clause in where:
            if not isinstance(clause, ClauseElement):
                raise InvalidQueryError(
                    "filters must be SQLAlchemy expressions such as User.age >= 18, "
                    f"got {shorten(clause)}"
                )
            clauses.append(clause)
        for name, value in equals.items():
            column = self._info.column(name, "filter")
            clauses.append(column == check_filter_value(name, value))
        return clauses

    def _order(self, order_by: OrderBy | Sequence[OrderBy] | None) -> builtins.list[Any]:
        if order_by is None:
            return []
        items: Sequence[Any] = order_by if isinstance(order_by, list | tuple) else [order_by]
        result: builtins.list[Any] = []
        for item in items:
            if isinstance(item, str):
                descending = item.startswith("-")
                column = self._info.column(item[1:] if descending else item, "order_by name")
                result.append(column.desc() if descending else column.asc())
            elif isinstance(item, ClauseElement | InstrumentedAttribute):
                result.append(item)
            else:
                raise InvalidQueryError(
                    f"order_by takes column names ('name', '-age') or columns, got {shorten(item)}"
                )
        return result

    async def get(self, ident: Any, *, load: Sequence[Load] = ()) -> M | None:
        """The object with primary key ``ident``, or ``None``."""
        op = self._op("get")
        session = self._uow._require_active(op)
        if ident is None:
            raise InvalidQueryError(f"{op} needs a primary key, got None")
        options = self._options(load)
        by_pk = self._info.by_pk
        if (
            by_pk is None
            or options
            or self._info.mapper.identity_key_from_primary_key((ident,)) in session.identity_map
        ):
            # Session.get() knows about expired, deleted and composite-key objects.
            return await self._uow._run(op, session.get(self._model, ident, options=options))
        # Fast path for an object not loaded yet: one prebuilt statement, whose cache key and
        # compiled form are reused, where Session.get() would rebuild them on every call.
        result = await self._uow._run(op, session.execute(by_pk, {"pk": ident}))
        return cast("M | None", result.scalar_one_or_none())

    async def get_one(self, ident: Any, *, load: Sequence[Load] = ()) -> M:
        """The object with primary key ``ident``.

        Raises:
            NotFoundError: there is none.
        """
        found = await self.get(ident, load=load)
        if found is None:
            raise NotFoundError(f"{self._info.name} with id {ident!r} not found")
        return found

    async def list(
        self,
        *where: ColumnElement[bool],
        order_by: OrderBy | Sequence[OrderBy] | None = None,
        limit: int | None = None,
        offset: int | None = None,
        load: Sequence[Load] = (),
        **equals: Any,
    ) -> builtins.list[M]:
        """Objects matching every filter, in ``order_by`` order (``"-name"`` for descending).

        Example:
            >>> await uow.users.list(User.age >= 18, name="Ann", order_by="-age", limit=10)
            ... # doctest: +SKIP
        """
        op = self._op("list")
        session = self._uow._require_active(op)
        stmt = self._where(where, equals, select(self._model))
        stmt = stmt.order_by(*self._order(order_by))
        checked_limit = check_count("limit", limit)
        checked_offset = check_count("offset", offset)
        if checked_limit is not None:
            stmt = stmt.limit(checked_limit)
        if checked_offset:
            stmt = stmt.offset(checked_offset)
        options = self._options(load)
        if options:
            stmt = stmt.options(*options)
        result = await self._uow._run(op, session.scalars(stmt))
        return builtins.list(result.all())

    async def count(self, *where: ColumnElement[bool], **equals: Any) -> int:
        """How many rows match every filter."""
        op = self._op("count")
        session = self._uow._require_active(op)
        stmt = self._where(where, equals, select(func.count()).select_from(self._model))
        value = await self._uow._run(op, session.scalar(stmt))
        return int(value or 0)

    async def exists(self, *where: ColumnElement[bool], **equals: Any) -> bool:
        """Whether any row matches every filter."""
        op = self._op("exists")
        session = self._uow._require_active(op)
        inner = self._where(where, equals, select(*self._info.primary_key))
        value = await self._uow._run(op, session.scalar(select(exists(inner))))
        return bool(value)

    # -- data at scale (the work is done in _upsert, _bulk and _pages) -------------------------

    async def upsert(
        self,
        obj_or_values: M | Mapping[str, Any],
        *,
        on: Sequence[str],
        update: Sequence[str] | None = None,
    ) -> M:
        """Insert, or on a conflict on the unique columns ``on`` update ``update``, atomically.

        One ``INSERT ... ON CONFLICT ... DO UPDATE ... RETURNING`` on both backends: concurrent
        upserts of one key never fail. ``update`` defaults to every given non-key column; the
        update moves ``version`` and ``onupdate`` columns (``updated_at``) as a flush would.
        Returns the row as it now stands, as a tracked object (one already loaded in this unit
        of work is refreshed, not duplicated); an object passed in is left untouched.

        Raises:
            InvalidQueryError: ``on`` is not exactly a primary key or unique constraint, or a
                name is unknown (before any SQL).
            InvalidDataError: a validator refused a value.

        Example:
            >>> user = await uow.users.upsert(
            ...     {"email": "ann@example.com", "name": "Ann", "age": 30}, on=("email",)
            ... )  # doctest: +SKIP
        """
        return cast("M", await _upsert.upsert(self, obj_or_values, on, update))

    async def get_or_create(
        self, defaults: Mapping[str, Any] | None = None, **key: Any
    ) -> tuple[M, bool]:
        """The row with this unique ``key``, created from ``key`` and ``defaults`` if absent.

        Race-free: ``INSERT ... ON CONFLICT DO NOTHING RETURNING``, then a read of the row that
        won. Concurrent callers with one key all get the same row, exactly one with
        ``created=True``. ``key`` must be exactly a primary key or unique constraint.

        Raises:
            InvalidQueryError: ``key`` is not a unique constraint's columns, or a name is unknown.
            InvalidDataError: a validator refused a value.

        Example:
            >>> user, created = await uow.users.get_or_create(
            ...     email="ann@example.com", defaults={"name": "Ann", "age": 30}
            ... )  # doctest: +SKIP
        """
        found, created = await _upsert.get_or_create(self, defaults, key)
        return cast("M", found), created

    async def insert_many(
        self, rows: Iterable[M | Mapping[str, Any]], *, batch_size: int = 10_000
    ) -> int:
        """Insert ``rows`` (dicts or new objects) without tracked objects; returns the count.

        Rows are checked as objects are (unknown names, the model's validators) and completed
        with Python-side defaults and the version start, before their batch is sent. All or
        nothing: the call runs in a savepoint, so after an error nothing of it stays. PostgreSQL
        uses ``COPY``, SQLite one ``executemany`` per batch. Objects passed in are not added to
        the unit of work and get no ids.

        Raises:
            InvalidQueryError: an unknown or managed (``version``) name, or not a row.
            InvalidDataError: a validator refused a value.
            ConflictError: a constraint refused a row (nothing of the call stays).

        Example:
            >>> n = await uow.users.insert_many({"name": f"u{i}", "age": 20} for i in range(9))
            ... # doctest: +SKIP
        """
        return await _bulk.insert_many(self, rows, batch_size)

    async def update_where(
        self, *where: ColumnElement[bool], all_rows: bool = False, **values: Any
    ) -> int:
        """Set ``values`` on every row matching ``where`` in one statement; returns the count.

        Values are checked as on ``update()``; ``version`` moves by one and ``onupdate`` columns
        (``updated_at``) are set, as a flush would. Objects of those rows already loaded in this
        unit of work show the new values afterwards (``synchronize_session="fetch"``: matched
        by the keys the UPDATE returns), except attributes changed on them and not flushed.

        Raises:
            InvalidQueryError: no filter and not ``all_rows=True``, no values, an unknown name.
            InvalidDataError: a validator refused a value.

        Example:
            >>> n = await uow.users.update_where(User.age < 18, name="minor")  # doctest: +SKIP
        """
        return await _bulk.update_where(self, where, values, all_rows)

    async def delete_where(
        self, *where: ColumnElement[bool], all_rows: bool = False, **equals: Any
    ) -> int:
        """Delete every row matching the filters in one statement; returns the count.

        Loaded objects of those rows leave the unit of work (``synchronize_session="fetch"``).

        Raises:
            InvalidQueryError: no filter and not ``all_rows=True``, or an unknown name.

        Example:
            >>> n = await uow.users.delete_where(User.age > 120)  # doctest: +SKIP
        """
        return await _bulk.delete_where(self, where, equals, all_rows)

    async def page(
        self,
        *where: ColumnElement[bool],
        order_by: OrderBy | Sequence[OrderBy] | None = None,
        limit: int = 50,
        after: str | None = None,
        load: Sequence[Load] = (),
        **equals: Any,
    ) -> Page[M]:
        """One keyset page: up to ``limit`` objects after the cursor ``after``, in ``order_by``.

        The primary key is appended to the ordering as a tie-breaker, so pages never skip or
        repeat rows, and a page costs the same at any depth (given an index on the ordering).
        ``order_by`` takes mapped columns (``"name"``, ``"-age"``, ``User.age.desc()``). NULLs
        sort last ascending and first descending, on both backends. The cursor is an opaque
        URL-safe string, valid across processes, bound to the model and the ordering.

        Raises:
            InvalidQueryError: a malformed cursor or one made for another ordering, an ordering
                that is not mapped columns, an unknown name, ``limit`` < 1 (before any SQL).

        Example:
            >>> page = await uow.users.page(order_by="-age", limit=50)  # doctest: +SKIP
            >>> more = await uow.users.page(order_by="-age", after=page.next_cursor)
            ... # doctest: +SKIP
        """
        items, cursor = await _pages.page(self, where, equals, order_by, limit, after, load)
        return Page(cast("builtins.list[M]", items), cursor)

    def stream(
        self,
        *where: ColumnElement[bool],
        order_by: OrderBy | Sequence[OrderBy] | None = None,
        batch_size: int = 1000,
        **equals: Any,
    ) -> AsyncIterator[M]:
        """Every matching object, in ``order_by`` order, in constant memory.

        PostgreSQL inside a transaction reads one server-side cursor (one snapshot). SQLite, and
        PostgreSQL's read-only units of work (no transaction), read keyset batches of
        ``batch_size``, each seeing the latest committed data; every row that existed when the
        stream began is yielded exactly once. Streamed objects are tracked like any loaded
        object, but the unit of work holds them weakly: those you drop are freed, so they never
        pile up. Leaving the loop early (break, exception, cancellation) closes the cursor.
        ``order_by`` takes the same mapped columns as ``page()``.

        Raises:
            InvalidQueryError: an ordering that is not mapped columns, an unknown name, or
                ``batch_size`` < 1 (at the first iteration, before any SQL).

        Example:
            >>> async for user in uow.users.stream(User.age >= 18):  # doctest: +SKIP
            ...     print(user.name)
        """
        return cast("AsyncIterator[M]", _pages.stream(self, where, equals, order_by, batch_size))

    def __repr__(self) -> str:
        return f"<{self._label} in {self._uow!r}>"
