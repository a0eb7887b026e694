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
#: Where read-only units of work go when no replica can take them.
ReplicaFallback = Literal["primary", "raise"]

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


def parse_url(url: str | URL, *, name: str = "url") -> URL:
    """Parse and normalise a database URL to its async driver.

    ``name`` is the setting the URL comes from, for the error message.

    Raises:
        ConfigurationError: the URL does not parse or names an unsupported backend. The message
            never repeats the URL, which may hold a password.
    """
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        # `from None`: SQLAlchemy's own message quotes the whole URL, password included.
        raise ConfigurationError(
            f"{name} is not a valid database URL (value not shown: it may contain a password)"
        ) from None
    known = _DRIVERS.get(parsed.drivername)
    if known is None:
        raise ConfigurationError(
            f"{name} uses unsupported driver {parsed.drivername!r}: "
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

    Scaling out (PostgreSQL; see the README's "Scaling out"): ``replica_urls`` are streaming
    replicas of ``url`` that read-only units of work are routed to; ``read_your_writes_timeout``
    bounds the wait for one that has replayed an ``after=`` token; a replica more than
    ``replica_max_lag_bytes`` of WAL behind takes no reads; lag and health are checked every
    ``replica_check_interval``; a failed replica stays out for ``replica_retry_after``; with none
    left, reads go to the primary (``replica_fallback="primary"``) or raise (``"raise"``).
    ``migration_url`` is where migrations run instead of ``url`` (e.g. around PgBouncer).
    ``pgbouncer`` applies to every node.

    In a service (see the README's "In a service"): ``metrics`` turns ``Database.metrics()``'s
    counters on (the pools are measured either way); a unit of work slower than
    ``slow_unit_of_work_ms`` logs one WARNING (``None``: never); ``otel`` instruments the
    database with OpenTelemetry (the ``otel`` extra) as ``asyncdal.otel.instrument(db)`` does.

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
    replica_urls: tuple[str, ...] = field(default=(), repr=False)
    read_your_writes_timeout: float = 1.0
    replica_max_lag_bytes: int = 8 * 1024 * 1024
    replica_check_interval: float = 1.0
    replica_retry_after: float = 5.0
    replica_fallback: ReplicaFallback = "primary"
    migration_url: str | None = field(default=None, repr=False)
    metrics: bool = True
    slow_unit_of_work_ms: float | None = None
    otel: bool = False
    #: Flush-free INSERT for ``add()`` and UPDATE at commit where the flush would send just that
    #: statement (see ``asyncdal._fastpath``); off sends everything through ``Session.flush()``.
    fast_paths: bool = True

    def __post_init__(self) -> None:
        parsed = parse_url(self.url)
        object.__setattr__(self, "url", parsed.render_as_string(hide_password=False))
        self._check_scale_out()
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
            self.slow_unit_of_work_ms is None or self.slow_unit_of_work_ms >= 0,
            f"slow_unit_of_work_ms must be >= 0 or None, got {self.slow_unit_of_work_ms!r}",
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

    def _check_scale_out(self) -> None:
        urls = self.replica_urls
        _check(
            isinstance(urls, tuple | list) and all(isinstance(u, str) for u in urls),
            f"replica_urls must be a tuple of URL strings, got {type(urls).__name__}",
        )
        normalised = []
        for index, url in enumerate(urls):
            name = f"replica_urls[{index}]"
            replica = parse_url(url, name=name)
            _check(
                _DRIVERS[replica.drivername][0] == "postgresql" and self.backend == "postgresql",
                f"{name}: replicas need PostgreSQL for both the primary and the replica, got "
                f"{_DRIVERS[replica.drivername][0]} replica of a {self.backend} primary",
            )
            normalised.append(replica.render_as_string(hide_password=False))
        object.__setattr__(self, "replica_urls", tuple(normalised))
        if self.migration_url is not None:
            migration = parse_url(self.migration_url, name="migration_url")
            _check(
                _DRIVERS[migration.drivername][0] == self.backend,
                f"migration_url must use the same backend as url ({self.backend}), "
                f"got {_DRIVERS[migration.drivername][0]}",
            )
            object.__setattr__(
                self, "migration_url", migration.render_as_string(hide_password=False)
            )
        for name in ("read_your_writes_timeout", "replica_retry_after"):
            value = getattr(self, name)
            _check(value >= 0, f"{name} must be >= 0 seconds, got {value!r}")
        _check(
            self.replica_check_interval > 0,
            f"replica_check_interval must be > 0 seconds, got {self.replica_check_interval!r}",
        )
        _check(
            isinstance(self.replica_max_lag_bytes, int) and self.replica_max_lag_bytes >= 0,
            f"replica_max_lag_bytes must be an integer >= 0, got {self.replica_max_lag_bytes!r}",
        )
        _check(
            self.replica_fallback in ("primary", "raise"),
            f"replica_fallback must be 'primary' or 'raise', got {self.replica_fallback!r}",
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

    @property
    def masked_replica_urls(self) -> tuple[str, ...]:
        """The replica URLs with their passwords hidden."""
        return tuple(mask_url(url) for url in self.replica_urls)

    def __repr__(self) -> str:
        shown = [
            f"{f.name}={getattr(self, f.name)!r}"
            for f in dataclasses.fields(self)
            if f.repr and getattr(self, f.name) != f.default
        ]
        if self.replica_urls:
            shown.append(f"replica_urls={self.masked_replica_urls!r}")
        if self.migration_url is not None:
            shown.append(f"migration_url={mask_url(self.migration_url)!r}")
        return f"DatabaseSettings(url={self.masked_url!r}{', ' if shown else ''}{', '.join(shown)})"

    def replace(self, **changes: Any) -> Self:
        """A copy with ``changes`` applied and validated again."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, default_url: str | None = None
    ) -> Self:
        """Read ``DATABASE_URL`` and ``ASYNCDAL_<FIELD>`` variables (e.g. ``ASYNCDAL_POOL_SIZE``).

        Booleans accept 1/0, true/false, yes/no, on/off; ``none`` clears an optional setting;
        ``ASYNCDAL_REPLICA_URLS`` is a comma-separated list (percent-encode a comma in a password).

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
                values[f.name] = _parse_env(name, raw, f.default, str(f.type))
        return cls(url, **values)


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def _parse_env(name: str, raw: str, default: object, annotation: str) -> object:
    text = raw.strip()
    if isinstance(default, bool):
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ConfigurationError(f"{name} must be a boolean (true/false), got {raw!r}")
    if annotation.startswith("tuple[str"):
        return tuple(part.strip() for part in text.split(",") if part.strip())
    if "None" in annotation and text.lower() in ("none", ""):
        return None
    if isinstance(default, str) or annotation.startswith(("str", "ReplicaFallback")):
        return text
    try:
        return int(text) if isinstance(default, int) else float(text)
    except ValueError:
        kind = "an integer" if isinstance(default, int) else "a number of seconds"
        raise ConfigurationError(f"{name} must be {kind}, got {raw!r}") from None
