"""Read your own writes: ``commit_token`` and ``unit_of_work(read_only=True, after=token)``."""

from __future__ import annotations

import asyncio
import time

import pytest

from asyncdal import Database
from asyncdal._pgconnection import PRIMARY_TOKEN
from asyncdal.errors import InvalidQueryError
from asyncdal.models import User
from asyncdal.routing import parse_position
from asyncdal.users import UserUnitOfWork
from tests._figures import Figure
from tests.scaleout._helpers import Servers, port_of, replay_paused, scalar
from tests.scaleout.conftest import MakeDb

pytestmark = pytest.mark.postgres


async def _add(db: Database[UserUnitOfWork], name: str) -> tuple[int, str]:
    async with db.unit_of_work() as uow:
        user = await uow.users.add(User(name=name, age=30))
        await uow.commit()
    token = uow.commit_token
    assert token is not None
    return user.id, token


async def test_after_a_token_reads_see_the_commit_even_while_replay_is_paused(
    make_db: MakeDb, clean: Servers, figure: Figure
) -> None:
    db = await make_db(read_your_writes_timeout=0.05)
    user_id, _ = await _add(db, "old name")
    await _wait_for_row(db, user_id)
    async with replay_paused(clean.topology.replicas[0].dsn()):
        async with db.unit_of_work() as uow:
            user = await uow.users.get_one(user_id)
            user.name = "new name"
            await uow.commit()
        token = uow.commit_token
        assert token is not None
        assert parse_position(token) <= parse_position(
            str(await scalar(clean.primary_dsn, "SELECT pg_current_wal_lsn()::text"))
        )
        fresh = stale = 0
        where: set[int] = set()
        for _ in range(100):
            async with db.unit_of_work(read_only=True, after=token) as uow:
                where.add(await port_of(uow))
                fresh += (await uow.users.get_one(user_id)).name == "new name"
        for _ in range(100):
            async with db.unit_of_work(read_only=True) as uow:
                stale += (await uow.users.get_one(user_id)).name == "old name"
    assert fresh == 100
    assert stale > 0, "reads without a token never hit the paused replica: the test saw nothing"
    assert clean.topology.replicas[0].port not in where
    figure(
        f"replica1 replay paused: 100/100 reads with after=token saw the new row "
        f"(on ports {sorted(where)}, never the paused replica); without a token "
        f"{stale}/100 saw the stale row"
    )


async def test_a_token_waits_for_a_lagging_replica_then_falls_back_to_the_primary(
    make_db: MakeDb, clean: Servers
) -> None:
    db = await make_db(read_your_writes_timeout=0.3)
    user_id, _ = await _add(db, "before")
    await _wait_for_row(db, user_id)
    paused = [replica.dsn() for replica in clean.topology.replicas]
    async with replay_paused(paused[0]), replay_paused(paused[1]):
        _, token = await _add(db, "while both replicas are paused")
        started = time.monotonic()
        async with db.unit_of_work(read_only=True, after=token) as uow:
            assert await port_of(uow) == clean.primary_port
            assert await uow.users.count() == 2
        waited = time.monotonic() - started
    assert 0.3 <= waited < 1.0, f"waited {waited:.2f} s for read_your_writes_timeout=0.3"


async def test_without_replicas_the_token_exists_and_after_is_a_no_op(
    make_db: MakeDb, clean: Servers
) -> None:
    db = await make_db(replica_urls=())
    user_id, token = await _add(db, "solo")
    assert isinstance(token, str)
    assert parse_position(token) >= 0
    async with db.unit_of_work(read_only=True, after=token) as uow:
        assert await port_of(uow) == clean.primary_port
        assert (await uow.users.get_one(user_id)).name == "solo"
    with pytest.raises(InvalidQueryError, match="commit_token"):
        db.unit_of_work(read_only=True, after="not a token")


async def test_a_token_is_taken_only_after_commit(make_db: MakeDb) -> None:
    db = await make_db()
    async with db.unit_of_work() as uow:
        await uow.users.add(User(name="never committed", age=1))
        assert uow.commit_token is None
    assert uow.commit_token is None
    _, first = await _add(db, "one")
    _, second = await _add(db, "two")
    assert parse_position(second) > parse_position(first) > 0


async def _wait_for_row(db: Database[UserUnitOfWork], user_id: int) -> None:
    """Until the row is on both replicas (two reads in a row go to one replica each)."""
    for _ in range(200):
        seen = 0
        for _ in range(2):
            async with db.unit_of_work(read_only=True) as uow:
                seen += await uow.users.get(user_id) is not None
        if seen == 2:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the row never reached the replicas")


async def test_an_unknown_commit_position_sends_reads_after_it_straight_to_the_primary(
    make_db: MakeDb, clean: Servers
) -> None:
    # What commit_token is when the position could not be read after a COMMIT that succeeded.
    db = await make_db(read_your_writes_timeout=5)
    started = time.monotonic()
    async with db.unit_of_work(read_only=True, after=PRIMARY_TOKEN) as uow:
        assert await port_of(uow) == clean.primary_port
    assert time.monotonic() - started < 1.0  # no waiting for a replica that cannot have it
