"""Quickstart: the blog post's sync Session walkthrough, the async way, on the SQLite default.

Run it: python examples/quickstart.py [DATABASE_URL]
"""

import asyncio
import sys

from asyncdal import Database
from asyncdal.migrations import upgrade
from asyncdal.models import User
from asyncdal.users import UserUnitOfWork


async def main(url: str = "sqlite+aiosqlite:///quickstart.db") -> None:
    async with Database(url, unit_of_work=UserUnitOfWork) as db:  # engine + sessionmaker
        await upgrade(db)  # create the tables with Alembic, on the app's own engine

        async with db.unit_of_work() as uow:  # add + commit
            user = await uow.users.add(User(name="John Doe", age=30))  # flushed: id is set
            await uow.commit()

        async with db.unit_of_work() as uow:  # get + update + commit
            user = await uow.users.get_one(user.id)
            user.age = 31  # tracked by the unit of work
            await uow.commit()

        async with db.unit_of_work(read_only=True) as uow:  # list all
            for each in await uow.users.list(order_by=User.id):
                print(f"listed {each}")

        async with db.unit_of_work() as uow:  # delete + commit
            await uow.users.delete(user)
            await uow.commit()
    # leaving `async with Database(...)` disposed of the pool: every connection is closed


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:]))
