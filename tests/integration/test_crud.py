"""Create, read, update and delete through a unit of work, on both backends."""

from __future__ import annotations

import pytest

from asyncdal import Database
from asyncdal.errors import NotFoundError
from asyncdal.models import Post, User
from asyncdal.users import UserUnitOfWork


async def test_add_flushes_so_the_id_is_set(db: Database[UserUnitOfWork]) -> None:
    async with db.unit_of_work() as uow:
        user = await uow.users.add(User(name="John Doe", age=30))
        assert user.id is not None
        assert user.version == 1
        await uow.commit()


async def test_committed_user_is_read_back_in_a_new_unit_of_work(
    db: Database[UserUnitOfWork],
) -> None:
    async with db.unit_of_work() as uow:
        user = await uow.users.add(User(name="John Doe", age=30, email="john@example.com"))
        await uow.commit()
    async with db.unit_of_work(read_only=True) as uow:
        found = await uow.users.get_one(user.id)
    assert (found.name, found.age, found.email) == ("John Doe", 30, "john@example.com")
    assert found.created_at is not None


async def test_changed_attribute_is_tracked_and_committed(db: Database[UserUnitOfWork]) -> None:
    async with db.unit_of_work() as uow:
        user = await uow.users.add(User(name="John Doe", age=30))
        await uow.commit()
    async with db.unit_of_work() as uow:
        loaded = await uow.users.get_one(user.id)
        loaded.age = 31
        await uow.commit()
    async with db.unit_of_work(read_only=True) as uow:
        again = await uow.users.get_one(user.id)
    assert again.age == 31
    assert again.version == 2


async def test_update_sets_values_and_flushes(db: Database[UserUnitOfWork]) -> None:
    async with db.unit_of_work() as uow:
        user = await uow.users.add(User(name="Ann", age=20))
        await uow.users.update(user, name="Anne", age=21)
        await uow.commit()
    async with db.unit_of_work(read_only=True) as uow:
        assert (await uow.users.get_one(user.id)).name == "Anne"


async def test_update_of_an_object_from_an_earlier_unit_of_work(
    db: Database[UserUnitOfWork],
) -> None:
    async with db.unit_of_work() as uow:
        user = await uow.users.add(User(name="Ann", age=20))
        await uow.commit()
    async with db.unit_of_work() as uow:
        await uow.users.update(user, age=22)
        await uow.commit()
    async with db.unit_of_work(read_only=True) as uow:
        assert (await uow.users.get_one(user.id)).age == 22


async def test_delete_removes_the_row_and_its_posts(db: Database[UserUnitOfWork]) -> None:
    async with db.unit_of_work() as uow:
        user = await uow.users.add(User(name="Ann", age=20))
        await uow.posts.add(Post(author_id=user.id, title="hello"))
        await uow.commit()
    async with db.unit_of_work() as uow:
        await uow.users.delete(user)
        await uow.commit()
    async with db.unit_of_work(read_only=True) as uow:
        assert await uow.users.get(user.id) is None
        assert await uow.posts.count() == 0


async def test_get_returns_none_and_get_one_raises_for_a_missing_id(
    db: Database[UserUnitOfWork],
) -> None:
    async with db.unit_of_work(read_only=True) as uow:
        assert await uow.users.get(424242) is None
        with pytest.raises(NotFoundError, match="User with id 424242 not found"):
            await uow.users.get_one(424242)


async def test_add_many_inserts_all_in_order(db: Database[UserUnitOfWork]) -> None:
    async with db.unit_of_work() as uow:
        users = await uow.users.add_many(User(name=f"u{i}", age=i) for i in range(50))
        await uow.commit()
    assert [u.id for u in users] == sorted(u.id for u in users)
    async with db.unit_of_work(read_only=True) as uow:
        assert await uow.users.count() == 50


async def test_generic_repository_for_any_mapped_class(db: Database[UserUnitOfWork]) -> None:
    async with db.unit_of_work() as uow:
        user = await uow.repository(User).add(User(name="Gen", age=1))
        post = await uow.repository(Post).add(Post(author_id=user.id, title="t"))
        assert uow.repository(User) is uow.repository(User)
        await uow.commit()
    assert post.id is not None


async def test_get_twice_in_one_unit_of_work_returns_the_same_object(
    db: Database[UserUnitOfWork],
) -> None:
    async with db.unit_of_work() as uow:
        user = await uow.users.add(User(name="Same", age=1))
        await uow.commit()
    async with db.unit_of_work() as uow:
        first = await uow.users.get_one(user.id)
        first.age = 2
        again = await uow.users.get_one(user.id)
        assert again is first
        assert again.age == 2
        await uow.users.delete(first)
        assert await uow.users.get(user.id) is None
