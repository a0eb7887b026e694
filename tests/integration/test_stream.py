"""stream(): every row once, in order, in constant memory; leaving early leaves nothing behind."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest
from sqlalchemy import text

from asyncdal import Database
from asyncdal.errors import InvalidQueryError
from asyncdal.models import User
from asyncdal.users import UserUnitOfWork
from tests.support import count_statements

N = 3_000


@pytest.fixture
async def many(committing_db: Database[UserUnitOfWork]) -> Database[UserUnitOfWork]:
    async with committing_db.unit_of_work() as uow:
        await uow.users.insert_many(
            {"name": f"user {i % 97}", "age": i % 13, "email": None if i % 4 else f"e{i}@x"}
            for i in range(N)
        )
        await uow.commit()
    return committing_db


@pytest.mark.parametrize("read_only", [True, False])
@pytest.mark.parametrize(
    ("order_by", "batch_size"),
    [(None, 1000), ("-age", 7), (["name", "-email"], 250), ("email", 3_000)],
)
async def test_stream_yields_every_row_once_in_the_order_page_uses(
    many: Database[UserUnitOfWork], read_only: bool, order_by: Any, batch_size: int
) -> None:
    async with many.unit_of_work(read_only=True) as uow:
        paged: list[int] = []
        cursor = None
        while True:
            page = await uow.users.page(order_by=order_by, limit=500, after=cursor)
            paged += [u.id for u in page.items]
            if (cursor := page.next_cursor) is None:
                break
    async with many.unit_of_work(read_only=read_only) as uow:
        streamed = [u.id async for u in uow.users.stream(order_by=order_by, batch_size=batch_size)]
    assert len(streamed) == N
    assert streamed == paged


async def test_stream_applies_filters(many: Database[UserUnitOfWork]) -> None:
    async with many.unit_of_work(read_only=True) as uow:
        ages = {u.age async for u in uow.users.stream(User.age >= 10, batch_size=100)}
        named = [u async for u in uow.users.stream(name="user 5", age=5)]
    assert ages == {10, 11, 12}
    assert {(u.name, u.age) for u in named} == {("user 5", 5)}


@pytest.mark.parametrize("read_only", [True, False])
async def test_streamed_objects_do_not_pile_up_in_the_unit_of_work(
    many: Database[UserUnitOfWork], read_only: bool
) -> None:
    largest = 0
    count = 0
    async with many.unit_of_work(read_only=read_only) as uow:
        async for _user in uow.users.stream(batch_size=100):
            count += 1
            if count % 50 == 0:
                largest = max(largest, len(uow.session.identity_map))
        assert count == N
        # A batch, and the one before it being released: never the whole table.
        assert largest <= 2 * 100 + 1


@pytest.mark.parametrize(
    ("order_by", "batch_size"),
    [(User.age + 1, 10), ("nope", 10), (None, 0), (None, True)],
)
async def test_stream_refuses_bad_arguments_before_any_sql(
    many: Database[UserUnitOfWork], order_by: Any, batch_size: Any
) -> None:
    async with many.unit_of_work(read_only=True) as uow:
        with count_statements(many.engine) as sent, pytest.raises(InvalidQueryError):
            async for _user in uow.users.stream(order_by=order_by, batch_size=batch_size):
                pass
        assert sent == []


async def _clean_after(db: Database[UserUnitOfWork]) -> None:
    """Nothing checked out, and on PostgreSQL no session of ours left inside a transaction."""
    assert db.pool_status().checked_out == 0
    if db.backend != "postgresql":
        return
    async with db.engine.connect() as connection:
        stuck = await connection.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid() AND state LIKE 'idle in transaction%'"
            )
        )
    assert stuck == 0


class Boom(Exception):
    pass


@pytest.mark.parametrize("read_only", [True, False])
@pytest.mark.parametrize("how", ["break", "exception"])
async def test_leaving_a_stream_early_leaves_the_connection_usable_and_clean(
    many: Database[UserUnitOfWork], read_only: bool, how: str
) -> None:
    async with many.unit_of_work(read_only=read_only) as uow:
        seen = 0
        try:
            async for _user in uow.users.stream(batch_size=100):
                seen += 1
                if seen == 150:
                    if how == "break":
                        break
                    raise Boom
        except Boom:
            pass
        gc.collect()
        await asyncio.sleep(0)  # let the abandoned generator's finalizer run
        # The same unit of work goes on: a new query, and a whole new stream.
        assert await uow.users.count() == N
        assert sum([1 async for _ in uow.users.stream(batch_size=500)]) == N
    await _clean_after(many)


@pytest.mark.parametrize("read_only", [True, False])
async def test_a_cancelled_stream_leaves_nothing_open(
    many: Database[UserUnitOfWork], read_only: bool
) -> None:
    started = asyncio.Event()

    async def consume() -> None:
        async with many.unit_of_work(read_only=read_only) as uow:
            async for _user in uow.users.stream(batch_size=10):
                started.set()
                await asyncio.sleep(0)

    task = asyncio.create_task(consume())
    await started.wait()
    for _ in range(5):
        await asyncio.sleep(0)  # somewhere in the middle of fetching batches
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await _clean_after(many)
    async with many.unit_of_work(read_only=True) as uow:
        assert await uow.users.count() == N


async def test_changes_to_streamed_objects_are_flushed_in_a_read_write_unit_of_work(
    many: Database[UserUnitOfWork],
) -> None:
    async with many.unit_of_work() as uow:
        async for user in uow.users.stream(User.age == 3, batch_size=50):
            user.age = 4
        await uow.commit()
    async with many.unit_of_work(read_only=True) as uow:
        assert await uow.users.count(age=3) == 0
