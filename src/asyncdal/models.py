"""``Base`` with a constraint naming convention, and the reference domain's mapped classes.

Values are validated in the model where the two backends would disagree: SQLite happily stores a
200-character name in a ``VARCHAR(100)``, an age of -5 and a NUL byte, PostgreSQL refuses all three.
Validating here gives both backends the same answer, as an ``InvalidDataError``, before any SQL.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Integer,
    MetaData,
    String,
    func,
)
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    mapped_column,
    orm_insert_sentinel,
    relationship,
    validates,
)

from .errors import InvalidDataError

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

NAME_MAX = 100
TITLE_MAX = 200
EMAIL_MAX = 320
AGE_MIN, AGE_MAX = 0, 150

# SQLite has no BIGINT autoincrement; INTEGER PRIMARY KEY is its rowid alias.
_BigId = BigInteger().with_variant(Integer(), "sqlite")


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    """Declarative base whose constraints get stable names, so Alembic can alter and drop them."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def check_text(field: str, value: str | None, *, max_length: int | None = None) -> str | None:
    """Reject what one backend would store and the other refuse.

    Raises:
        InvalidDataError: the text is too long, holds a NUL byte or is not encodable as UTF-8.
    """
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidDataError(f"{field} must be a string, got {type(value).__name__}")
    if max_length is not None and len(value) > max_length:
        raise InvalidDataError(f"{field} must be at most {max_length} characters, got {len(value)}")
    if "\x00" in value:
        raise InvalidDataError(f"{field} must not contain a NUL byte")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidDataError(f"{field} must be valid Unicode (no lone surrogates)") from None
    return value


class User(Base):
    """A user of the reference domain; ``version`` guards against lost updates."""

    __tablename__ = "users"
    __table_args__ = (CheckConstraint(f"age >= {AGE_MIN} AND age <= {AGE_MAX}", name="age_range"),)

    id: Mapped[int] = mapped_column(_BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_MAX))
    age: Mapped[int] = mapped_column(Integer)
    email: Mapped[str | None] = mapped_column(String(EMAIL_MAX), unique=True, default=None)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=_utcnow, server_default=func.now()
    )
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=_utcnow, onupdate=_utcnow, server_default=func.now()
    )
    version: Mapped[int] = mapped_column(Integer, server_default="1")
    # SQLite cannot say which RETURNING row belongs to which VALUES row, so without a client-side
    # sentinel SQLAlchemy inserts add_many() one row per statement there (~7x slower).
    # https://docs.sqlalchemy.org/en/20/core/connections.html#configuring-sentinel-columns
    _sentinel: Mapped[int | None] = orm_insert_sentinel()
    posts: Mapped[list[Post]] = relationship(
        back_populates="author",
        # Never load behind the caller's back: ask for it with load=("posts",) instead.
        lazy="raise",
        cascade="all, delete-orphan",
        # The database's ON DELETE CASCADE removes posts; the ORM need not load them first.
        passive_deletes=True,
        order_by="Post.id",
    )

    __mapper_args__ = {"version_id_col": version}  # noqa: RUF012 - read once by the mapper

    @validates("name")
    def _validate_name(self, _key: str, value: str) -> str:
        checked = check_text("User.name", value, max_length=NAME_MAX)
        if not checked:
            raise InvalidDataError("User.name must not be empty")
        return checked

    @validates("email")
    def _validate_email(self, _key: str, value: str | None) -> str | None:
        return check_text("User.email", value, max_length=EMAIL_MAX)

    @validates("age")
    def _validate_age(self, _key: str, value: int) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise InvalidDataError(f"User.age must be an integer, got {type(value).__name__}")
        if not AGE_MIN <= value <= AGE_MAX:
            raise InvalidDataError(f"User.age must be between {AGE_MIN} and {AGE_MAX}, got {value}")
        return value

    def __repr__(self) -> str:
        return f"User(id={self.id!r}, name={self.name!r}, age={self.age!r})"


class Post(Base):
    """A post written by a user: the one-to-many child that exercises relationship loading."""

    __tablename__ = "posts"

    id: Mapped[int] = mapped_column(_BigId, primary_key=True)
    author_id: Mapped[int] = mapped_column(
        _BigId, ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    title: Mapped[str] = mapped_column(String(TITLE_MAX))
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=_utcnow, server_default=func.now()
    )
    author: Mapped[User] = relationship(back_populates="posts", lazy="raise")
    _sentinel: Mapped[int | None] = orm_insert_sentinel()  # see User._sentinel

    @validates("title")
    def _validate_title(self, _key: str, value: str) -> str:
        checked = check_text("Post.title", value, max_length=TITLE_MAX)
        if not checked:
            raise InvalidDataError("Post.title must not be empty")
        return checked

    def __repr__(self) -> str:
        return f"Post(id={self.id!r}, author_id={self.author_id!r}, title={self.title!r})"
