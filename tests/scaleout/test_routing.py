"""Where units of work run: reads round robin on healthy replicas, everything else on the primary,
and read-only enforced by the server on every node."""

from __future__ import annotations

import asyncio
import collections
import sys

import pytest
from sqlalchemy import text

from asyncdal.errors import DataAccessError
from asyncdal.models import User
from asyncdal.users import UserUnitOfWork
from tests._figures import Figure
from tests.scaleout._helpers import Servers, port_of
from tests.scaleout.conftest import MakeDb

pytestmark = pytest.mark.postgres

INSERT = (
    "INSERT INTO users (name, age, created_at, updated_at, version) "
    "VALUES ('w', 1, now(), now(), 1)"
)


async def test_reads_go_round_robin_to_the_replicas_and_none_to_the_primary(
    make_db: MakeDb, clean: Servers, figure: Figure
) -> None:
    db = await make_db()
    ports: collections.Counter[int] = collections.Counter()

    async def reader() -> None:
        for _ in range(50):
            async with db.unit_of_work(read_only=True) as uow:
                ports[await port_of(uow)] += 1

    await asyncio.gather(*(reader() for _ in range(20)))
    assert sum(ports.values()) == 1000
    assert ports[clean.primary_port] == 0
    shares = [ports[port] / 1000 for port in clean.replica_ports]
    for share in shares:
        assert 0.45 <= share <= 0.55, f"uneven: {dict(ports)}"
    statuses = db.pool_statuses()
    assert list(statuses) == ["primary", "replica1", "replica2"]
    assert statuses["replica1"].size == statuses["replica2"].size == 10
    figure(
        "1000 read-only units of work (20 tasks x 50): primary 0, "
        + ", ".join(f"replica{i} {share:.1%}" for i, share in enumerate(shares, 1))
    )


async def test_writes_retried_transactions_and_forced_reads_run_on_the_primary(
    make_db: MakeDb, clean: Servers
) -> None:
    db = await make_db()
    async with db.unit_of_work() as uow:
        assert await port_of(uow) == clean.primary_port
        await uow.users.add(User(name="on the primary", age=1))
        await uow.commit()

    async def where(uow: UserUnitOfWork) -> int:
        return await port_of(uow)

    assert await db.run_in_transaction(where) == clean.primary_port
    assert await db.run_in_transaction(where, read_only=True) in clean.replica_ports
    async with db.unit_of_work(read_only=True, on="primary") as uow:
        assert await port_of(uow) == clean.primary_port
    async with db.unit_of_work(read_only=True, isolation_level="REPEATABLE READ") as uow:
        assert await port_of(uow) in clean.replica_ports


async def test_pin_primary_holds_for_its_own_task_only(make_db: MakeDb, clean: Servers) -> None:
    db = await make_db()
    inside = asyncio.Event()
    done = asyncio.Event()

    async def pinned_request() -> list[int]:
        with db.pin_primary():
            seen = []
            for _ in range(4):
                async with db.unit_of_work(read_only=True) as uow:
                    seen.append(await port_of(uow))
            inside.set()
            await done.wait()
        return seen

    async def other_request() -> list[int]:
        await inside.wait()  # while the other request is pinned
        seen = []
        for _ in range(4):
            async with db.unit_of_work(read_only=True) as uow:
                seen.append(await port_of(uow))
        done.set()
        return seen

    pinned, other = await asyncio.gather(pinned_request(), other_request())
    assert pinned == [clean.primary_port] * 4
    assert set(other) <= set(clean.replica_ports)
    async with db.unit_of_work(read_only=True) as uow:  # the pin ended with its block
        assert await port_of(uow) in clean.replica_ports


@pytest.mark.parametrize("where", ["replica", "primary", "primary through pgbouncer"])
async def test_the_server_refuses_a_write_in_a_read_only_unit_of_work(
    make_db: MakeDb, clean: Servers, where: str
) -> None:
    if where == "primary through pgbouncer":
        db = await make_db(url=clean.pgbouncer_url, pgbouncer=True, replica_urls=())
    else:
        db = await make_db()
    with pytest.raises(DataAccessError, match="read-only transaction"):
        async with db.unit_of_work(
            read_only=True, on="primary" if where != "replica" else None
        ) as uow:
            # The escape hatch sends SQL past asyncdal's flush check: only the server stops it.
            await uow.execute("raw insert", lambda session: session.execute(text(INSERT)))
    async with db.unit_of_work(on="primary") as uow:
        assert await uow.users.count() == 0
        assert (await uow.session.execute(text("SHOW transaction_read_only"))).scalar_one() == "off"


MONITOR = "asyncdal replica monitor"
CHILD = """
import asyncio, sys, warnings
warnings.simplefilter("error")
from asyncdal import Database, DatabaseSettings
from sqlalchemy import text

async def main() -> None:
    settings = DatabaseSettings(sys.argv[1], replica_urls=tuple(sys.argv[2:]),
                                replica_check_interval=0.05)
    db = Database(settings)
    for _ in range(10):
        async with db.unit_of_work(read_only=True) as uow:
            await uow.session.execute(text("SELECT 1"))
    await asyncio.sleep(0.2)  # a few health checks
    await db.dispose()

asyncio.run(main())
"""


def _monitors() -> list[asyncio.Task[object]]:
    return [task for task in asyncio.all_tasks() if task.get_name() == MONITOR]


async def test_dispose_stops_the_health_check_and_a_process_exits_cleanly(
    make_db: MakeDb, clean: Servers
) -> None:
    db = await make_db()
    assert _monitors() == []  # nothing runs before the first routed read
    async with db.unit_of_work(read_only=True) as uow:
        await port_of(uow)
    running = _monitors()
    assert len(running) == 1
    await db.dispose()
    assert running[0].done()
    assert _monitors() == []
    assert all(status.checked_in == 0 for status in db.pool_statuses().values())
    async with db.unit_of_work(read_only=True) as uow:  # usable again: the check restarts
        assert await port_of(uow) in clean.replica_ports
    assert len(_monitors()) == 1
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-X", "dev", "-c", CHILD, clean.primary_url, *clean.replica_urls,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(child.communicate(), timeout=30)
    assert (child.returncode, err.decode(errors="replace")) == (0, "")
