"""The reference domain's data access: ``UserRepository`` and ``UserUnitOfWork``."""

from __future__ import annotations

from .models import Post, User
from .repository import Repository
from .uow import UnitOfWork


class UserRepository(Repository[User]):
    """Users: everything ``Repository`` does, plus lookups by email."""

    model = User

    async def get_by_email(self, email: str) -> User | None:
        """The user with this email, or ``None``."""
        found = await self.list(email=email, limit=1)
        return found[0] if found else None


class PostRepository(Repository[Post]):
    """Posts written by users."""

    model = Post


class UserUnitOfWork(UnitOfWork):
    """A unit of work that names the reference domain's repositories.

    Example:
        >>> async with db.unit_of_work() as uow:  # doctest: +SKIP
        ...     user = await uow.users.get_one(1)
    """

    @property
    def users(self) -> UserRepository:
        """The users repository of this unit of work."""
        return self.repository(UserRepository)

    @property
    def posts(self) -> PostRepository:
        """The posts repository of this unit of work."""
        return self.repository(PostRepository)
