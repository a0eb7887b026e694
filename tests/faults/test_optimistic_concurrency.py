"""Optimistic concurrency: ``User.version`` turns a lost update into a ``ConflictError``.

Two units of work that load and change the same user: exactly one commits, the other raises
``ConflictError`` (a ``StaleVersionError``, also a ``RetryableError``), and nothing is lost.
"""

from __future__ import annotations

import asyncio
import logging

from asyncdal import Database
from asyncdal.errors import ConflictError, RetryableError, StaleVersionError
from asyncdal.models import User
from asyncdal.users import UserUnitOfWork

FIGURES = logging.getLogger("tests.faults.figures")  # shown with --log-cli-level=INFO
WRITERS = 20


async def _user(db: Database[UserUnitOfWork], age: int = 0) -> User:
    async with db.unit_of_work() as uow:
        user = await uow.users.add(User(name="shared", age=age))
        await uow.commit()
    return user


async def test_second_writer_of_the_same_version_gets_a_retryable_conflict(
    db: Database[UserUnitOfWork],
) -> None:
    created = await _user(db, age=10)
    async with db.unit_of_work(read_only=True) as uow:
        first = await uow.users.get_one(created.id)
    async with db.unit_of_work(read_only=True) as uow:
        second = await uow.users.get_one(created.id)
    assert first.version == second.version == 1

    async with db.unit_of_work() as uow:
        await uow.users.update(first, age=11)
        await uow.commit()
    outcome: BaseException | None = None
    try:
        async with db.unit_of_work() as uow:
            await uow.users.update(second, age=99)
            await uow.commit()
    except ConflictError as error:
        outcome = error
    assert isinstance(outcome, StaleVersionError), outcome
    assert isinstance(outcome, RetryableError)
    async with db.unit_of_work(read_only=True) as uow:
        final = await uow.users.get_one(created.id)
    assert (final.age, final.version) == (11, 2)  # the first write stands, the second is refused


async def test_concurrent_tracked_changes_never_lose_an_update(
    db: Database[UserUnitOfWork],
) -> None:
    """Concurrent load-change-commit units of work: every commit counts, none is lost."""
    created = await _user(db)
    loaded = asyncio.Barrier(2)

    async def change() -> bool:
        try:
            async with db.unit_of_work() as uow:
                user = await uow.users.get_one(created.id)
                if db.backend == "postgresql":  # SQLite queues writers: they cannot overlap
                    async with asyncio.timeout(10):
                        await loaded.wait()
                user.age += 1
                await uow.commit()
        except ConflictError as error:
            failures.append(error)
            return False
        return True

    failures: list[ConflictError] = []
    committed = await asyncio.gather(change(), change())
    assert all(isinstance(error, RetryableError) for error in failures), failures
    async with db.unit_of_work(read_only=True) as uow:
        final = await uow.users.get_one(created.id)
    assert final.age == sum(committed), (committed, final.age)
    if db.backend == "postgresql":
        assert sorted(committed) == [False, True]  # both read version 1: exactly one wins


async def test_stale_version_is_retried_until_every_increment_lands(
    db: Database[UserUnitOfWork],
) -> None:
    created = await _user(db)
    calls = 0

    async def increment(uow: UserUnitOfWork) -> None:
        nonlocal calls
        calls += 1
        user = await uow.users.get_one(created.id)
        await asyncio.sleep(0.005)  # let the others read the same version
        user.age += 1

    results = await asyncio.gather(
        *(
            db.run_in_transaction(increment, attempts=100, base_delay=0.002, max_delay=0.05)
            for _ in range(WRITERS)
        ),
        return_exceptions=True,
    )
    failures = [r for r in results if isinstance(r, BaseException)]
    async with db.unit_of_work(read_only=True) as uow:
        final = await uow.users.get_one(created.id)
    figures = (
        f"{WRITERS - len(failures)}/{WRITERS} committed, final +{final.age}, "
        f"version {final.version}, {calls - WRITERS} stale versions retried, "
        f"{WRITERS - final.age} lost updates"
    )
    FIGURES.info("optimistic[%s]: %s", db.backend, figures)
    assert failures == [], figures
    assert (final.age, final.version) == (WRITERS, WRITERS + 1), figures
    if db.backend == "postgresql":
        assert calls > WRITERS, figures  # the conflicts really happened and were retried
