"""Column values given without an object, checked the way an object's attributes are.

``upsert``, ``get_or_create``, ``insert_many`` and ``update_where`` take plain dicts. Setting
attributes on an object runs the model's ``@validates`` functions and refuses unknown names; these
helpers do the same for a dict, without building an object per row, and know what a flush would
add on its own: Python-side defaults, the version counter's start and step, ``onupdate`` values.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from inspect import signature as inspect_signature
from typing import Any

from sqlalchemy import Column, ColumnDefault, Table, inspect
from sqlalchemy.orm import Mapper

from ._model import shorten
from .errors import InvalidQueryError


class _DefaultContext:
    """What a context-sensitive column default may ask of SQLAlchemy's execution context."""

    __slots__ = ("current_parameters",)

    def __init__(self, row: dict[str, Any]) -> None:
        self.current_parameters = row

    def get_current_parameters(self, isolate_multiinsert_groups: bool = True) -> dict[str, Any]:
        return self.current_parameters


def _validator(fn: Any, options: dict[str, Any]) -> Callable[[object, str, Any], Any]:
    if options.get("include_removes"):
        # Such a validator takes a fourth argument: whether the value is being removed.
        return lambda obj, key, value: fn(obj, key, value, False)
    return fn  # type: ignore[no-any-return]  # a @validates method


