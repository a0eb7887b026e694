"""Server-side timeouts on PostgreSQL: typed errors, usable connections, freed locks.

``statement_timeout``: a runaway query raises ``QueryTimeoutError`` and the connection stays in
the pool, usable. ``lock_timeout``: a lock wait raises a ``RetryableError``. The
``idle_in_transaction_timeout``: an abandoned transaction is cut off and its locks freed.
"""

from __future__ import annotations

import asyncio

import pytest

from asyncdal import Database
from asyncdal.errors import DataAccessError, QueryTimeoutError, RetryableError
from asyncdal.models import User
from asyncdal.users import UserUnitOfWork
from tests.faults._helpers_core import eventually, no_transaction_left_open, sql
from tests.support import Backend


@pytest.fixture
async def user_id(backend: Backend, db: Database[UserUnitOfWork]) -> int:
    """A committed user to lock and update (PostgreSQL only)."""
    async with db.unit_of_work() as uow:
        user = await uow.users.add(User(name="locked", age=1))
        await uow.commit()
    return user.id


@pytest.mark.only_backend("postgres")
async def test_runaway_query_times_out_and_the_connection_stays_usable(
    backend: Backend, user_id: int
) -> None:
    mine = backend.database(
        application_name="asyncdal-faults-timeout-stmt",
        statement_timeout=0.2,
        pool_size=1,
        max_overflow=0,
    )
    try:
        async with mine.unit_of_work() as uow:
            pid = (await sql(uow, "SELECT pg_backend_pid()")).scalar_one()
        with pytest.raises(QueryTimeoutError):
            async with mine.unit_of_work() as uow:
                await sql(uow, "SELECT pg_sleep(30)")
        async with mine.unit_of_work() as uow:  # the same connection, still good
            assert (await sql(uow, "SELECT pg_backend_pid()")).scalar_one() == pid
            await uow.users.update(await uow.users.get_one(user_id), age=2)
            await uow.commit()
    finally:
        await mine.dispose()


@pytest.mark.only_backend("postgres")
async def test_lock_wait_raises_a_retryable_error_and_retrying_succeeds(
    backend: Backend, db: Database[UserUnitOfWork], user_id: int
) -> None:
    mine = backend.database(application_name="asyncdal-faults-timeout-lock", lock_timeout=0.2)
    try:
        async with db.unit_of_work() as holder:
            await sql(holder, "SELECT id FROM users WHERE id = :id FOR UPDATE", id=user_id)
            with pytest.raises(RetryableError):
                async with mine.unit_of_work() as uow:
                    await sql(uow, "UPDATE users SET age = 3 WHERE id = :id", id=user_id)
            calls = 0

            async def bump(uow: UserUnitOfWork) -> None:
                nonlocal calls
                calls += 1
                if calls == 2:  # the holder lets go while the first attempt waits
                    await holder.rollback()
                await sql(uow, "UPDATE users SET age = 4 WHERE id = :id", id=user_id)

            await mine.run_in_transaction(bump, attempts=5)
        assert calls == 2
        async with db.unit_of_work(read_only=True) as uow:
            assert (await uow.users.get_one(user_id)).age == 4
    finally:
        await mine.dispose()


@pytest.mark.only_backend("postgres")
async def test_abandoned_transaction_is_cut_off_and_its_locks_freed(
    backend: Backend, db: Database[UserUnitOfWork], user_id: int
) -> None:
    mine = backend.database(
        application_name="asyncdal-faults-timeout-idle", idle_in_transaction_timeout=0.3
    )
    other = backend.database(application_name="asyncdal-faults-timeout-other", lock_timeout=5)
    try:
        with pytest.raises(DataAccessError):
            async with mine.unit_of_work() as abandoned:
                await sql(abandoned, "UPDATE users SET age = 99 WHERE id = :id", id=user_id)
                # Another writer waits on the row lock until the server cuts the idle one off.
                async with other.unit_of_work() as uow:
                    await sql(uow, "UPDATE users SET age = 5 WHERE id = :id", id=user_id)
                    await uow.commit()
                await sql(abandoned, "SELECT 1")  # the abandoned transaction is gone
        assert await eventually(lambda: no_transaction_left_open(mine), within=2)
        async with db.unit_of_work(read_only=True) as uow:
            assert (await uow.users.get_one(user_id)).age == 5  # none of the abandoned work
        async with mine.unit_of_work() as uow:  # the pool replaced the cut-off connection
            await sql(uow, "SELECT 1")
    finally:
        await asyncio.gather(mine.dispose(), other.dispose())
