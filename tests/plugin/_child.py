"""What the plugin's tests run: small pytest projects, in a child pytest process each.

``project()`` lays out one (a pytest.ini with the pytest-asyncio mode and loop scopes asked for,
and test files); the test then runs it with ``pytester.runpytest_subprocess`` or ``popen``.
"""

from __future__ import annotations

import textwrap
from typing import Literal

import pytest

Mode = Literal["auto", "strict"]
LoopScope = Literal["function", "session"]

#: The child's tests: ``STRICT`` and ``POSTGRES`` are filled in by ``project()``.
BEHAVIOURS = """
import asyncio

import pytest
from sqlalchemy import text

from asyncdal.errors import RetryableError, UnavailableError, UnitOfWorkStateError
from asyncdal.models import Post, User
from asyncdal.users import UserUnitOfWork

STRICT = {strict}
POSTGRES = {postgres}
pytestmark = [pytest.mark.asyncio] if STRICT else []


@pytest.fixture(scope="session")
def asyncdal_unit_of_work():
    return UserUnitOfWork


async def count(db):
    async with db.unit_of_work(read_only=True) as uow:
        return await uow.users.count()


@pytest.mark.parametrize("n", [1, 2])
async def test_commits_are_seen_by_their_test_only(asyncdal_db, n):
    assert await count(asyncdal_db) == 0
    async with asyncdal_db.unit_of_work() as uow:
        user = await uow.users.add(User(name=f"n{{n}}", age=n))
        await uow.posts.add(Post(author_id=user.id, title="hello"))
        await uow.commit()
    assert await count(asyncdal_db) == 1
    async with asyncdal_db.unit_of_work() as uow:
        await uow.users.add(User(name="left open", age=1))  # never committed
    assert await count(asyncdal_db) == 1


async def test_savepoints_and_rollback_behave_as_outside_tests(asyncdal_db):
    async with asyncdal_db.unit_of_work() as uow:
        await uow.users.add(User(name="kept", age=1))
        with pytest.raises(ValueError):
            async with uow.savepoint():
                await uow.users.add(User(name="undone", age=2))
                raise ValueError("undo the savepoint")
        await uow.commit()
    async with asyncdal_db.unit_of_work() as uow:
        await uow.users.add(User(name="rolled back", age=3))
        await uow.rollback()
    async with asyncdal_db.unit_of_work(read_only=True) as uow:
        assert [u.name for u in await uow.users.list()] == ["kept"]


async def test_run_in_transaction_retries_in_a_fresh_savepoint(asyncdal_db):
    attempts = []

    async def add(uow):
        attempts.append(len(attempts) + 1)
        await uow.users.add(User(name=f"attempt {{len(attempts)}}", age=1))
        if len(attempts) == 1:
            raise RetryableError("serialization failure, say")

    await asyncdal_db.run_in_transaction(add, base_delay=0)
    async with asyncdal_db.unit_of_work(read_only=True) as uow:
        assert [u.name for u in await uow.users.list()] == ["attempt 2"]


async def test_read_only_units_of_work_refuse_writes(asyncdal_db):
    async with asyncdal_db.unit_of_work() as uow:
        await uow.users.add(User(name="yes", age=1))
        await uow.commit()
    async with asyncdal_db.unit_of_work(read_only=True) as uow:
        with pytest.raises(UnitOfWorkStateError, match="read-only"):
            await uow.users.add(User(name="no", age=1))
    async with asyncdal_db.unit_of_work(read_only=True) as uow:
        (user,) = await uow.users.list()
        user.age = 2
        with pytest.raises(UnitOfWorkStateError, match="read-only"):
            await uow.commit()
    if POSTGRES:  # refused by the server too, as outside tests
        async with asyncdal_db.unit_of_work(read_only=True) as uow:
            with pytest.raises(Exception, match="read-only transaction"):
                await uow.session.execute(
                    text("INSERT INTO users (name, age, version) VALUES ('raw', 1, 1)")
                )
    async with asyncdal_db.unit_of_work(read_only=True) as uow:
        await uow.commit()  # a read-only commit leaves the test's transaction writable
    async with asyncdal_db.unit_of_work() as uow:
        await uow.users.add(User(name="yes again", age=1))
        await uow.commit()
    assert await count(asyncdal_db) == 2


async def test_a_concurrent_unit_of_work_is_refused_by_name(asyncdal_db):
    async def other_task():
        async with asyncdal_db.unit_of_work(read_only=True) as uow:
            await uow.users.count()

    async with asyncdal_db.unit_of_work() as uow:
        await uow.users.add(User(name="first", age=1))
        with pytest.raises(UnitOfWorkStateError, match="asyncdal_committing_db"):
            await asyncio.wait_for(asyncio.create_task(other_task()), timeout=5)
        await uow.commit()
    await other_task()  # once the first has ended, the connection is free again
    assert await count(asyncdal_db) == 1


async def test_units_of_work_nest_in_one_task_as_outside_tests(asyncdal_db):
    async with asyncdal_db.unit_of_work() as outer:
        await outer.users.add(User(name="outer", age=1))
        async with asyncdal_db.unit_of_work(read_only=True) as inner:
            await inner.users.count()
        if POSTGRES:
            async with asyncdal_db.unit_of_work() as inner:
                await inner.users.add(User(name="inner", age=1))
                await inner.commit()
        else:  # SQLite has one writer at a time: refused, as the write queue refuses it
            with pytest.raises(UnitOfWorkStateError, match="inside another one in the same task"):
                async with asyncdal_db.unit_of_work():
                    pass
        await outer.commit()
    assert await count(asyncdal_db) == (2 if POSTGRES else 1)


async def test_asyncdal_db_may_be_shut_down_by_its_test(asyncdal_db):
    await asyncdal_db.dispose(timeout=1)  # e.g. the service's shutdown, under test
    with pytest.raises(UnavailableError, match="shutting down"):
        await count(asyncdal_db)


@pytest.mark.parametrize("n", [1, 2])
async def test_committing_db_starts_empty_with_ids_from_1(asyncdal_committing_db, n):
    assert await count(asyncdal_committing_db) == 0

    async def add(name):
        async with asyncdal_committing_db.unit_of_work() as uow:
            user = await uow.users.add(User(name=name, age=n))
            await uow.posts.add(Post(author_id=user.id, title=name))
            await asyncio.sleep(0.01)  # both open at once, on two connections
            await uow.commit()
            return user.id

    ids = await asyncio.gather(add("a"), add("b"))
    assert sorted(ids) == [1, 2]


async def test_asyncdal_committing_db_may_be_shut_down_by_its_test(asyncdal_committing_db):
    await asyncdal_committing_db.dispose(timeout=1)
    with pytest.raises(UnavailableError, match="shutting down"):
        await count(asyncdal_committing_db)


async def test_nothing_is_left_after_the_committing_tests(asyncdal_db):
    assert await count(asyncdal_db) == 0
"""


def project(
    pytester: pytest.Pytester,
    *,
    mode: Mode = "auto",
    loop_scope: LoopScope = "function",
    postgres: bool = False,
    files: dict[str, str] | None = None,
) -> None:
    """Lay out a child project: its pytest.ini and test files (default: ``BEHAVIOURS``)."""
    pytester.makeini(
        textwrap.dedent(
            f"""\
            [pytest]
            asyncio_mode = {mode}
            asyncio_default_fixture_loop_scope = {loop_scope}
            asyncio_default_test_loop_scope = {loop_scope}
            filterwarnings = error
            """
        )
    )
    if files is None:
        strict = mode == "strict"
        files = {"test_behaviours": BEHAVIOURS.format(strict=strict, postgres=postgres)}
    pytester.makepyfile(**files)
