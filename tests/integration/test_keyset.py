"""Keyset pages: no skips or repeats, any ordering, NULLs in one place, cursors that cannot lie."""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from typing import Any

import pytest

from asyncdal import Database, Page
from asyncdal.errors import InvalidQueryError
from asyncdal.models import User
from asyncdal.users import UserUnitOfWork
from tests.support import count_statements

# Ages repeat (ties), a third of the emails are NULL: the tie-breaker and NULL placement matter.
ROWS: list[dict[str, Any]] = [
    {"name": f"user {i:03}", "age": i % 7, "email": None if i % 3 == 0 else f"u{i % 11}.{i}@x"}
    for i in range(1, 61)
]


@pytest.fixture
async def people(db: Database[UserUnitOfWork]) -> Database[UserUnitOfWork]:
    async with db.unit_of_work() as uow:
        await uow.users.insert_many(ROWS)
        await uow.commit()
    return db


async def walk(db: Database[UserUnitOfWork], limit: int, **kwargs: Any) -> list[User]:
    seen: list[User] = []
    cursor = None
    async with db.unit_of_work(read_only=True) as uow:
        while True:
            page = await uow.users.page(limit=limit, after=cursor, **kwargs)
            assert isinstance(page, Page)
            assert len(page.items) <= limit
            seen += page.items
            cursor = page.next_cursor
            if cursor is None:
                return seen


def row(user: User) -> int:
    """The user's position in ROWS, from 1 (its id too, when ids start at 1)."""
    return int(user.name.removeprefix("user "))


def expected(key: Any) -> list[int]:
    """Positions in the documented order: NULLs last ascending, the id as the last tie-breaker
    (ids follow ROWS' order, wherever the id sequence stood)."""
    ids = list(range(1, len(ROWS) + 1))
    return sorted(ids, key=key)


def _nulls_last(value: Any) -> tuple[bool, Any]:
    return (value is None, value if value is not None else "")


def _nulls_first_descending(value: Any) -> tuple[bool, list[int]]:
    return (value is not None, [-ord(c) for c in value] + [0] if value is not None else [])


@pytest.mark.parametrize(
    ("order_by", "key"),
    [
        (None, lambda i: i),
        ("age", lambda i: (ROWS[i - 1]["age"], i)),
        ("-age", lambda i: (-ROWS[i - 1]["age"], -i)),
        (["age", "-name"], lambda i: (ROWS[i - 1]["age"], [-ord(c) for c in ROWS[i - 1]["name"]])),
        ([User.age.desc(), User.id], lambda i: (-ROWS[i - 1]["age"], i)),
        ("email", lambda i: (_nulls_last(ROWS[i - 1]["email"]), i)),
        ("-email", lambda i: (_nulls_first_descending(ROWS[i - 1]["email"]), -i)),
        (["age", "email"], lambda i: (ROWS[i - 1]["age"], _nulls_last(ROWS[i - 1]["email"]), i)),
    ],
)
@pytest.mark.parametrize("limit", [1, 7, 60, 100])
async def test_pages_visit_every_row_once_in_order(
    people: Database[UserUnitOfWork], order_by: Any, key: Any, limit: int
) -> None:
    seen = await walk(people, limit, order_by=order_by)
    assert [row(u) for u in seen] == expected(key)


async def test_descending_puts_nulls_first_on_both_backends(
    people: Database[UserUnitOfWork],
) -> None:
    seen = await walk(people, 4, order_by="-email")
    emails = [u.email for u in seen]
    nulls = sum(row["email"] is None for row in ROWS)
    assert len(seen) == len(ROWS)
    assert emails[:nulls] == [None] * nulls
    assert emails[nulls:] == sorted((e for e in emails if e is not None), reverse=True)
    # Ties among the NULLs go by id in the ordering's direction.
    assert [u.id for u in seen[:nulls]] == sorted((u.id for u in seen[:nulls]), reverse=True)


async def test_filters_apply_to_every_page(people: Database[UserUnitOfWork]) -> None:
    seen = await walk(people, 3, order_by="-name", age=2)
    assert [u.name for u in seen] == sorted(
        (r["name"] for r in ROWS if r["age"] == 2), reverse=True
    )
    async with people.unit_of_work(read_only=True) as uow:
        page = await uow.users.page(User.age >= 5, order_by="age", limit=100)
    assert all(u.age >= 5 for u in page.items)
    assert page.next_cursor is None


async def test_last_page_has_no_cursor_and_an_empty_table_one_empty_page(
    db: Database[UserUnitOfWork],
) -> None:
    async with db.unit_of_work(read_only=True) as uow:
        page = await uow.users.page(order_by="name")
    assert page == Page([], None)


async def test_cursor_is_url_safe_and_opaque(people: Database[UserUnitOfWork]) -> None:
    async with people.unit_of_work(read_only=True) as uow:
        page = await uow.users.page(order_by="email", limit=2)
    assert page.next_cursor is not None
    assert set(page.next_cursor) <= set(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    )
    assert "@" not in page.next_cursor


