"""The fast paths' rules, one by one: what goes without a flush, what still takes it, and that
nothing a user can observe changes when it does.

``taken`` counts the statements sent by the fast paths; each rule's test sees it stay at zero
where the flush must run (and the flush's behaviour happen: events fired, related rows written).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from sqlalchemy import ForeignKey, Integer, String, event, inspect, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from asyncdal import Database, DatabaseSettings
from asyncdal.errors import StaleVersionError
from asyncdal.models import Post, User
from asyncdal.uow import State
from asyncdal.users import UserUnitOfWork
from tests.support import Backend


@pytest.fixture
def listening() -> Iterator[list[tuple[Any, str, Any]]]:
    """Listeners added by a test, removed after it (mapper and session events are global)."""
    added: list[tuple[Any, str, Any]] = []
    yield added
    for target, name, fn in added:
        event.remove(target, name, fn)


def _listen(added: list[tuple[Any, str, Any]], target: Any, name: str, fn: Any) -> None:
    event.listen(target, name, fn)
    added.append((target, name, fn))


class _Scratch(DeclarativeBase):
    pass


class Note(_Scratch):
    """A many-to-one without a backref: nothing but the relationship itself records a change."""

    __tablename__ = "fastpath_notes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey(User.__table__.c.id))
    text: Mapped[str] = mapped_column(String(20))
    user: Mapped[User] = relationship(User)


@pytest.fixture
async def notes(
    committing_db: Database[UserUnitOfWork],
) -> AsyncIterator[Database[UserUnitOfWork]]:
    # Real commits: the table is made and dropped through the engine, outside any test
    # transaction, so that transaction must not hold a lock on it when the table goes.
    db = committing_db
    async with db.engine.begin() as connection:
        await connection.run_sync(_Scratch.metadata.create_all)
    try:
        yield db
    finally:
        async with db.engine.begin() as connection:
            await connection.run_sync(_Scratch.metadata.drop_all)


async def _user(db: Database[UserUnitOfWork], name: str = "Ann") -> User:
    async with db.unit_of_work() as uow:
        user = await uow.users.add(User(name=name, age=30))
        await uow.commit()
    return user


async def test_add_goes_without_a_flush_and_the_object_stays_tracked(
    db: Database[UserUnitOfWork], taken: dict[str, int]
) -> None:
    async with db.unit_of_work() as uow:
        user = await uow.users.add(User(name="Ann", age=30))
        assert taken["insert"] == 1
        assert (user.id, user.version) == (1, 1)
        assert inspect(user).persistent
        assert await uow.users.get(user.id) is user  # in the identity map
        user.age = 31  # tracked: the commit sends it
        await uow.commit()
    assert taken["update"] == 1
    async with db.unit_of_work(read_only=True) as uow:
        stored = await uow.users.get_one(user.id)
    assert (stored.age, stored.version) == (31, 2)
    assert (user.age, user.version) == (31, 2)
    # SQLite gives stored datetimes back without their zone.
    assert user.updated_at.replace(tzinfo=None) == stored.updated_at.replace(tzinfo=None)


async def test_a_column_change_commits_without_a_flush(
    db: Database[UserUnitOfWork], taken: dict[str, int]
) -> None:
    user = await _user(db)
    async with db.unit_of_work() as uow:
        loaded = await uow.users.get_one(user.id)
        loaded.name = "Bea"
        await uow.commit()
    assert not inspect(loaded).modified
    assert taken["update"] == 1
    assert (loaded.name, loaded.version) == ("Bea", 2)
    assert loaded.updated_at > user.updated_at  # onupdate applied, as the flush does


async def test_repository_update_sends_its_column_change_without_a_flush(
    db: Database[UserUnitOfWork], taken: dict[str, int]
) -> None:
    user = await _user(db)
    async with db.unit_of_work() as uow:
        updated = await uow.users.update(user, age=44)  # a detached object: attached, then sent
        assert taken["update"] == 1
        assert (updated.age, updated.version) == (44, 2)
        await uow.commit()
    async with db.unit_of_work(read_only=True) as uow:
        assert (await uow.users.get_one(user.id)).version == 2


async def test_pending_related_objects_take_the_flush(
    db: Database[UserUnitOfWork], taken: dict[str, int]
) -> None:
    async with db.unit_of_work() as uow:
        user = await uow.users.add(User(name="Ann", age=30, posts=[Post(title="hello")]))
        await uow.commit()
    assert taken["insert"] == 0
    assert user.posts[0].author_id == user.id


async def test_a_post_given_its_author_object_takes_the_flush(
    db: Database[UserUnitOfWork], taken: dict[str, int]
) -> None:
    user = await _user(db)
    async with db.unit_of_work() as uow:
        author = await uow.users.get_one(user.id)
        post = await uow.repository(Post).add(Post(title="hi", author=author))
        await uow.commit()
    assert taken["insert"] == 1  # the author only: the post needed its key copied
    assert post.author_id == user.id


async def test_a_note_given_its_user_object_takes_the_flush_which_copies_the_key(
    notes: Database[UserUnitOfWork], taken: dict[str, int]
) -> None:
    user = await _user(notes)
    async with notes.unit_of_work() as uow:
        note = await uow.repository(Note).add(Note(text="hi", user=user))
        await uow.commit()
    assert taken["insert"] == 1  # the user only
    assert note.user_id == user.id


async def test_a_many_to_one_change_at_commit_takes_the_flush_which_moves_the_key(
    notes: Database[UserUnitOfWork], taken: dict[str, int]
) -> None:
    ann, bea = await _user(notes, "Ann"), await _user(notes, "Bea")
    async with notes.unit_of_work() as uow:
        note = await uow.repository(Note).add(Note(text="hi", user_id=ann.id))
        await uow.commit()
    async with notes.unit_of_work() as uow:
        loaded = await uow.repository(Note).get_one(note.id)
        loaded.user = await uow.users.get_one(bea.id)
        loaded.text = "moved"
        await uow.commit()
    assert taken == {"insert": 3, "update": 0}
    async with notes.unit_of_work(read_only=True) as uow:
        stored = await uow.repository(Note).get_one(note.id)
        assert (stored.user_id, stored.text) == (bea.id, "moved")


async def test_add_with_other_objects_pending_takes_the_flush_in_their_order(
    db: Database[UserUnitOfWork], taken: dict[str, int]
) -> None:
    async with db.unit_of_work() as uow:
        first = User(name="First", age=1)
        uow.session.add(first)  # pending, not flushed yet
        second = await uow.users.add(User(name="Second", age=2))
        await uow.commit()
    assert taken["insert"] == 0
    assert first.id < second.id


@pytest.mark.parametrize("name", ["before_insert", "after_insert"])
async def test_a_mapper_insert_event_takes_the_flush_and_fires(
    db: Database[UserUnitOfWork],
    taken: dict[str, int],
    listening: list[tuple[Any, str, Any]],
    name: str,
) -> None:
    fired: list[str] = []
    _listen(listening, User, name, lambda _m, _c, target: fired.append(target.name))
    await _user(db, "Ann")
    assert (fired, taken["insert"]) == (["Ann"], 0)


@pytest.mark.parametrize("name", ["before_update", "after_update"])
async def test_a_mapper_update_event_takes_the_flush_and_fires(
    db: Database[UserUnitOfWork],
    taken: dict[str, int],
    listening: list[tuple[Any, str, Any]],
    name: str,
) -> None:
    user = await _user(db)
    fired: list[int] = []
    _listen(listening, User, name, lambda _m, _c, target: fired.append(target.age))
    async with db.unit_of_work() as uow:
        (await uow.users.get_one(user.id)).age = 40
        await uow.commit()
    assert (fired, taken["update"]) == ([40], 0)


@pytest.mark.parametrize("name", ["before_flush", "after_flush", "after_flush_postexec"])
async def test_a_session_flush_event_takes_the_flush_and_fires(
    db: Database[UserUnitOfWork],
    taken: dict[str, int],
    listening: list[tuple[Any, str, Any]],
    name: str,
) -> None:
    fired: list[str] = []
    async with db.unit_of_work() as uow:
        _listen(listening, uow.session.sync_session, name, lambda *_: fired.append(name))
        user = await uow.users.add(User(name="Ann", age=30))
        user.age = 31
        await uow.commit()
    assert (fired, taken) == ([name, name], {"insert": 0, "update": 0})


async def test_a_relationship_change_at_commit_takes_the_flush(
    db: Database[UserUnitOfWork], taken: dict[str, int]
) -> None:
    user = await _user(db)
    async with db.unit_of_work() as uow:
        loaded = await uow.users.get_one(user.id, load=("posts",))
        loaded.posts.append(Post(title="appended"))
        loaded.age = 41
        await uow.commit()
    assert taken["update"] == 0
    assert (loaded.version, loaded.posts[0].author_id) == (2, user.id)


async def test_a_delete_or_a_pending_insert_at_commit_takes_the_flush(
    db: Database[UserUnitOfWork], taken: dict[str, int]
) -> None:
    ann, bea = await _user(db, "Ann"), await _user(db, "Bea")
    async with db.unit_of_work() as uow:
        await uow.session.delete(await uow.users.get_one(ann.id))  # not flushed yet
        (await uow.users.get_one(bea.id)).age = 50
        uow.session.add(User(name="Cid", age=1))  # not flushed yet
        await uow.commit()
    assert taken == {"insert": 2, "update": 0}  # the two _user() calls
    async with db.unit_of_work(read_only=True) as uow:
        names = await uow.session.scalars(select(User.name).order_by(User.name))
        assert list(names) == ["Bea", "Cid"]
        assert (await uow.users.get_one(bea.id)).age == 50


async def test_add_after_an_unflushed_change_takes_the_flush_and_sends_both(
    db: Database[UserUnitOfWork], taken: dict[str, int]
) -> None:
    user = await _user(db)
    async with db.unit_of_work() as uow:
        (await uow.users.get_one(user.id)).age = 60
        await uow.users.add(User(name="New", age=1))
        await uow.commit()
    assert taken == {"insert": 1, "update": 0}
    async with db.unit_of_work(read_only=True) as uow:
        assert (await uow.users.get_one(user.id)).age == 60


async def test_a_stale_version_raises_stale_version_error_on_the_fast_path(
    db: Database[UserUnitOfWork], taken: dict[str, int]
) -> None:
    user = await _user(db)
    async with db.unit_of_work(read_only=True) as uow:
        stale = await uow.users.get_one(user.id)
    async with db.unit_of_work() as uow:
        (await uow.users.get_one(user.id)).age = 70
        await uow.commit()
    async with db.unit_of_work() as uow:
        uow.session.add(stale)
        stale.age = 71
        with pytest.raises(StaleVersionError, match="expected to update 1 row"):
            await uow.commit()
        assert uow.state is State.ROLLED_BACK
    assert taken["update"] == 2  # the fresh change and the stale one: 0 rows matched
    async with db.unit_of_work(read_only=True) as uow:
        assert (await uow.users.get_one(user.id)).age == 70


async def test_with_fast_paths_off_everything_takes_the_flush(
    backend: Backend, committing_db: Database[UserUnitOfWork], taken: dict[str, int]
) -> None:
    # A Database of its own beside the test's: real commits (committing_db), emptied tables.
    settings = DatabaseSettings(
        backend.url, application_name="asyncdal-tests", fast_paths=False, **backend.settings
    )
    async with Database(settings, unit_of_work=UserUnitOfWork) as slow:
        user = await _user(slow)
        async with slow.unit_of_work() as uow:
            (await uow.users.get_one(user.id)).age = 80
            await uow.commit()
    assert taken == {"insert": 0, "update": 0}
    assert (user.id, user.version) == (1, 1)


async def test_a_read_only_unit_of_work_never_writes_through_a_fast_path(
    db: Database[UserUnitOfWork], taken: dict[str, int]
) -> None:
    user = await _user(db)
    async with db.unit_of_work(read_only=True) as uow:
        (await uow.users.get_one(user.id)).age = 90
        with pytest.raises(Exception, match="read-only"):
            await uow.commit()
    assert taken["update"] == 0
    async with db.unit_of_work(read_only=True) as uow:
        assert (await uow.users.get_one(user.id)).age == 30
