"""``Repository[Model]``: generic async CRUD over one mapped class, bound to a unit of work.

Filters are plain SQLAlchemy expressions plus keyword equality on column names. Every name (keyword
filter, string ``order_by``, ``update()`` field, ``load`` relationship) is checked against the
mapper before any SQL is built: an unknown one raises ``InvalidQueryError``. Values are always
bound parameters.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeAlias, TypeVar, cast

from sqlalchemy import ColumnElement, Select, bindparam, exists, func, inspect, select
from sqlalchemy.orm import InstrumentedAttribute, Mapper, selectinload
from sqlalchemy.orm.interfaces import ORMOption
from sqlalchemy.sql import ClauseElement

from .errors import InvalidDataError, InvalidQueryError, NotFoundError

if TYPE_CHECKING:
    from .uow import UnitOfWork

M = TypeVar("M")

OrderBy: TypeAlias = "str | ColumnElement[Any] | InstrumentedAttribute[Any]"
Load: TypeAlias = "str | ORMOption"

_NAME_SHOWN = 60


class _ModelInfo:
    """What the repository needs to know of a mapped class, computed once per class."""

    def __init__(self, model: type[Any]) -> None:
        mapper: Mapper[Any] | None = inspect(model, raiseerr=False)
        if not isinstance(mapper, Mapper):
            raise InvalidQueryError(f"{_qualname(model)} is not a mapped class")
        self.name = mapper.class_.__name__
        self.mapper = mapper
        # Underscored attributes (the insert sentinel) are plumbing, not filterable fields.
        self.columns: dict[str, InstrumentedAttribute[Any]] = {
            attr.key: getattr(model, attr.key)
            for attr in mapper.column_attrs
            if not attr.key.startswith("_")
        }
        self.relationships: dict[str, InstrumentedAttribute[Any]] = {
            rel.key: getattr(model, rel.key) for rel in mapper.relationships
        }
        self.primary_key = mapper.primary_key
        self.by_pk: Select[Any] | None = None
        if len(mapper.primary_key) == 1:
            self.by_pk = select(model).where(mapper.primary_key[0] == bindparam("pk"))

    def column(self, name: object, what: str) -> InstrumentedAttribute[Any]:
        if isinstance(name, str):
            found = self.columns.get(name)
            if found is not None:
                return found
        raise InvalidQueryError(
            f"unknown {what} {_shorten(name)} for {self.name}: "
            f"expected one of {', '.join(sorted(self.columns))}"
        )

    def relationship(self, name: str) -> InstrumentedAttribute[Any]:
        found = self.relationships.get(name)
        if found is None:
            expected = ", ".join(sorted(self.relationships)) or "(none)"
            raise InvalidQueryError(
                f"unknown relationship {_shorten(name)} to load for {self.name}: "
                f"expected one of {expected}"
            )
        return found


_INFO: dict[type[Any], _ModelInfo] = {}


def _info(model: type[Any]) -> _ModelInfo:
    found = _INFO.get(model)
    if found is None:
        found = _INFO[model] = _ModelInfo(model)
    return found


def _qualname(obj: object) -> str:
    return getattr(obj, "__qualname__", type(obj).__name__)


def _shorten(name: object) -> str:
    text = repr(name)
    return text if len(text) <= _NAME_SHOWN else f"{text[:_NAME_SHOWN]}... ({len(text)} chars)"


def _check_filter_value(name: str, value: object) -> object:
    """Refuse, on both backends alike, text that only one of them would accept as a parameter.

    SQLite compares a NUL byte happily, PostgreSQL refuses it; a lone surrogate cannot be encoded
    for either, but fails differently. Both become ``InvalidDataError`` before any SQL is sent.
    """
    if isinstance(value, str):
        if "\x00" in value:
            raise InvalidDataError(f"filter {name!r} value must not contain a NUL byte")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidDataError(
                f"filter {name!r} value must be valid Unicode (no lone surrogates)"
            ) from None
    return value


def _check_count(name: str, value: object) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidQueryError(f"{name} must be an integer >= 0 or None, got {_shorten(value)}")
    return value


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
        self._info = _info(chosen)
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
        await self._uow._run(op, session.flush())
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
                    f"load takes relationship names or loader options, got {_shorten(item)}"
                )
        return options

    def _where(
        self, where: Sequence[object], equals: Mapping[str, Any], stmt: Select[Any]
    ) -> Select[Any]:
        clauses: builtins.list[Any] = []
        for clause in where:
            if not isinstance(clause, ClauseElement):
                raise InvalidQueryError(
                    "filters must be SQLAlchemy expressions such as User.age >= 18, "
                    f"got {_shorten(clause)}"
                )
            clauses.append(clause)
        for name, value in equals.items():
            column = self._info.column(name, "filter")
            clauses.append(column == _check_filter_value(name, value))
        return stmt.where(*clauses) if clauses else stmt

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
                    f"order_by takes column names ('name', '-age') or columns, got {_shorten(item)}"
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
        checked_limit = _check_count("limit", limit)
        checked_offset = _check_count("offset", offset)
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

    def __repr__(self) -> str:
        return f"<{self._label} in {self._uow!r}>"