async def test_cursor_made_in_another_process_is_honoured(
    people: Database[UserUnitOfWork],
) -> None:
    async with people.unit_of_work(read_only=True) as uow:
        page = await uow.users.page(order_by=["age", "-name"], limit=5)
    assert page.next_cursor is not None
    last = page.items[-1]
    code = (
        "import sys; from asyncdal.models import User; from asyncdal._keyset import ordering;"
        "from asyncdal._model import model_info; info = model_info(User);"
        "o = ordering(info.mapper, ['age', '-name'], info.columns);"
        f"print(o.encode([{last.age}, {last.name!r}, {last.id}]))"
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await process.communicate()
    assert process.returncode == 0
    made = out.decode().strip()
    assert made == page.next_cursor


def _edit(cursor: str, change: Any) -> str:
    payload = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    change(payload)
    raw = json.dumps(payload, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _set(index: int, value: Any) -> Any:
    return lambda payload: payload["k"].__setitem__(index, value)


@pytest.mark.parametrize(
    "tamper",
    [
        lambda c: "not a cursor",
        lambda c: c[:-3],
        lambda c: c + "!",
        lambda c: "",
        lambda c: "A" * 10_000,
        lambda c: base64.urlsafe_b64encode(b"[1,2]").decode(),
        lambda c: _edit(c, lambda p: p.__setitem__("v", 99)),
        lambda c: _edit(c, lambda p: p.__setitem__("o", "another")),
        lambda c: _edit(c, lambda p: p.__setitem__("k", [1])),
        lambda c: _edit(c, _set(0, "' OR 1=1 --")),
        lambda c: _edit(c, _set(0, True)),
        lambda c: _edit(c, _set(1, None)),
        lambda c: _edit(c, _set(1, {"$gt": 1})),
    ],
)
async def test_malformed_or_foreign_cursors_are_refused_before_any_sql(
    people: Database[UserUnitOfWork], tamper: Any
) -> None:
    async with people.unit_of_work(read_only=True) as uow:
        page = await uow.users.page(order_by="age", limit=5)
        assert page.next_cursor is not None
        with count_statements(people.engine) as sent, pytest.raises(InvalidQueryError):
            await uow.users.page(order_by="age", limit=5, after=tamper(page.next_cursor))
        assert sent == []


async def test_a_cursor_for_another_ordering_or_model_is_refused(
    people: Database[UserUnitOfWork],
) -> None:
    async with people.unit_of_work(read_only=True) as uow:
        page = await uow.users.page(order_by="age", limit=5)
        with pytest.raises(InvalidQueryError, match="another model or ordering"):
            await uow.users.page(order_by="-age", after=page.next_cursor)
        with pytest.raises(InvalidQueryError, match="another model or ordering"):
            await uow.users.page(order_by=["age", "name"], after=page.next_cursor)
        with pytest.raises(InvalidQueryError, match="another model or ordering"):
            await uow.posts.page(after=page.next_cursor)


async def test_an_edited_cursor_value_is_only_another_position(
    people: Database[UserUnitOfWork],
) -> None:
    async with people.unit_of_work(read_only=True) as uow:
        page = await uow.users.page(order_by="age", limit=5)
        assert page.next_cursor is not None
        moved = _edit(page.next_cursor, lambda p: p.__setitem__("k", [5, 0]))
        rest = await uow.users.page(order_by="age", limit=100, after=moved)
    assert [u.age for u in rest.items] == sorted(r["age"] for r in ROWS if r["age"] >= 5)


@pytest.mark.parametrize(
    "order_by",
    [User.name.nulls_first(), User.age + 1, "posts", "nope", ["age", "age"], 42, "_sentinel"],
)
async def test_orderings_a_keyset_cannot_follow_are_refused(
    people: Database[UserUnitOfWork], order_by: Any
) -> None:
    async with people.unit_of_work(read_only=True) as uow:
        with count_statements(people.engine) as sent, pytest.raises(InvalidQueryError):
            await uow.users.page(order_by=order_by)
        assert sent == []


@pytest.mark.parametrize("limit", [0, -1, True, "5", None])
async def test_limit_must_be_a_positive_integer(
    people: Database[UserUnitOfWork], limit: Any
) -> None:
    async with people.unit_of_work(read_only=True) as uow:
        with pytest.raises(InvalidQueryError, match="limit"):
            await uow.users.page(limit=limit)


async def test_page_works_in_a_read_write_unit_of_work_too(
    people: Database[UserUnitOfWork],
) -> None:
    async with people.unit_of_work() as uow:
        page = await uow.users.page(order_by="-age", limit=10)
        more = await uow.users.page(order_by="-age", limit=10, after=page.next_cursor)
    assert len({u.id for u in page.items + more.items}) == 20


async def test_walking_10000_rows_while_others_insert_visits_each_old_row_once(
    committing_db: Database[UserUnitOfWork],
) -> None:
    async with committing_db.unit_of_work() as uow:
        await uow.users.insert_many({"name": f"n{i % 500}", "age": i % 100} for i in range(10_000))
        await uow.commit()
    async with committing_db.unit_of_work(read_only=True) as uow:
        before = {u.id for u in await uow.users.list()}
    walking = True

    async def insert() -> int:
        made = 0
        while walking:
            async with committing_db.unit_of_work() as uow:
                await uow.users.insert_many({"name": f"n{made % 500}", "age": made % 100}
                                            for made in range(made, made + 20))  # fmt: skip
                await uow.commit()
            made += 20
            await asyncio.sleep(0)
        return made

    inserter = asyncio.create_task(insert())
    try:
        seen = await walk(committing_db, 250, order_by=["name", "-age"])
    finally:
        walking = False
        inserted = await inserter
    ids = [u.id for u in seen]
    assert inserted > 0
    old = [i for i in ids if i in before]
    assert len(old) == len(set(old)) == len(before)
    assert len(ids) == len(set(ids))
