"""What the service reads and writes: users as JSON, checked before any SQL."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from asyncdal.models import AGE_MAX, AGE_MIN, EMAIL_MAX, NAME_MAX, User


class NewUser(BaseModel):
    """The body of ``POST /users``."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=NAME_MAX)
    age: int = Field(ge=AGE_MIN, le=AGE_MAX)
    email: str | None = Field(default=None, max_length=EMAIL_MAX)


class UserChanges(BaseModel):
    """The body of ``PATCH /users/{id}``: only the fields given change."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=NAME_MAX)
    age: int | None = Field(default=None, ge=AGE_MIN, le=AGE_MAX)
    email: str | None = Field(default=None, max_length=EMAIL_MAX)


class UserOut(BaseModel):
    """A user as the service shows it."""

    id: int
    name: str
    age: int
    email: str | None
    version: int

    @classmethod
    def of(cls, user: User) -> UserOut:
        """The JSON view of a loaded ``User``."""
        return cls(id=user.id, name=user.name, age=user.age, email=user.email, version=user.version)


class UserPage(BaseModel):
    """One page of ``GET /users``; ``next`` is the URL of the following page, or null."""

    items: list[UserOut]
    next: str | None
