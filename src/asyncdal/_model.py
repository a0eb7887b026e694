"""What a repository knows of a mapped class, and the checks its arguments go through."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import Select, bindparam, inspect, select
from sqlalchemy.orm import InstrumentedAttribute, Mapper

from .errors import InvalidDataError, InvalidQueryError

if TYPE_CHECKING:
    from ._keyset import Ordering

_NAME_SHOWN = 60
#: Keyset orderings kept per model, keyed by their order_by names.
ORDERINGS_KEPT = 64


class ModelInfo:
    """What the repository needs to know of a mapped class, computed once per class."""

    def __init__(self, model: type[Any]) -> None:
        mapper: Mapper[Any] | None = inspect(model, raiseerr=False)
        if not isinstance(mapper, Mapper):
            raise InvalidQueryError(f"{qualname(model)} is not a mapped class")
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
        self.orderings: dict[Any, Ordering] = {}
        self.by_pk: Select[Any] | None = None
        if len(mapper.primary_key) == 1:
            self.by_pk = select(model).where(mapper.primary_key[0] == bindparam("pk"))

    def column(self, name: object, what: str) -> InstrumentedAttribute[Any]:
        if isinstance(name, str):
            found = self.columns.get(name)
            if found is not None:
                return found
        raise InvalidQueryError(
            f"unknown {what} {shorten(name)} for {self.name}: "
            f"expected one of {', '.join(sorted(self.columns))}"
        )

    def relationship(self, name: str) -> InstrumentedAttribute[Any]:
        found = self.relationships.get(name)
        if found is None:
            expected = ", ".join(sorted(self.relationships)) or "(none)"
            raise InvalidQueryError(
                f"unknown relationship {shorten(name)} to load for {self.name}: "
                f"expected one of {expected}"
            )
        return found


_INFOS: dict[type[Any], ModelInfo] = {}


def model_info(model: type[Any]) -> ModelInfo:
    found = _INFOS.get(model)
    if found is None:
        found = _INFOS[model] = ModelInfo(model)
    return found


def qualname(obj: object) -> str:
    return getattr(obj, "__qualname__", type(obj).__name__)


def shorten(name: object) -> str:
    text = repr(name)
    return text if len(text) <= _NAME_SHOWN else f"{text[:_NAME_SHOWN]}... ({len(text)} chars)"


def check_filter_value(name: str, value: object) -> object:
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


def check_count(name: str, value: object) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidQueryError(f"{name} must be an integer >= 0 or None, got {shorten(value)}")
    return value
