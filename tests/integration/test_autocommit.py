"""Autocommit through the engine (the escape hatch) may write on a PostgreSQL primary, while
asyncdal's own read-only units of work there stay read-only on the server.

Primary connections default to ``default_transaction_read_only=on`` so that read-only units of
work need no BEGIN; that default must not leak to the engine's other autocommit users:
``CREATE INDEX CONCURRENTLY``, ``VACUUM`` or a revision's ``autocommit_block()``.
"""

from __future__ import annotations

import pytest
from sqlalchemy import text

from asyncdal.errors import DataAccessError
from tests.support import Backend

pytestmark = pytest.mark.only_backend("postgres")


async def test_engine_level_autocommit_may_write(backend: Backend) -> None:
    async with backend.database(pool_size=1, max_overflow=0) as db:
        engine = db.engine.execution_options(isolation_level="AUTOCOMMIT")
        async with engine.connect() as connection:
            await connection.execute(text("CREATE TABLE autocommit_probe_a (x int)"))
            await connection.execute(text("DROP TABLE autocommit_probe_a"))


async def test_connection_level_autocommit_may_write_and_the_pool_stays_read_only(
    backend: Backend,
) -> None:
    async with backend.database(pool_size=1, max_overflow=0) as db:
        async with db.engine.connect() as connection:
            writable = await connection.execution_options(isolation_level="AUTOCOMMIT")
            await writable.execute(text("CREATE TABLE autocommit_probe_b (x int)"))
            await writable.execute(text("DROP TABLE autocommit_probe_b"))
        # The pool's one connection was made writable: after its return, read-only units of
        # work must still be refused writes by the server.
        with pytest.raises(DataAccessError, match="read-only transaction"):
            async with db.unit_of_work(read_only=True) as uow:
                await uow.execute(
                    "raw write",
                    lambda session: session.execute(text("CREATE TEMP TABLE probe (x int)")),
                )
        async with db.unit_of_work(read_only=True) as uow:
            shown = await uow.execute(
                "show", lambda session: session.execute(text("SHOW transaction_read_only"))
            )
            assert shown.scalar_one() == "on"