class ModelValues:
    """What checking and completing one model's values needs, computed once per class."""

    def __init__(self, mapper: Mapper[Any]) -> None:
        table = mapper.local_table
        if not isinstance(table, Table):
            raise InvalidQueryError(f"{mapper.class_.__name__} is not mapped to a table")
        self.name = mapper.class_.__name__
        self.mapper = mapper
        self.table = table
        # Attribute key -> its column. Underscored attributes (the insert sentinel) are plumbing.
        self.columns: dict[str, Column[Any]] = {
            prop.key: prop.columns[0]
            for prop in mapper.column_attrs
            if not prop.key.startswith("_") and isinstance(prop.columns[0], Column)
        }
        self.validators: dict[str, Callable[[object, str, Any], Any]] = {}
        for key in self.columns:
            for inherited in mapper.iterate_to_root():  # the most specific validator wins
                found: Any = inherited.validators.get(key)
                if found is not None:
                    self.validators[key] = _validator(found[0], found[1])
                    break
        self.version_key: str | None = None
        self.version_column: Column[Any] | None = None
        self.version_start: Any = None
        version = mapper.version_id_col
        if isinstance(version, Column):
            self.version_column = version
            self.version_key = mapper.get_property_by_column(version).key
            generator = mapper.version_id_generator
            if callable(generator):
                self.version_start = generator(None)
        self.primary_key = tuple(mapper.get_property_by_column(c).key for c in mapper.primary_key)
        self.unique_keys = self._unique_keys()
        # A validator may look at `self`; give it a scratch object, never a tracked one.
        self._scratch = mapper.class_manager.new_instance()

    def _unique_keys(self) -> list[frozenset[str]]:
        by_column = {column: key for key, column in self.columns.items()}
        found: list[frozenset[str]] = []
        candidates: list[Iterable[Any]] = [self.table.primary_key.columns]
        for constraint in self.table.constraints:
            if constraint.__visit_name__ == "unique_constraint":
                candidates.append(constraint.columns)  # type: ignore[attr-defined]  # UniqueConstraint
        for index in self.table.indexes:
            # A partial unique index needs its WHERE repeated in ON CONFLICT: not offered.
            partial = any(v is not None for k, v in index.kwargs.items() if k.endswith("_where"))
            plain = all(isinstance(e, Column) for e in index.expressions)
            if index.unique and not partial and plain:
                candidates.append(index.expressions)
        for columns in candidates:
            keys = frozenset(by_column.get(column, "") for column in columns)
            if keys and "" not in keys and keys not in found:
                found.append(keys)
        return found

    def unknown(self, key: object, what: str) -> InvalidQueryError:
        return InvalidQueryError(
            f"unknown {what} {shorten(key)} for {self.name}: "
            f"expected one of {', '.join(sorted(self.columns))}"
        )

    def check(self, op: str, values: Mapping[str, Any], *, what: str = "field") -> dict[str, Any]:
        """``values`` with every validator applied; unknown or managed names refused.

        Raises:
            InvalidQueryError: a name is not a column, or names the version counter.
            InvalidDataError: a validator refused a value.
        """
        # One lookup per value: this runs for every row insert_many sends.
        settable, scratch = self._settable, self._scratch
        checked: dict[str, Any] = {}
        for key, value in values.items():
            try:
                validator = settable[key]
            except (KeyError, TypeError):
                raise self._refused(op, key, what) from None
            checked[key] = value if validator is None else validator(scratch, key, value)
        return checked

    @functools.cached_property
    def _settable(self) -> dict[str, Callable[[object, str, Any], Any] | None]:
        """Each name a value may be given for, with its validator (or None)."""
        return {key: self.validators.get(key) for key in self.columns if key != self.version_key}

    def _refused(self, op: str, key: object, what: str) -> InvalidQueryError:
        if key == self.version_key:
            return InvalidQueryError(
                f"{op} cannot set {self.name}.{key}: it is the version counter, "
                "which asyncdal moves on every write"
            )
        return self.unknown(key, what)

    def from_object(self, op: str, obj: object) -> dict[str, Any]:
        """The column values set on a (transient) object; its validators ran when they were set."""
        if not isinstance(obj, self.mapper.class_):
            raise InvalidQueryError(
                f"{op} takes dicts or {self.name} objects, got {type(obj).__name__}"
            )
        state: Any = inspect(obj)
        if state.persistent or state.deleted:
            raise InvalidQueryError(f"{op} takes new {self.name} objects, got a persistent one")
        loaded = state.dict
        return {
            key: loaded[key]
            for key in self.columns
            if key in loaded
            and key != self.version_key
            and not (key in self.primary_key and loaded[key] is None)
        }

    def conflict_target(self, op: str, on: Iterable[str]) -> tuple[str, ...]:
        """``on`` checked to name exactly the columns of the primary key or a unique constraint."""
        if isinstance(on, str):
            on = (on,)
        keys = tuple(dict.fromkeys(on))
        for key in keys:
            if key not in self.columns:
                raise self.unknown(key, "conflict column")
        if frozenset(keys) not in self.unique_keys:
            choices = "; ".join(", ".join(sorted(u)) for u in self.unique_keys)
            raise InvalidQueryError(
                f"{op}: on={keys!r} is not the primary key or a unique constraint of {self.name} "
                f"(those are: {choices})"
            )
        return keys

    def update_defaults(self, given: Iterable[str]) -> dict[str, Any]:
        """What an UPDATE must set besides the given values: the version step and ``onupdate``
        values of columns not given (as Python values or SQL expressions)."""
        extra: dict[str, Any] = {}
        version = self.version_key
        if version is not None and self.version_start is not None:
            # The mapped attribute, not the table column: the ORM can then evaluate the step in
            # Python for objects already loaded, instead of expiring their version.
            extra[version] = getattr(self.mapper.class_, version) + 1
        given = set(given)
        for key, column in self.columns.items():
            onupdate = column.onupdate
            if key in given or key in extra or not isinstance(onupdate, ColumnDefault):
                continue
            if onupdate.is_callable:
                extra[key] = onupdate.arg(_DefaultContext({}))
            else:
                extra[key] = onupdate.arg
        return extra

    def insert_defaults(self, row: dict[str, Any]) -> dict[str, Any] | None:
        """``row`` completed with Python-side defaults and the version start, as a flush would;
        ``None`` when a default is a SQL expression (only a real INSERT can apply it)."""
        for key, kind, arg in self._defaults:
            if key in row:
                continue
            if kind is _CALL:
                row[key] = arg()
            elif kind is _CALL_WITH_CONTEXT:
                row[key] = arg(_DefaultContext(row))
            elif kind is _SCALAR:
                row[key] = arg
            else:
                return None
        if self._version_start is not None:
            row[self._version_start[0]] = self._version_start[1]
        return row

    @functools.cached_property
    def _version_start(self) -> tuple[str, Any] | None:
        if self.version_key is None or self.version_start is None:
            return None
        return self.version_key, self.version_start

    @functools.cached_property
    def _defaults(self) -> list[tuple[str, object, Any]]:
        """(key, kind, callable or value) of each column's Python-side insert default."""
        found: list[tuple[str, object, Any]] = []
        for key, column in self.columns.items():
            default = column.default
            if not isinstance(default, ColumnDefault):
                continue
            if default.is_callable:
                # SQLAlchemy wraps a zero-argument function as `lambda ctx: fn()`; call the
                # function itself: one call per row less, on the bulk path's hottest line.
                plain = getattr(default.arg, "__wrapped__", None)
                if plain is not None and _takes_no_arguments(plain):
                    found.append((key, _CALL, plain))
                else:
                    found.append((key, _CALL_WITH_CONTEXT, default.arg))
            elif default.is_scalar:
                found.append((key, _SCALAR, default.arg))
            else:
                found.append((key, _SQL, None))
        return found


_CALL, _CALL_WITH_CONTEXT, _SCALAR, _SQL = object(), object(), object(), object()


def _takes_no_arguments(fn: Callable[..., Any]) -> bool:
    try:
        parameters = inspect_signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return all(p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
               for p in parameters)  # fmt: skip


_CACHE: dict[type[Any], ModelValues] = {}


def model_values(mapper: Mapper[Any]) -> ModelValues:
    found = _CACHE.get(mapper.class_)
    if found is None:
        found = _CACHE[mapper.class_] = ModelValues(mapper)
    return found
