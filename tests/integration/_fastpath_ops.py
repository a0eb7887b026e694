"""The random writes of the fast-path differential test, and how an outcome is described.

Each op is one or more units of work on one database, driven by its own ``random.Random``: run
with equal seeds on two databases, a correct fast path gives equal outcomes. An outcome is plain
data (no object identities, no session ids), so two of them compare with ``==``.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Integer, String, inspect, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from asyncdal import Database
from asyncdal.errors import DataAccessError
from asyncdal.models import Post, User
from asyncdal.users import UserUnitOfWork

Outcome = dict[str, Any]


class Scratch(DeclarativeBase):
    """Tables of this test only (created and dropped by its fixture)."""


class Gadget(Scratch):
    """Defaults of every kind User lacks: a scalar one, a context-sensitive one, a server-side
    one (fetched back by RETURNING), none at all, a context-sensitive ``onupdate``, and a
    version counter without a server default."""

    __tablename__ = "fastpath_gadgets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    label: Mapped[str] = mapped_column(String(20))
    source: Mapped[str] = mapped_column(String(10), default="python")
    shout: Mapped[str] = mapped_column(
        String(20), default=lambda ctx: ctx.get_current_parameters()["label"].upper()
    )
    kind: Mapped[str] = mapped_column(String(10), server_default="plain")
    note: Mapped[str | None] = mapped_column(String(20))
    revision: Mapped[int] = mapped_column(
        Integer, default=0, onupdate=lambda ctx: ctx.get_current_parameters()["counter"] * 10
    )
    counter: Mapped[int] = mapped_column(Integer)

    __mapper_args__ = {"version_id_col": counter}  # noqa: RUF012 - read once by the mapper


@dataclass
class World:
    """One database, and what the ops have seen of it (the same on both sides when correct)."""

    db: Database[UserUnitOfWork]
    ids: list[int] = field(default_factory=list)
    #: Objects from ended units of work (detached), later re-attached or just re-described.
    kept: list[User] = field(default_factory=list)
    gadgets: list[int] = field(default_factory=list)
    serial: int = 0

    def email(self, rng: random.Random) -> str | None:
        """None, a fresh address, or (rarely) one already taken: a conflict."""
        draw = rng.random()
        if draw < 0.4:
            return None
        self.serial += 1
        if draw < 0.93 or self.serial < 3:
            return f"u{self.serial}@example.com"
        return f"u{rng.randint(1, self.serial - 1)}@example.com"

    def pick(self, rng: random.Random, n: int) -> list[int]:
        return rng.sample(self.ids, min(n, len(self.ids)))


def describe(obj: object) -> Outcome:
    """An object's ORM state as plain data: status, identity, loaded values, pending history."""
    state: Any = inspect(obj)
    values: dict[str, Any] = {}
    for key, value in state.dict.items():
        if key == "_sa_instance_state":
            continue
        if isinstance(value, list):
            values[key] = [_shallow(item) for item in value]
        elif isinstance(value, User | Post | Gadget):
            values[key] = _shallow(value)
        else:
            values[key] = value
    status = [
        name
        for name in ("transient", "pending", "persistent", "deleted", "detached")
        if getattr(state, name)
    ]
    return {
        "class": type(obj).__name__,
        "status": status,
        "key": None if state.key is None else state.key[1],
        "values": values,
        "pending_history": sorted(state.committed_state),
        "expired": sorted(state.expired_attributes),
        "modified": state.modified,
        "in_a_session": state.session_id is not None,
    }


def _shallow(obj: object) -> Outcome:
    state: Any = inspect(obj)
    return {"class": type(obj).__name__, "key": None if state.key is None else state.key[1]}


async def rows(db: Database[UserUnitOfWork]) -> dict[str, list[tuple[Any, ...]]]:
    """Every row as stored: raw SQL, so SQLite's text form of a datetime is compared as is."""
    found: dict[str, list[tuple[Any, ...]]] = {}
    async with db.engine.connect() as connection:
        for table in ("users", "posts", Gadget.__tablename__):
            result = await connection.execute(text(f"SELECT * FROM {table} ORDER BY id"))
            found[table] = [tuple(row) for row in result]
    return found


def _error(error: BaseException) -> Outcome:
    return {"error": type(error).__name__, "message": str(error)}


