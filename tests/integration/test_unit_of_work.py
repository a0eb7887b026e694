"""Unit-of-work semantics against the real databases: commit, rollback, savepoints, read-only."""

from __future__ import annotations

import pytest

from asyncdal import Database
from asyncdal.errors import ConflictError, UnitOfWorkStateError
from asyncdal.models import User
from asyncdal.uow import State
from asyncdal.users import UserUnitOfWork
from tests.support import Backend


async def _count(db: Database[UserUnitOfWork]) -> int:
    async with db.unit_of_work(read_only=True) as uow:
        return await uow.users.count()


async def test_leaving_without_commit_rolls_back(db: Database[UserUnitOfWork]) -> None:
    async with db.unit_of_work() as uow:
        await uow.users.add(User(name="Ghost", age=1))
    assert await _count(db) == 0


async def test_exception_rolls_back_and_propagates(db: Database[UserUnitOfWork]) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        async with db.unit_of_work() as uow:
            await uow.users.add(User(name="Ghost", age=1))
            raise RuntimeError("boom")
    assert await _count(db) == 0


async def test_explicit_rollback_discards_and_ends(db: Database[UserUnitOfWork]) -> None:
    async with db.unit_of_work() as uow:
        user = await uow.users.add(User(name="Ghost", age=1))
        await uow.rollback()
        assert uow.state is State.ROLLED_BACK
        with pytest.raises(UnitOfWorkStateError, match="rolled back"):
            await uow.users.list()
    assert user.name == "Ghost"  # still readable
    assert await _count(db) == 0


async def test_connection_is_returned_to_the_pool_in_every_case(
    committing_db: Database[UserUnitOfWork],
) -> None:
    async with committing_db.unit_of_work() as uow:
        assert committing_db.pool_status().checked_out == 1
        await uow.commit()
    with pytest.raises(RuntimeError):
        async with committing_db.unit_of_work():
            raise RuntimeError
    async with committing_db.unit_of_work(read_only=True):
        pass
    assert committing_db.pool_status().checked_out == 0


async def test_savepoint_failure_keeps_the_outer_work(db: Database[UserUnitOfWork]) -> None:
    async with db.unit_of_work() as uow:
        await uow.users.add(User(name="Kept", age=1, email="dup@example.com"))
        with pytest.raises(ConflictError):
            async with uow.savepoint():
                await uow.users.add(User(name="Dropped", age=2, email="dup@example.com"))
        await uow.users.add(User(name="AlsoKept", age=3))
        await uow.commit()
    async with db.unit_of_work(read_only=True) as uow:
        names = [u.name for u in await uow.users.list(order_by="name")]
    assert names == ["AlsoKept", "Kept"]


async def test_savepoint_success_is_part_of_the_transaction(db: Database[UserUnitOfWork]) -> None:
    async with db.unit_of_work() as uow, uow.savepoint():
        await uow.users.add(User(name="Inner", age=1))
    assert await _count(db) == 0  # the outer unit of work never committed


async def test_objects_stay_readable_after_the_unit_of_work(
    db: Database[UserUnitOfWork],
) -> None:
    async with db.unit_of_work() as uow:
        user = await uow.users.add(User(name="Reader", age=5))
        await uow.commit()
    assert (user.id, user.name, user.version) == (user.id, "Reader", 1)
    assert user.updated_at is not None


async def test_read_only_unit_of_work_refuses_to_flush_changes(
    db: Database[UserUnitOfWork],
) -> None:
    async with db.unit_of_work() as uow:
        user = await uow.users.add(User(name="Fixed", age=5))
        await uow.commit()
    async with db.unit_of_work(read_only=True) as uow:
        loaded = await uow.users.get_one(user.id)
        loaded.age = 6
        with pytest.raises(UnitOfWorkStateError, match="read-only"):
            await uow.commit()
    async with db.unit_of_work(read_only=True) as uow:
        assert (await uow.users.get_one(user.id)).age == 5


