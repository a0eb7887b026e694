"""Event-loop scopes: each fixture follows the test's loop, and what needs the session's loop
says so at once, naming the setting, instead of failing with "attached to a different loop"."""

from __future__ import annotations

import textwrap

import pytest

from tests.plugin._child import project

NARROW_LOOP_TESTS = """
import pytest

from asyncdal.models import User
from asyncdal.users import UserUnitOfWork


@pytest.fixture(scope="session")
def asyncdal_unit_of_work():
    return UserUnitOfWork


async def test_session_database_on_a_function_loop(asyncdal_database):
    async with asyncdal_database.unit_of_work(read_only=True) as uow:
        await uow.users.count()


@pytest.fixture
async def seeded(asyncdal_db):  # a fixture on the session loop (the ini), its test on its own
    async with asyncdal_db.unit_of_work() as uow:
        await uow.users.add(User(name="seed", age=1))
        await uow.commit()


async def test_fixture_on_another_loop_than_its_test(seeded):
    pass
"""

SESSION_LOOP_TESTS = """
import pytest

from asyncdal.models import User
from asyncdal.users import UserUnitOfWork


@pytest.fixture(scope="session")
def asyncdal_unit_of_work():
    return UserUnitOfWork


@pytest.fixture(scope="session")
async def seed(asyncdal_database):  # committed once for the session
    async with asyncdal_database.unit_of_work() as uow:
        await uow.users.add(User(name="seed", age=1))
        await uow.commit()


@pytest.mark.parametrize("n", [1, 2])
async def test_each_test_sees_the_seed_and_only_its_own_rows(seed, asyncdal_db, n):
    async with asyncdal_db.unit_of_work() as uow:
        await uow.users.add(User(name=f"n{n}", age=n))
        await uow.commit()
    async with asyncdal_db.unit_of_work(read_only=True) as uow:
        assert sorted(u.name for u in await uow.users.list()) == ["n" + str(n), "seed"]


async def test_the_session_database_is_the_same_database(seed, asyncdal_database):
    async with asyncdal_database.unit_of_work(read_only=True) as uow:
        assert [u.name for u in await uow.users.list()] == ["seed"]
"""


def test_narrower_loops_are_told_the_setting_instead_of_another_loop_error(
    pytester: pytest.Pytester, child_backend: str
) -> None:
    project(pytester, loop_scope="function", files={"test_narrow": NARROW_LOOP_TESTS})
    pytester.makeini(
        textwrap.dedent(
            """\
            [pytest]
            asyncio_mode = auto
            asyncio_default_fixture_loop_scope = session
            asyncio_default_test_loop_scope = function
            filterwarnings = error
            """
        )
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(errors=2)
    output = result.stdout.str()
    assert "attached to a different loop" not in output
    result.stdout.fnmatch_lines(
        [
            "*ERROR at setup of test_session_database_on_a_function_loop*",
            "*asyncdal_database is bound to the session's event loop, but this test runs on a \""
            'function" loop: set asyncio_default_test_loop_scope = "session"*',
        ]
    )
    result.stdout.fnmatch_lines(
        ["*UnitOfWorkStateError: *asyncdal_db was set up on another event loop*"]
    )


def test_session_loops_share_the_session_database_and_its_seed(
    pytester: pytest.Pytester, child_backend: str
) -> None:
    project(pytester, loop_scope="session", files={"test_session": SESSION_LOOP_TESTS})
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)
