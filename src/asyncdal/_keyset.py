"""Keyset pages: the ordering, the predicate "after this row", and the opaque cursor.

An ordering is a list of mapped columns, each ascending or descending, with the primary key
appended as the tie-breaker (in the direction of the last column, so an all-descending ordering
stays one direction and can use a row-value comparison and an index scanned backwards).

NULLs sort as if larger than every value, on both backends: last when ascending, first when
descending (PostgreSQL's default; SQLite is told ``NULLS LAST`` / ``NULLS FIRST``). The predicate
spells out the NULL cases, so a page never skips or repeats a row whose sort value is NULL.

The cursor is ``base64url(JSON)`` of ``{"v": version, "o": fingerprint, "k": [values]}``: opaque,
URL-safe, never pickle. The fingerprint names the model and the ordering, so a cursor made for
another ordering is refused before any SQL. Values are re-typed by their column's type when read
back and always bound as parameters: an edited cursor is refused or names another position.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import decimal
import hashlib
import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import ColumnElement, and_, false, or_, tuple_
from sqlalchemy.orm import InstrumentedAttribute, Mapper
from sqlalchemy.orm.exc import UnmappedColumnError
from sqlalchemy.sql.elements import UnaryExpression
from sqlalchemy.sql.operators import asc_op, desc_op

from .errors import InvalidQueryError

CURSOR_VERSION = 1
#: Longer cursors are refused unread: a sort key is a few values, not kilobytes.
MAX_CURSOR_LENGTH = 4096

Encode = Callable[[Any], Any]
Decode = Callable[[Any], Any]


def _exact(kind: type[Any]) -> Decode:
    def decode(value: Any) -> Any:
        if type(value) is not kind:
            raise ValueError(f"expected {kind.__name__}, got {type(value).__name__}")
        return value

    return decode


def _float(value: Any) -> float:
    if type(value) not in (int, float):
        raise ValueError(f"expected a number, got {type(value).__name__}")
    return float(value)


def _parsed(parse: Callable[[str], Any]) -> Decode:
    def decode(value: Any) -> Any:
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {type(value).__name__}")
        return parse(value)

    return decode


def _decimal(text: str) -> decimal.Decimal:
    try:
        found = decimal.Decimal(text)
    except decimal.InvalidOperation:
        raise ValueError("not a decimal number") from None
    if not found.is_finite():
        raise ValueError("not a finite decimal number")
    return found


def _iso(value: Any) -> str:
    return str(value.isoformat())


# Python type of a column -> (encode to JSON, decode from JSON). bool precedes int: a subclass.
_CODECS: list[tuple[type[Any], Encode, Decode]] = [
    (bool, bool, _exact(bool)),
    (int, int, _exact(int)),
    (float, float, _float),
    (str, str, _exact(str)),
    (decimal.Decimal, str, _parsed(_decimal)),
    (dt.datetime, _iso, _parsed(dt.datetime.fromisoformat)),
    (dt.date, _iso, _parsed(dt.date.fromisoformat)),
    (dt.time, _iso, _parsed(dt.time.fromisoformat)),
    (uuid.UUID, str, _parsed(uuid.UUID)),
]


@dataclass(frozen=True, slots=True)
class SortKey:
    """One column of an ordering."""

    key: str
    column: ColumnElement[Any]
    descending: bool
    nullable: bool
    encode: Encode
    decode: Decode

    def order(self) -> ColumnElement[Any]:
        if self.descending:
            return self.column.desc().nulls_first() if self.nullable else self.column.desc()
        return self.column.asc().nulls_last() if self.nullable else self.column.asc()

    def equal(self, value: Any) -> ColumnElement[bool]:
        return self.column.is_(None) if value is None else self.column == value

    def beyond(self, value: Any) -> ColumnElement[bool] | None:
        """Rows strictly after ``value`` in this column's order, or None when there are none."""
        if self.descending:
            if value is None:
                return self.column.is_not(None)
            return cast("ColumnElement[bool]", self.column < value)  # stubs say Any
        if value is None:
            return None
        if self.nullable:
            return or_(self.column > value, self.column.is_(None))
        return cast("ColumnElement[bool]", self.column > value)


def _codec(name: str, column: Any) -> tuple[Encode, Decode]:
    try:
        python_type = column.type.python_type
    except NotImplementedError:
        python_type = None
    for kind, encode, decode in _CODECS:
        if python_type is not None and issubclass(python_type, kind):
            return encode, decode
    raise InvalidQueryError(
        f"cannot page or stream by {name!r}: its type {column.type} has no cursor encoding"
    )


