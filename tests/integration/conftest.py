"""Integration tests run on the plugin's fixtures (asyncdal.testing), on both backends.

``db`` is ``asyncdal_db``: every test's units of work run in one transaction that is rolled back
afterwards. Tests that need several connections at once (concurrent units of work, timeouts,
hooks that open units of work while another is open) take ``committing_db``, the plugin's
``asyncdal_committing_db``. Both request ``backend``, so each test runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import pytest

from asyncdal import Database
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
