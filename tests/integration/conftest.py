"""Integration tests run on the plugin's fixtures (asyncdal.testing), on both backends.

``db`` is ``asyncdal_db``: every test's units of work run in one transaction that is rolled back
afterwards. Tests that need several connections at once (concurrent units of work, timeouts,
hooks that open units of work while another is open) take ``committing_db``, the plugin's
``asyncdal_committing_db``. Both request ``backend``, so each test runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

from typing import Any

import pytest

from asyncdal import Database, _fastpath
from asyncdal.users import UserUnitOfWork
from tests.support import Backend


@pytest.fixture
def db(backend: Backend, asyncdal_db: Database[UserUnitOfWork]) -> Database[UserUnitOfWork]:
    """The plugin's ``asyncdal_db`` on ``backend``: isolated by a rolled-back transaction."""
    return asyncdal_db


@pytest.fixture
def committing_db(
    backend: Backend, asyncdal_committing_db: Database[UserUnitOfWork]
) -> Database[UserUnitOfWork]:
    """The plugin's ``asyncdal_committing_db`` on ``backend``: real commits, emptied after."""
    return asyncdal_committing_db


@pytest.fixture
def taken(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """How many INSERTs and UPDATE runs the fast paths sent (so that a comparison with the
    flush is not between two flushes)."""
    counts = {"insert": 0, "update": 0}
    insert, update = _fastpath._insert, _fastpath._update

    def counted_insert(*args: Any) -> None:
        counts["insert"] += 1
        insert(*args)

    def counted_update(*args: Any) -> None:
        counts["update"] += 1
        update(*args)

    monkeypatch.setattr(_fastpath, "_insert", counted_insert)
    monkeypatch.setattr(_fastpath, "_update", counted_update)
    return counts
