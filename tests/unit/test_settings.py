"""DatabaseSettings: eager validation, environment parsing, URL normalisation and masking."""

from __future__ import annotations

from typing import Any

import pytest

from asyncdal import DatabaseSettings
from asyncdal.errors import ConfigurationError, InvalidQueryError
from asyncdal.settings import mask_url

SQLITE = "sqlite+aiosqlite:///app.db"


def test_defaults_are_a_pooled_engine_with_timeouts_unset() -> None:
    settings = DatabaseSettings(SQLITE)
    assert (settings.pool_size, settings.max_overflow, settings.pool_timeout) == (10, 10, 30.0)
    assert settings.statement_timeout is None
    assert settings.backend == "sqlite"


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("pool_size", 0, "pool_size must be >= 1, got 0"),
        ("max_overflow", -1, "max_overflow must be >= 0, got -1"),
        ("pool_timeout", 0, "pool_timeout must be > 0 seconds, got 0"),
        ("connect_timeout", -2.5, "connect_timeout must be > 0 seconds, got -2.5"),
        ("statement_timeout", 0, "statement_timeout must be > 0 seconds or None, got 0"),
        ("lock_timeout", -1, "lock_timeout must be > 0 seconds or None, got -1"),
        ("pool_recycle", 0, "pool_recycle must be > 0 seconds or None, got 0"),
        ("application_name", "", "application_name must be 1-63 printable characters"),
        ("sqlite_synchronous", "FAST", "sqlite_synchronous must be one of"),
    ],
)
def test_invalid_value_is_refused_with_field_and_value_named(
    field: str, value: Any, message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message.replace("(", r"\(")):
        DatabaseSettings(SQLITE, **{field: value})


def test_configuration_error_is_also_a_value_error() -> None:
    with pytest.raises(ValueError, match="pool_size"):
        DatabaseSettings(SQLITE, pool_size=0)
    assert issubclass(ConfigurationError, InvalidQueryError)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:///x.db", "sqlite+aiosqlite:///x.db"),
        ("postgres://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("postgresql://u@h:5433/db", "postgresql+asyncpg://u@h:5433/db"),
        ("postgresql+asyncpg://u@h/db", "postgresql+asyncpg://u@h/db"),
    ],
)
def test_plain_scheme_is_upgraded_to_its_async_driver(url: str, expected: str) -> None:
    assert DatabaseSettings(url).url == expected


def test_unsupported_driver_is_refused_by_name() -> None:
    with pytest.raises(ConfigurationError, match="unsupported driver 'mysql'"):
        DatabaseSettings("mysql://root@localhost/test")


def test_unparseable_url_error_does_not_repeat_the_url() -> None:
    with pytest.raises(ConfigurationError) as caught:
        DatabaseSettings("not a url with s3cret")
    assert "s3cret" not in str(caught.value)
    assert caught.value.__cause__ is None


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+asyncpg://app:s3cret@db:5432/app",
        "postgresql+asyncpg://app@db/app?password=s3cret",
        "postgresql+asyncpg://app:s3cret%40x%25y@db/app",
    ],
)
def test_password_never_appears_in_repr_or_masked_url(url: str) -> None:
    settings = DatabaseSettings(url)
    for text in (repr(settings), str(settings), settings.masked_url, mask_url(url)):
        assert "s3cret" not in text
    assert "***" in settings.masked_url


def test_repr_shows_changed_settings() -> None:
    text = repr(DatabaseSettings(SQLITE, pool_size=3))
    assert text == "DatabaseSettings(url='sqlite+aiosqlite:///app.db', pool_size=3)"


def test_from_env_reads_database_url_and_prefixed_variables() -> None:
    settings = DatabaseSettings.from_env(
        {
            "DATABASE_URL": "postgresql://u@h/db",
            "ASYNCDAL_POOL_SIZE": "4",
            "ASYNCDAL_STATEMENT_TIMEOUT": "2.5",
            "ASYNCDAL_POOL_RECYCLE": "none",
            "ASYNCDAL_PGBOUNCER": "yes",
            "ASYNCDAL_APPLICATION_NAME": "billing",
        }
    )
    assert settings.pool_size == 4
    assert settings.statement_timeout == 2.5
    assert settings.pool_recycle is None
    assert settings.pgbouncer is True
    assert settings.application_name == "billing"


def test_from_env_without_database_url_says_so() -> None:
    with pytest.raises(ConfigurationError, match="DATABASE_URL is not set"):
        DatabaseSettings.from_env({})


@pytest.mark.parametrize(
    ("name", "raw", "message"),
    [
        ("ASYNCDAL_POOL_SIZE", "ten", "ASYNCDAL_POOL_SIZE must be an integer, got 'ten'"),
        ("ASYNCDAL_ECHO", "maybe", "ASYNCDAL_ECHO must be a boolean"),
        ("ASYNCDAL_POOL_TIMEOUT", "soon", "ASYNCDAL_POOL_TIMEOUT must be a number of seconds"),
        ("ASYNCDAL_POOL_SIZE", "0", "pool_size must be >= 1, got 0"),
    ],
)
def test_bad_environment_variable_is_named(name: str, raw: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        DatabaseSettings.from_env({"DATABASE_URL": SQLITE, name: raw})


def test_replace_validates_again() -> None:
    settings = DatabaseSettings(SQLITE)
    assert settings.replace(pool_size=2).pool_size == 2
    with pytest.raises(ConfigurationError, match="pool_size"):
        settings.replace(pool_size=0)


def test_in_memory_sqlite_is_detected() -> None:
    assert DatabaseSettings("sqlite+aiosqlite://").is_memory
    assert DatabaseSettings("sqlite+aiosqlite:///:memory:").is_memory
    assert not DatabaseSettings(SQLITE).is_memory
