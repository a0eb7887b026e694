"""Atomic upsert: one INSERT ... ON CONFLICT ... DO UPDATE ... RETURNING, on both backends."""

from __future__ import annotations

import asyncio

import pytest

from asyncdal import Database
from asyncdal.errors import InvalidDataError, InvalidQueryError
from asyncdal.models import User
from asyncdal.users import UserUnitOfWork
from tests.support import count_statements

ANN = {"email": "ann@example.com", "name": "Ann", "age": 30}


async def test_upsert_inserts_a_new_row_and_returns_it_tracked(
    db: Database[UserUnitOfWork],
) -> None:
    async with db.unit_of_work() as uow:
        user = await uow.users.upsert(ANN, on=("email",))
        assert user.id is not None
        assert user in uow.session
        assert (user.version, user.name) == (1, "Ann")
        assert user.created_at is not None
        await uow.commit()
    async with db.unit_of_work(read_only=True) as uow:
        assert await uow.users.count() == 1


async def test_upsert_on_conflict_updates_and_moves_version_and_updated_at(
    db: Database[UserUnitOfWork],
) -> None:
    async with db.unit_of_work() as uow:
        first = await uow.users.upsert(ANN, on=("email",))
        await uow.commit()
    async with db.unit_of_work() as uow:
        again = await uow.users.upsert({**ANN, "name": "Annie", "age": 31}, on=("email",))
        await uow.commit()
    assert again.id == first.id
    assert (again.name, again.age, again.version) == ("Annie", 31, 2)
    assert again.updated_at > first.updated_at
    async with db.unit_of_work(read_only=True) as uow:
        stored = await uow.users.get_one(first.id)
        assert (stored.name, stored.version, await uow.users.count()) == ("Annie", 2, 1)


async def test_upsert_updates_only_the_named_columns(db: Database[UserUnitOfWork]) -> None:
    async with db.unit_of_work() as uow:
        await uow.users.upsert(ANN, on=("email",))
        user = await uow.users.upsert(
            {**ANN, "name": "Other", "age": 40}, on=("email",), update=("age",)
        )
        assert (user.name, user.age) == ("Ann", 40)


async def test_upsert_refreshes_the_object_already_in_the_unit_of_work(
    db: Database[UserUnitOfWork],
) -> None:
    async with db.unit_of_work() as uow:
        loaded = await uow.users.add(User(**ANN))
        returned = await uow.users.upsert({**ANN, "age": 44}, on=("email",))
        assert returned is loaded
        assert (loaded.age, loaded.version) == (44, 2)
        # The refreshed version is what the next flush checks: no StaleVersionError.
        loaded.name = "Ann B."
        await uow.commit()
    async with db.unit_of_work(read_only=True) as uow:
        stored = await uow.users.get_one(loaded.id)
        assert (stored.name, stored.age, stored.version) == ("Ann B.", 44, 3)


async def test_upsert_takes_a_new_object_and_leaves_it_untouched(
    db: Database[UserUnitOfWork],
) -> None:
    given = User(**ANN)
    async with db.unit_of_work() as uow:
        stored = await uow.users.upsert(given, on=("email",))
        assert stored is not given
        assert given not in uow.session
        assert given.id is None
        assert stored.email == ANN["email"]


@pytest.mark.parametrize(
    "on",
    [("name",), ("email", "name"), ("age",), ("nope",), ()],
)
async def test_upsert_refuses_columns_that_are_no_unique_constraint_before_any_sql(
    db: Database[UserUnitOfWork], on: tuple[str, ...]
) -> None:
    async with db.unit_of_work() as uow:
        with count_statements(db.engine) as sent, pytest.raises(InvalidQueryError) as error:
            await uow.users.upsert(ANN, on=on)
        assert sent == []
    assert "on=" in str(error.value) or "unknown" in str(error.value)


async def test_upsert_accepts_the_primary_key_as_conflict_target(
    db: Database[UserUnitOfWork],
) -> None:
    async with db.unit_of_work() as uow:
        user = await uow.users.add(User(name="Bob", age=20))
        same = await uow.users.upsert({"id": user.id, "name": "Bobby", "age": 21}, on=("id",))
        assert same is user
        assert (user.name, user.version) == ("Bobby", 2)


@pytest.mark.parametrize(
    ("values", "error"),
    [
        ({**ANN, "colour": "red"}, InvalidQueryError),
        ({**ANN, "version": 7}, InvalidQueryError),
        ({**ANN, "age": 200}, InvalidDataError),
        ({**ANN, "name": "x" * 101}, InvalidDataError),
        ({**ANN, "email": "a\x00b"}, InvalidDataError),
        ({"name": "Ann", "age": 3}, InvalidQueryError),  # no value for the conflict column
    ],
)
async def test_upsert_checks_values_as_an_insert_would_before_any_sql(
    db: Database[UserUnitOfWork], values: dict[str, object], error: type[Exception]
) -> None:
    async with db.unit_of_work() as uow:
        with count_statements(db.engine) as sent, pytest.raises(error):
            await uow.users.upsert(values, on=("email",))
        assert sent == []


@pytest.mark.parametrize(
    ("update", "message"),
    [(("created_at",), "no value"), (("posts",), "unknown"), (("email",), "cannot be")],
)
async def test_upsert_refuses_update_columns_it_cannot_set(
    db: Database[UserUnitOfWork], update: tuple[str, ...], message: str
) -> None:
    row = {"email": "x@example.com", "name": "X", "age": 1}
    async with db.unit_of_work() as uow:
        with pytest.raises(InvalidQueryError, match=message):
            await uow.users.upsert(row, on=("email",), update=update)


async def test_upsert_refuses_a_row_with_nothing_to_update(
    db: Database[UserUnitOfWork],
) -> None:
    async with db.unit_of_work() as uow:
        with pytest.raises(InvalidQueryError, match="nothing to update"):
            await uow.users.upsert({"email": "x@example.com"}, on=("email",))


async def test_64_concurrent_upserts_of_one_key_end_with_one_row_and_no_errors(
    committing_db: Database[UserUnitOfWork],
) -> None:
    async def upsert(age: int) -> User:
        async with committing_db.unit_of_work() as uow:
            user = await uow.users.upsert({**ANN, "age": age}, on=("email",))
            await uow.commit()
            return user

    results = await asyncio.gather(*(upsert(age) for age in range(64)), return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    assert errors == []
    async with committing_db.unit_of_work(read_only=True) as uow:
        rows = await uow.users.list()
    assert len(rows) == 1
    # Every upsert after the first was an update: the version counted all of them.
    assert rows[0].version == 64
    assert {r.id for r in results if isinstance(r, User)} == {rows[0].id}