async def add_users(world: World, rng: random.Random) -> Outcome:
    """1-3 new users in one unit of work, maybe changed after add(), committed or not."""
    users = [User(name=f"n{rng.getrandbits(20)}", age=rng.randint(0, 150)) for _ in range(3)]
    users = users[: rng.randint(1, 3)]
    for user in users:
        user.email = world.email(rng)
        if rng.random() < 0.1:
            user.id = 100_000 + rng.getrandbits(16)  # a key given, not generated
    out: Outcome = {}
    try:
        async with world.db.unit_of_work() as uow:
            for user in users:
                await uow.users.add(user)
            if rng.random() < 0.3:
                users[0].age = rng.randint(0, 150)
            commit = rng.random() < 0.85
            if commit:
                await uow.commit()
            out["state"] = uow.state.value
    except DataAccessError as error:
        out.update(_error(error))
        commit = False
    if commit:
        world.ids += [user.id for user in users]
        world.kept += users
    out["users"] = [describe(user) for user in users]
    return out


async def modify(world: World, rng: random.Random) -> Outcome:
    """Change columns of 1-3 loaded users (sometimes to the value they had), commit or not."""
    out: Outcome = {}
    async with world.db.unit_of_work() as uow:
        users = [await uow.users.get_one(i) for i in world.pick(rng, rng.randint(1, 3))]
        for user in users:
            change = rng.choice(("age", "name", "both", "same", "email"))
            if change in ("age", "both"):
                user.age = rng.randint(0, 150)
            if change in ("name", "both"):
                user.name = f"m{rng.getrandbits(20)}"
            if change == "same":
                user.age = user.age
            if change == "email":
                user.email = world.email(rng)
        try:
            if rng.random() < 0.9:
                await uow.commit()
        except DataAccessError as error:
            out.update(_error(error))
        out["state"] = uow.state.value
    out["users"] = [describe(user) for user in users]
    return out


async def reattach(world: World, rng: random.Random) -> Outcome:
    """Change a user kept from an earlier unit of work (possibly stale), via add or update()."""
    if not world.kept:
        return {}
    user = rng.choice(world.kept)
    out: Outcome = {"before": describe(user)}
    try:
        async with world.db.unit_of_work() as uow:
            if rng.random() < 0.5:
                uow.session.add(user)
                user.age = rng.randint(0, 150)
            else:
                await uow.users.update(user, name=f"r{rng.getrandbits(20)}")
            await uow.commit()
    except DataAccessError as error:
        out.update(_error(error))
    out["after"] = describe(user)
    return out


async def delete_and_modify(world: World, rng: random.Random) -> Outcome:
    """Delete one user and change another in the same unit of work."""
    picked = world.pick(rng, 2)
    if not picked:
        return {}
    async with world.db.unit_of_work() as uow:
        users = [await uow.users.get_one(i) for i in picked]
        if len(users) > 1:
            users[1].age = rng.randint(0, 150)
        await uow.users.delete(users[0])
        await uow.commit()
    world.ids.remove(picked[0])
    world.kept = [u for u in world.kept if _shallow(u)["key"] != (picked[0],)]
    return {"users": [describe(user) for user in users]}


async def savepoints(world: World, rng: random.Random) -> Outcome:
    """Add one user, then more inside a savepoint that fails (or not), then one more; commit."""
    made = [User(name=f"s{i}", age=i, email=world.email(rng)) for i in range(4)]
    out: Outcome = {}
    async with world.db.unit_of_work() as uow:
        try:
            await uow.users.add(made[0])
            async with uow.savepoint():
                await uow.users.add(made[1])
                made[0].age = rng.randint(0, 150)
                await uow.users.add(made[2])
                if rng.random() < 0.5:
                    raise LookupError("undo the savepoint")
        except (LookupError, DataAccessError) as error:
            out["inner"] = type(error).__name__
        try:
            await uow.users.add(made[3])
            await uow.commit()
        except DataAccessError as error:
            out.update(_error(error))
        out["state"] = uow.state.value
    out["users"] = [describe(user) for user in made]
    if out.get("state") == "committed":
        keys = [inspect(u).key for u in made]
        world.ids += [key[1][0] for key in keys if key is not None]
    return out


async def conflict_in_savepoint(world: World, rng: random.Random) -> Outcome:
    """A failing add() inside a savepoint, the error caught there, then more work and commit."""
    taken = [e for e in (inspect(u).dict.get("email") for u in world.kept) if e is not None]
    if not taken:
        return {}
    first, dup = User(name="c1", age=1), User(name="c2", age=2, email=rng.choice(taken))
    third = User(name="c3", age=3)
    out: Outcome = {}
    async with world.db.unit_of_work() as uow:
        await uow.users.add(first)
        async with uow.savepoint():
            try:
                await uow.users.add(dup)
            except DataAccessError as error:
                out["add"] = _error(error)
            try:
                await uow.users.count()
            except Exception as error:  # PendingRollbackError: SQLAlchemy's own, passed through
                out["after"] = _error(error)
            try:
                await uow.users.add(third)
            except Exception as error:
                out["add after"] = _error(error)
        try:
            await uow.commit()
        except Exception as error:  # PendingRollbackError, as for the count above
            out["commit"] = _error(error)
        out["state"] = uow.state.value
    out["users"] = [describe(first), describe(dup), describe(third)]
    if out["state"] == "committed":
        world.ids += [u.id for u in (first, third) if inspect(u).key is not None]
    return out


