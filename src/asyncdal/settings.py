"""Connection settings: one validated, immutable object, built directly or from the environment."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Self

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from .errors import ConfigurationError

Backend = Literal["sqlite", "postgresql"]

_DRIVERS: dict[str, tuple[Backend, str]] = {
    # Plain scheme names are upgraded to their async driver: DATABASE_URL is often written by
    # tools (Heroku, docker-compose files) that know nothing of SQLAlchemy driver suffixes.
    "sqlite": ("sqlite", "sqlite+aiosqlite"),
    "sqlite+aiosqlite": ("sqlite", "sqlite+aiosqlite"),
    "postgres": ("postgresql", "postgresql+asyncpg"),
    "postgresql": ("postgresql", "postgresql+asyncpg"),
    "postgresql+asyncpg": ("postgresql", "postgresql+asyncpg"),
}
_SECRET_QUERY_KEYS = frozenset({"password", "passwd", "pwd", "sslpassword"})
_MASK = "***"
_PLACEHOLDER = "ASYNCDALMASKEDSECRET"
ENV_PREFIX = "ASYNCDAL_"


def parse_url(url: str | URL) -> URL:
    """Parse and normalise a database URL to its async driver.

    Raises:
        ConfigurationError: the URL does not parse or names an unsupported backend. The message
            never repeats the URL, which may hold a password.
    """
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        # `from None`: SQLAlchemy's own message quotes the whole URL, password included.
        raise ConfigurationError(
            "url is not a valid database URL (value not shown: it may contain a password)"
        ) from None
    known = _DRIVERS.get(parsed.drivername)
    if known is None:
        raise ConfigurationError(
            f"url uses unsupported driver {parsed.drivername!r}: "
            "use sqlite+aiosqlite:// or postgresql+asyncpg://"
        )
    return parsed.set(drivername=known[1])


def mask_url(url: str | URL) -> str:
    """Render a URL with every password replaced by ``***``, in the authority and the query."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return "<unparseable URL>"
    secret_keys = [key for key in parsed.query if key.lower() in _SECRET_QUERY_KEYS]
    if secret_keys:
        # A letters-only placeholder survives URL quoting; it becomes *** after rendering.
        parsed = parsed.update_query_dict({key: _PLACEHOLDER for key in secret_keys})
    rendered = parsed.render_as_string(hide_password=True)
    return rendered.replace(_PLACEHOLDER, _MASK)


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigurationError(message)


@dataclass(frozen=True, slots=True)
class DatabaseSettings:
    """Everything needed to build a pooled async engine, validated when constructed.

    Durations are in seconds. ``None`` leaves a server-side timeout at the server's default.

    Raises:
        ConfigurationError: a value is out of range; the message names the field and the value.

    Example:
        >>> DatabaseSettings("sqlite+aiosqlite:///app.db", pool_size=5).pool_size
        5
    """

    url: str = field(repr=False)
    pool_size: int = 10
    max_overflow: int = 10
    pool_timeout: float = 30.0
    pool_recycle: float | None = 1800.0
    pool_pre_ping: bool = False
    connect_timeout: float = 5.0
    statement_timeout: float | None = None
    lock_timeout: float | None = None
    idle_in_transaction_timeout: float | None = None
    application_name: str = "asyncdal"
    pgbouncer: bool = False
    sqlite_busy_timeout: float = 30.0
    sqlite_synchronous: Literal["OFF", "NORMAL", "FULL", "EXTRA"] = "NORMAL"
    echo: bool = False
    #: Flush-free INSERT for ``add()`` and UPDATE at commit where the flush would send just that
    #: statement (see ``asyncdal._fastpath``); off sends everything through ``Session.flush()``.
    fast_paths: bool = True

    def __post_init__(self) -> None:
        parsed = parse_url(self.url)
        object.__setattr__(self, "url", parsed.render_as_string(hide_password=False))
        _check(self.pool_size >= 1, f"pool_size must be >= 1, got {self.pool_size!r}")
        _check(self.max_overflow >= 0, f"max_overflow must be >= 0, got {self.max_overflow!r}")
        for name in ("pool_timeout", "connect_timeout", "sqlite_busy_timeout"):
            value = getattr(self, name)
            _check(value > 0, f"{name} must be > 0 seconds, got {value!r}")
        for name in (
            "pool_recycle",
            "statement_timeout",
            "lock_timeout",
            "idle_in_transaction_timeout",
        ):
            value = getattr(self, name)
            _check(
                value is None or value > 0,
                f"{name} must be > 0 seconds or None, got {value!r}",
            )
        _check(
            self.sqlite_synchronous in ("OFF", "NORMAL", "FULL", "EXTRA"),
            "sqlite_synchronous must be one of OFF, NORMAL, FULL, EXTRA, "
            f"got {self.sqlite_synchronous!r}",
        )
        _check(
            0 < len(self.application_name) < 64 and self.application_name.isprintable(),
            f"application_name must be 1-63 printable characters, got {self.application_name!r}",
        )

    @property
    def backend(self) -> Backend:
        """``"sqlite"`` or ``"postgresql"``."""
        return _DRIVERS[make_url(self.url).drivername][0]

    @property
    def masked_url(self) -> str:
        """The URL with its password hidden: safe for logs, errors and reports."""
        return mask_url(self.url)

    @property
    def is_memory(self) -> bool:
        """True for an in-memory SQLite database (one shared connection)."""
        database = make_url(self.url).database
        return self.backend == "sqlite" and database in (None, "", ":memory:")

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{f.name}={getattr(self, f.name)!r}"
            for f in dataclasses.fields(self)
            if f.repr and getattr(self, f.name) != f.default
        )
        return f"DatabaseSettings(url={self.masked_url!r}{', ' if shown else ''}{shown})"

    def replace(self, **changes: Any) -> Self:
        """A copy with ``changes`` applied and validated again."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, default_url: str | None = None
    ) -> Self:
        """Read ``DATABASE_URL`` and ``ASYNCDAL_<FIELD>`` variables (e.g. ``ASYNCDAL_POOL_SIZE``).

        Booleans accept 1/0, true/false, yes/no, on/off; ``none`` clears an optional duration.

        Raises:
            ConfigurationError: ``DATABASE_URL`` is missing (and no ``default_url``), or a variable
                does not parse; the message names the variable.
        """
        env = os.environ if environ is None else environ
        url = env.get("DATABASE_URL") or default_url
        if not url:
            raise ConfigurationError("DATABASE_URL is not set")
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name == "url":
                continue
            name = ENV_PREFIX + f.name.upper()
            raw = env.get(name)
            if raw is not None:
                values[f.name] = _parse_env(name, raw, f.default, "None" in str(f.type))
        return cls(url, **values)


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def _parse_env(name: str, raw: str, default: object, optional: bool) -> object:
    text = raw.strip()
    if isinstance(default, bool):
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ConfigurationError(f"{name} must be a boolean (true/false), got {raw!r}")
    if isinstance(default, str):
        return text
    if optional and text.lower() in ("none", ""):
        return None
    try:
        return int(text) if isinstance(default, int) else float(text)
    except ValueError:
        kind = "an integer" if isinstance(default, int) else "a number of seconds"
        raise ConfigurationError(f"{name} must be {kind}, got {raw!r}") from None