async def test_read_only_unit_of_work_sees_committed_data(db: Database[UserUnitOfWork]) -> None:
    async with db.unit_of_work() as uow:
        await uow.users.add(User(name="Seen", age=5))
        await uow.commit()
    async with db.unit_of_work(read_only=True) as uow:
        assert await uow.users.count(name="Seen") == 1
        await uow.commit()  # allowed: nothing to write


async def test_session_escape_hatch_runs_in_the_same_transaction(
    db: Database[UserUnitOfWork],
) -> None:
    from sqlalchemy import select

    async with db.unit_of_work() as uow:
        await uow.users.add(User(name="Hatch", age=9))
        names = (await uow.session.scalars(select(User.name))).all()
    assert names == ["Hatch"]
    assert await _count(db) == 0


async def test_run_in_transaction_commits_what_fn_did(db: Database[UserUnitOfWork]) -> None:
    async def create(uow: UserUnitOfWork) -> int:
        user = await uow.users.add(User(name="Tx", age=1))
        return user.id

    user_id = await db.run_in_transaction(create)
    async with db.unit_of_work(read_only=True) as uow:
        assert (await uow.users.get_one(user_id)).name == "Tx"


async def test_run_in_transaction_never_retries_a_conflict(db: Database[UserUnitOfWork]) -> None:
    calls = 0

    async def duplicate(uow: UserUnitOfWork) -> None:
        nonlocal calls
        calls += 1
        await uow.users.add(User(name="A", age=1, email="same@example.com"))
        await uow.users.add(User(name="B", age=1, email="same@example.com"))

    with pytest.raises(ConflictError):
        await db.run_in_transaction(duplicate, attempts=5)
    assert calls == 1


async def test_unit_of_work_timeout_rolls_back_and_raises(
    committing_db: Database[UserUnitOfWork],
) -> None:
    import asyncio

    from asyncdal.errors import QueryTimeoutError

    with pytest.raises(QueryTimeoutError, match=r"timeout of 0\.2 s"):
        async with committing_db.unit_of_work(timeout=0.2) as uow:
            await uow.users.add(User(name="Slow", age=1))
            await asyncio.sleep(5)
            await uow.commit()
    assert await _count(committing_db) == 0
    assert committing_db.pool_status().checked_out == 0


@pytest.mark.parametrize(
    "work",
    [
        "read",
        # SQLite's in-process writer queue hands writers their turn on its own; on PostgreSQL
        # only the yield does (and these commits take the flush-free insert and update).
        pytest.param("write", marks=pytest.mark.only_backend("postgres")),
        pytest.param("update", marks=pytest.mark.only_backend("postgres")),
    ],
)
async def test_pooled_connection_is_handed_to_waiters_in_turn(
    backend: Backend, committing_db: Database[UserUnitOfWork], work: str
) -> None:
    import asyncio

    # Its own one-connection Database commits rows: committing_db empties the tables after.

    db = backend.database(application_name="asyncdal-fairness", pool_size=1, max_overflow=0)
    order: list[int] = []
    async with db.unit_of_work() as uow:
        ids = [(await uow.users.add(User(name=f"w{n}", age=n))).id for n in range(3)]
        await uow.commit()

    async def worker(n: int) -> None:
        for _ in range(5):
            if work == "read":
                async with db.unit_of_work(read_only=True) as uow:
                    await uow.users.count()
            else:
                async with db.unit_of_work() as uow:
                    if work == "write":
                        await uow.users.add(User(name=f"w{n}", age=n))
                    else:
                        (await uow.users.get_one(ids[n])).age += 1
                    await uow.commit()
            order.append(n)

    try:
        await asyncio.gather(*(worker(n) for n in range(3)))
    finally:
        await db.dispose()
    # A task that opens its next unit of work at once must not take the connection back
    # before the tasks already waiting for it: every task gets a turn in each round.
    assert sorted(order[:3]) == [0, 1, 2], order
    assert all(sorted(order[i : i + 3]) == [0, 1, 2] for i in range(0, 15, 3)), order
