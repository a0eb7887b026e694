"""update_where / delete_where: one statement, a row count, loaded objects kept in step."""

from __future__ import annotations

from typing import Any

import pytest

from asyncdal import Database
from asyncdal.errors import InvalidDataError, InvalidQueryError
from asyncdal.models import User
from asyncdal.users import UserUnitOfWork
from tests.support import count_statements


@pytest.fixture
async def people(db: Database[UserUnitOfWork]) -> Database[UserUnitOfWork]:
    async with db.unit_of_work() as uow:
        await uow.users.insert_many({"name": f"u{i}", "age": i} for i in range(10))
        await uow.commit()
    return db


async def test_update_where_changes_matching_rows_in_one_statement(
    people: Database[UserUnitOfWork],
) -> None:
    async with people.unit_of_work() as uow:
        with count_statements(people.engine) as sent:
            n = await uow.users.update_where(User.age < 4, name="young")
        assert n == 4
        assert len([s for s in sent if s.lstrip().upper().startswith("UPDATE")]) == 1
        await uow.commit()
    async with people.unit_of_work(read_only=True) as uow:
        assert await uow.users.count(name="young") == 4
        assert {u.version for u in await uow.users.list(name="young")} == {2}
        assert {u.version for u in await uow.users.list(User.age >= 4)} == {1}


async def test_update_where_moves_version_and_updated_at_of_loaded_objects(
    people: Database[UserUnitOfWork],
) -> None:
    async with people.unit_of_work() as uow:
        loaded = (await uow.users.list(age=2))[0]
        untouched = (await uow.users.list(age=8))[0]
        before = loaded.updated_at
        await uow.users.update_where(User.age < 4, name="young")
        # Not expired: readable without IO, and the new values.
        assert (loaded.name, loaded.version) == ("young", 2)
        assert loaded.updated_at > before.replace(tzinfo=loaded.updated_at.tzinfo)
        assert (untouched.name, untouched.version) == ("u8", 1)
        # The version the object holds is the row's: the next flush is not a stale write.
        loaded.age = 3
        await uow.commit()
    async with people.unit_of_work(read_only=True) as uow:
        stored = await uow.users.get_one(loaded.id)
    assert (stored.name, stored.age, stored.version) == ("young", 3, 3)


async def test_update_where_refuses_no_filter_unless_all_rows(
    people: Database[UserUnitOfWork],
) -> None:
    async with people.unit_of_work() as uow:
        with count_statements(people.engine) as sent, pytest.raises(InvalidQueryError):
            await uow.users.update_where(age=1)
        assert sent == []
        assert await uow.users.update_where(age=1, all_rows=True) == 10


@pytest.mark.parametrize(
    ("values", "error"),
    [
        ({}, InvalidQueryError),
        ({"colour": "red"}, InvalidQueryError),
        ({"version": 9}, InvalidQueryError),
        ({"age": 151}, InvalidDataError),
        ({"name": "x\x00"}, InvalidDataError),
    ],
)
async def test_update_where_checks_values_before_any_sql(
    people: Database[UserUnitOfWork], values: dict[str, Any], error: type[Exception]
) -> None:
    async with people.unit_of_work() as uow:
        with count_statements(people.engine) as sent, pytest.raises(error):
            await uow.users.update_where(User.age > 1, **values)
        assert sent == []


async def test_delete_where_deletes_matching_rows_and_returns_the_count(
    people: Database[UserUnitOfWork],
) -> None:
    async with people.unit_of_work() as uow:
        gone = (await uow.users.list(age=7))[0]
        assert await uow.users.delete_where(User.age >= 7) == 3
        assert await uow.users.delete_where(name="u0") == 1
        assert await uow.users.delete_where(name="nobody") == 0
        assert gone not in uow.session
        await uow.commit()
    async with people.unit_of_work(read_only=True) as uow:
        assert await uow.users.count() == 6


async def test_delete_where_refuses_no_filter_unless_all_rows(
    people: Database[UserUnitOfWork],
) -> None:
    async with people.unit_of_work() as uow:
        with count_statements(people.engine) as sent, pytest.raises(InvalidQueryError):
            await uow.users.delete_where()
        with pytest.raises(InvalidQueryError):
            await uow.users.delete_where(nope=1)
        assert sent == []
        assert await uow.users.delete_where(all_rows=True) == 10