class Ordering:
    """A keyset ordering of one mapped class; build it with :func:`ordering`."""

    def __init__(self, model_name: str, keys: Sequence[SortKey]) -> None:
        self.keys = tuple(keys)
        spec = ",".join(f"{'-' if k.descending else ''}{k.key}" for k in self.keys)
        digest = hashlib.sha256(f"{model_name}:{spec}".encode()).digest()[:9]
        self.fingerprint = base64.urlsafe_b64encode(digest).decode()
        self.columns = [key.column for key in self.keys]
        directions = {key.descending for key in self.keys}
        # A row value comparison reads one index range, but it cannot express NULL placement
        # nor mixed directions: those get the expanded OR form.
        self._row_value = len(directions) == 1 and not any(key.nullable for key in self.keys)

    def order_by(self) -> list[ColumnElement[Any]]:
        return [key.order() for key in self.keys]

    def after(self, values: Sequence[Any]) -> ColumnElement[bool]:
        """Rows strictly after the row whose sort values are ``values``."""
        keys = self.keys
        if self._row_value:
            if len(keys) == 1:
                single = keys[0].beyond(values[0])
                return single if single is not None else false()
            left, right = tuple_(*self.columns), tuple_(*values)
            return left < right if keys[0].descending else left > right
        branches: list[ColumnElement[bool]] = []
        for index, key in enumerate(keys):
            step = key.beyond(values[index])
            if step is not None:
                equal = [keys[j].equal(values[j]) for j in range(index)]
                branches.append(and_(*equal, step) if equal else step)
        if not branches:
            return false()
        chain = or_(*branches)
        first, value = keys[0], values[0]
        if value is not None and not first.nullable:
            # Redundant, but a top-level range on the leading column lets an index narrow
            # the scan before the OR is checked row by row.
            bound = first.column <= value if first.descending else first.column >= value
            return and_(bound, chain)
        return chain

    def encode(self, values: Sequence[Any]) -> str:
        payload = {
            "v": CURSOR_VERSION,
            "o": self.fingerprint,
            "k": [
                None if v is None else k.encode(v) for k, v in zip(self.keys, values, strict=True)
            ],
        }
        text = json.dumps(payload, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
        return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")

    def decode(self, op: str, cursor: object) -> list[Any]:
        """The sort values a cursor holds.

        Raises:
            InvalidQueryError: not a cursor, or one made for another model or ordering.
        """
        if not isinstance(cursor, str) or not cursor or len(cursor) > MAX_CURSOR_LENGTH:
            raise InvalidQueryError(f"{op}: after= takes a cursor from Page.next_cursor")
        try:
            # validate=True: the lenient decoder skips characters outside the alphabet, so
            # a cursor with junk appended ("...!") could decode to the same position.
            padded = cursor + "=" * (-len(cursor) % 4)
            raw = base64.b64decode(padded, altchars=b"-_", validate=True)
            payload = json.loads(raw.decode("utf-8"))
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise InvalidQueryError(f"{op}: the cursor is malformed") from None
        if not isinstance(payload, dict) or set(payload) != {"v", "o", "k"}:
            raise InvalidQueryError(f"{op}: the cursor is malformed")
        if payload["v"] != CURSOR_VERSION:
            raise InvalidQueryError(f"{op}: the cursor's format version is not supported")
        if payload["o"] != self.fingerprint:
            raise InvalidQueryError(
                f"{op}: the cursor was made for another model or ordering; "
                "pass the same order_by as the page it came from"
            )
        raw_values = payload["k"]
        if not isinstance(raw_values, list) or len(raw_values) != len(self.keys):
            raise InvalidQueryError(f"{op}: the cursor is malformed")
        values: list[Any] = []
        for key, value in zip(self.keys, raw_values, strict=True):
            if value is None:
                if not key.nullable:
                    raise InvalidQueryError(f"{op}: the cursor's {key.key!r} must not be null")
                values.append(None)
                continue
            try:
                values.append(key.decode(value))
            except (ValueError, TypeError) as error:
                raise InvalidQueryError(
                    f"{op}: the cursor's {key.key!r} value is invalid ({error})"
                ) from None
        return values


def _sort_key(mapper: Mapper[Any], item: object, columns: dict[str, Any]) -> SortKey:
    descending = False
    element: Any = item
    if isinstance(item, str):
        descending = item.startswith("-")
        name = item[1:] if descending else item
        if name.startswith("_") or name not in columns:
            raise InvalidQueryError(
                f"unknown order_by name {name!r} for {mapper.class_.__name__}: "
                f"expected one of {', '.join(sorted(columns))}"
            )
        element = columns[name]
    elif isinstance(item, UnaryExpression):
        if item.modifier not in (asc_op, desc_op):
            raise InvalidQueryError(
                f"page() and stream() order NULLs themselves (last ascending, first "
                f"descending): order by the column, not {item}"
            )
        descending = item.modifier is desc_op
        element = item.element
    if isinstance(element, InstrumentedAttribute):
        element = element.expression
    try:
        prop = mapper.get_property_by_column(element)
    except (UnmappedColumnError, AttributeError, TypeError, KeyError):
        raise InvalidQueryError(
            f"page() and stream() order by mapped columns of {mapper.class_.__name__} "
            f"('name', '-age', User.age, User.age.desc()), got {item!r}"
        ) from None
    column = prop.columns[0]
    encode, decode = _codec(prop.key, column)
    return SortKey(
        key=prop.key,
        column=getattr(mapper.class_, prop.key),
        descending=descending,
        nullable=bool(getattr(column, "nullable", True)),
        encode=encode,
        decode=decode,
    )


def ordering(mapper: Mapper[Any], order_by: object, columns: dict[str, Any]) -> Ordering:
    """The keyset ordering for ``order_by`` (a name, a column, or a list), primary key appended.

    Raises:
        InvalidQueryError: an item is not a mapped column of the model, or has no cursor encoding.
    """
    if order_by is None:
        items: Sequence[object] = []
    elif isinstance(order_by, list | tuple):
        items = order_by
    else:
        items = [order_by]
    keys: list[SortKey] = []
    for item in items:
        key = _sort_key(mapper, item, columns)
        if any(k.key == key.key for k in keys):
            raise InvalidQueryError(f"order_by names {key.key!r} twice")
        keys.append(key)
    descending = keys[-1].descending if keys else False
    for column in mapper.primary_key:
        prop = mapper.get_property_by_column(column)
        if not any(k.key == prop.key for k in keys):
            encode, decode = _codec(prop.key, column)
            attr = getattr(mapper.class_, prop.key)
            keys.append(SortKey(prop.key, attr, descending, False, encode, decode))
    return Ordering(mapper.class_.__name__, keys)