async def posts(world: World, rng: random.Random) -> Outcome:
    """Related objects: a user with a post, a post by key, a post appended to a loaded user."""
    out: Outcome = {}
    how = rng.choice(("new user with posts", "post by key", "append") if world.ids else ("new",))
    async with world.db.unit_of_work() as uow:
        if how == "post by key":
            post = Post(author_id=rng.choice(world.ids), title="by key")
            await uow.repository(Post).add(post)
            made: list[object] = [post]
        elif how == "append":
            user = await uow.users.get_one(rng.choice(world.ids), load=("posts",))
            user.posts.append(Post(title="appended"))
            user.age = rng.randint(0, 150)
            made = [user, *user.posts]
        else:
            user = User(name="parent", age=40, posts=[Post(title="first"), Post(title="second")])
            await uow.users.add(user)
            made = [user, *user.posts]
        await uow.commit()
    if how in ("new user with posts", "new"):
        world.ids.append(made[0].id)  # type: ignore[attr-defined]  # a User
    out["objects"] = [describe(obj) for obj in made]
    return out


async def stale_copy(world: World, rng: random.Random) -> Outcome:
    """A copy read before another unit of work changed the row, then changed and committed."""
    if not world.ids:
        return {}
    target = rng.choice(world.ids)
    async with world.db.unit_of_work(read_only=True) as uow:
        copy = await uow.users.get_one(target)
    async with world.db.unit_of_work() as uow:
        (await uow.users.get_one(target)).age = rng.randint(0, 150)
        await uow.commit()
    out: Outcome = {}
    try:
        async with world.db.unit_of_work() as uow:
            uow.session.add(copy)
            copy.name = "late"
            uow.on_commit(lambda: out.setdefault("hook", "ran"))
            await uow.commit()
    except DataAccessError as error:
        out.update(_error(error))
    out["copy"] = describe(copy)
    return out


async def add_after_change(world: World, rng: random.Random) -> Outcome:
    """A change to a loaded user, then add(), or add() then the change: both orders."""
    if not world.ids:
        return {}
    new = User(name="after", age=rng.randint(0, 150), email=world.email(rng))
    out: Outcome = {}
    try:
        async with world.db.unit_of_work() as uow:
            loaded = await uow.users.get_one(rng.choice(world.ids))
            if rng.random() < 0.5:
                loaded.age = rng.randint(0, 150)
                await uow.users.add(new)
            else:
                await uow.users.add(new)
                loaded.age = rng.randint(0, 150)
            await uow.commit()
        world.ids.append(new.id)
    except DataAccessError as error:
        out.update(_error(error))
    out["users"] = [describe(loaded), describe(new)]
    return out


async def gadgets(world: World, rng: random.Random) -> Outcome:
    """Gadgets added with some values given (a key, the server-side one, a note), then changed."""
    made = []
    for i in range(rng.randint(1, 2)):
        gadget = Gadget(label=f"g{rng.getrandbits(16)}")
        if rng.random() < 0.3:
            gadget.kind = "given"
        if rng.random() < 0.3:
            gadget.note = "noted"
        if rng.random() < 0.2:
            gadget.id = 1_000 * (1 + len(world.gadgets)) + i
        made.append(gadget)
    out: Outcome = {}
    try:
        async with world.db.unit_of_work() as uow:
            for gadget in made:
                await uow.repository(Gadget).add(gadget)
            if world.gadgets and rng.random() < 0.7:
                old = await uow.repository(Gadget).get_one(rng.choice(world.gadgets))
                old.label = f"c{rng.getrandbits(16)}"
                made.append(old)
            await uow.commit()
        world.gadgets += [g.id for g in made[:2] if g.id not in world.gadgets]
    except DataAccessError as error:
        out.update(_error(error))
    out["gadgets"] = [describe(gadget) for gadget in made]
    return out


Op = Callable[[World, random.Random], Awaitable[Outcome]]
OPS: tuple[Op, ...] = (
    add_users,
    add_users,
    add_users,
    modify,
    modify,
    reattach,
    delete_and_modify,
    savepoints,
    conflict_in_savepoint,
    posts,
    stale_copy,
    add_after_change,
    gadgets,
    gadgets,
)
