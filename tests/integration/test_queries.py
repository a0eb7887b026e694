"""Filtering, ordering, paging, counting and relationship loading, on both backends."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import selectinload

from asyncdal import Database
from asyncdal.models import Post, User
from asyncdal.users import UserUnitOfWork
from tests.support import count_statements


@pytest.fixture
async def people(db: Database[UserUnitOfWork]) -> Database[UserUnitOfWork]:
    async with db.unit_of_work() as uow:
        await uow.users.add_many(
            [
                User(name="Ann", age=17, email="ann@example.com"),
                User(name="Bob", age=30),
                User(name="Cid", age=45, email="cid@example.com"),
                User(name="Bob", age=62),
            ]
        )
        await uow.commit()
    return db


async def test_list_combines_expressions_and_keyword_equality(
    people: Database[UserUnitOfWork],
) -> None:
    async with people.unit_of_work(read_only=True) as uow:
        adults = await uow.users.list(User.age >= 18, order_by=User.id)
        bobs = await uow.users.list(User.age >= 18, name="Bob", order_by="age")
    assert [u.name for u in adults] == ["Bob", "Cid", "Bob"]
    assert [u.age for u in bobs] == [30, 62]


async def test_keyword_none_matches_null(people: Database[UserUnitOfWork]) -> None:
    async with people.unit_of_work(read_only=True) as uow:
        no_email = await uow.users.list(email=None, order_by="age")
    assert [u.age for u in no_email] == [30, 62]


@pytest.mark.parametrize(
    ("order_by", "ages"),
    [
        ("age", [17, 30, 45, 62]),
        ("-age", [62, 45, 30, 17]),
        (User.age.desc(), [62, 45, 30, 17]),
        (["name", "-age"], [17, 62, 30, 45]),
    ],
)
async def test_order_by_accepts_names_descending_names_and_columns(
    people: Database[UserUnitOfWork], order_by: object, ages: list[int]
) -> None:
    async with people.unit_of_work(read_only=True) as uow:
        found = await uow.users.list(order_by=order_by)  # type: ignore[arg-type]  # parametrised
    assert [u.age for u in found] == ages


async def test_limit_and_offset_page_through_results(people: Database[UserUnitOfWork]) -> None:
    async with people.unit_of_work(read_only=True) as uow:
        first = await uow.users.list(order_by="age", limit=2)
        second = await uow.users.list(order_by="age", limit=2, offset=2)
        beyond = await uow.users.list(order_by="age", limit=2, offset=10)
    assert [u.age for u in first] == [17, 30]
    assert [u.age for u in second] == [45, 62]
    assert beyond == []


async def test_count_and_exists_apply_the_same_filters(people: Database[UserUnitOfWork]) -> None:
    async with people.unit_of_work(read_only=True) as uow:
        assert await uow.users.count() == 4
        assert await uow.users.count(User.age >= 18) == 3
        assert await uow.users.count(name="Bob") == 2
        assert await uow.users.exists(name="Cid")
        assert not await uow.users.exists(User.age > 100)


async def test_filter_values_are_bound_parameters(people: Database[UserUnitOfWork]) -> None:
    async with people.unit_of_work(read_only=True) as uow:
        assert await uow.users.list(name="' OR 1=1 --") == []
        assert await uow.users.count(name="%") == 0


async def test_get_by_email_finds_the_user(people: Database[UserUnitOfWork]) -> None:
    async with people.unit_of_work(read_only=True) as uow:
        found = await uow.users.get_by_email("cid@example.com")
        missing = await uow.users.get_by_email("nobody@example.com")
    assert found is not None
    assert found.name == "Cid"
    assert missing is None


async def test_relationship_is_loaded_only_when_asked(db: Database[UserUnitOfWork]) -> None:
    async with db.unit_of_work() as uow:
        author = await uow.users.add(User(name="Writer", age=40))
        await uow.posts.add_many(Post(author_id=author.id, title=f"p{i}") for i in range(3))
        await uow.commit()
    async with db.unit_of_work(read_only=True) as uow:
        plain = await uow.users.get_one(author.id)
        with pytest.raises(Exception, match="lazy='raise'"):
            _ = plain.posts
    async with db.unit_of_work(read_only=True) as uow:
        loaded = await uow.users.get_one(author.id, load=["posts"])
        listed = await uow.users.list(User.id == author.id, load=[selectinload(User.posts)])
    # loaded objects stay readable after their unit of work, relationship included
    assert [p.title for p in loaded.posts] == ["p0", "p1", "p2"]
    assert [p.title for p in listed[0].posts] == ["p0", "p1", "p2"]


async def test_many_to_one_loads_explicitly(db: Database[UserUnitOfWork]) -> None:
    async with db.unit_of_work() as uow:
        author = await uow.users.add(User(name="W", age=40))
        post = await uow.posts.add(Post(author_id=author.id, title="t"))
        await uow.commit()
    async with db.unit_of_work(read_only=True) as uow:
        found = await uow.posts.list(Post.id == post.id, load=["author"])
    assert found[0].author.name == "W"


async def test_list_sends_one_statement_without_loads(people: Database[UserUnitOfWork]) -> None:
    async with people.unit_of_work(read_only=True) as uow:
        with count_statements(people.engine) as statements:
            await uow.users.list(User.age >= 18, limit=1)
    assert len(statements) == 1
