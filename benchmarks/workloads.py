"""The workloads: each one op is one short transaction, taken from the stack's pool."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final

from asyncdal.models import AGE_MAX, AGE_MIN
from benchmarks.stacks import Stack


@dataclass(slots=True)
class Context:
    """What a workload draws on: the seeded id range, the bulk size, a seeded random source."""

    users: int
    bulk_size: int
    rng: random.Random = field(default_factory=lambda: random.Random(1))

    def user_id(self) -> int:
        return self.rng.randint(1, self.users)

    def age(self) -> int:
        return self.rng.randint(AGE_MIN, AGE_MAX)

    def name(self) -> str:
        return f"bench user {self.rng.getrandbits(48):012x}"


Workload = Callable[[Stack, Context], Awaitable[None]]


async def read(stack: Stack, ctx: Context) -> None:
    """Get one user by a random id."""
    await stack.get_age(ctx.user_id())


async def write(stack: Stack, ctx: Context) -> None:
    """Add one user and commit."""
    await stack.add_user(ctx.name(), ctx.age())


async def update(stack: Stack, ctx: Context) -> None:
    """Get a random user, change its age, commit."""
    age = ctx.age()
    await stack.update_age(ctx.user_id(), lambda _old: age)


async def mixed(stack: Stack, ctx: Context) -> None:
    """80% reads, 20% updates, drawn at random for each op."""
    if ctx.rng.random() < 0.8:
        await read(stack, ctx)
    else:
        await update(stack, ctx)


async def bulk(stack: Stack, ctx: Context) -> None:
    """Add ``bulk_size`` users in one transaction (``add_many`` on the unit of work)."""
    await stack.add_users([(ctx.name(), ctx.age()) for _ in range(ctx.bulk_size)])


WORKLOADS: Final[dict[str, Workload]] = {
    "read": read,
    "write": write,
    "update": update,
    "mixed": mixed,
    "bulk": bulk,
}

#: Workloads run at one concurrency only: one op is already a large transaction.
SINGLE_TASK: Final = frozenset({"bulk"})


@dataclass(frozen=True, slots=True)
class IncrementCheck:
    """N concurrent read-modify-write increments of one row, then the row read back."""

    increments: int
    succeeded: int
    final: int
    errors: dict[str, int]

    @property
    def lost(self) -> int:
        """Increments that committed without an error yet are missing from the final value."""
        return self.succeeded - self.final


async def increments(stack: Stack, user_id: int, count: int, concurrency: int) -> IncrementCheck:
    """Set one user's age to 0, increment it ``count`` times from ``concurrency`` tasks."""
    if count > AGE_MAX:
        raise ValueError(f"count must be <= {AGE_MAX} (the highest valid age), got {count}")
    await stack.update_age(user_id, lambda _old: 0)
    remaining = count
    succeeded = 0
    errors: Counter[str] = Counter()

    async def worker() -> None:
        nonlocal remaining, succeeded
        while remaining > 0:
            remaining -= 1
            try:
                await stack.update_age(user_id, lambda age: age + 1)
            except Exception as error:
                errors[type(error).__name__] += 1
            else:
                succeeded += 1

    async with asyncio.TaskGroup() as group:
        for _ in range(concurrency):
            group.create_task(worker())
    final = await stack.get_age(user_id)
    return IncrementCheck(count, succeeded, final or 0, dict(errors))
