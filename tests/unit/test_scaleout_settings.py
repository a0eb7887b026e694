"""The scale-out settings (replicas, read-your-writes, lag, failure, migration URL): validated
eagerly, read from the environment, passwords never shown; and the routing rules that need no
server (commit tokens, pinning)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from asyncdal import Database, DatabaseSettings
from asyncdal.errors import ConfigurationError, InvalidQueryError
from asyncdal.routing import parse_position, pinned

PRIMARY = "postgresql+asyncpg://app:s3cret@db1:5432/app"
REPLICAS = ("postgres://app:r3plica@db2/app", "postgresql://app:r3plica@db3:5433/app")


def test_defaults_have_no_replicas_and_document_their_limits() -> None:
    settings = DatabaseSettings(PRIMARY)
    assert settings.replica_urls == ()
    assert settings.migration_url is None
    assert (settings.read_your_writes_timeout, settings.replica_check_interval) == (1.0, 1.0)
    assert (settings.replica_retry_after, settings.replica_fallback) == (5.0, "primary")
    assert settings.replica_max_lag_bytes == 8 * 1024 * 1024


def test_replica_urls_are_normalised_to_asyncpg_and_masked_in_repr() -> None:
    settings = DatabaseSettings(PRIMARY, replica_urls=REPLICAS, migration_url=PRIMARY)
    assert settings.replica_urls == (
        "postgresql+asyncpg://app:r3plica@db2/app",
        "postgresql+asyncpg://app:r3plica@db3:5433/app",
    )
    shown = repr(settings)
    assert "r3plica" not in shown
    assert "s3cret" not in shown
    assert "replica_urls=('postgresql+asyncpg://app:***@db2/app'" in shown
    assert "migration_url='postgresql+asyncpg://app:***@db1:5432/app'" in shown
    assert settings.masked_replica_urls[1] == "postgresql+asyncpg://app:***@db3:5433/app"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"replica_urls": "postgresql://h/db"},
            "replica_urls must be a tuple of URL strings, got str",
        ),
        ({"replica_urls": ("mysql://h/db",)}, "replica_urls[0] uses unsupported driver 'mysql'"),
        ({"replica_urls": ("not a url",)}, "replica_urls[0] is not a valid database URL"),
        ({"read_your_writes_timeout": -1}, "read_your_writes_timeout must be >= 0 seconds, got -1"),
        ({"replica_retry_after": -0.5}, "replica_retry_after must be >= 0 seconds, got -0.5"),
        ({"replica_check_interval": 0}, "replica_check_interval must be > 0 seconds, got 0"),
        ({"replica_max_lag_bytes": -1}, "replica_max_lag_bytes must be an integer >= 0, got -1"),
        ({"replica_max_lag_bytes": 1.5}, "replica_max_lag_bytes must be an integer >= 0, got 1.5"),
        (
            {"replica_fallback": "nowhere"},
            "replica_fallback must be 'primary' or 'raise', got 'nowhere'",
        ),
        ({"migration_url": "sqlite:///x.db"}, "migration_url must use the same backend as url"),
    ],
)
def test_invalid_scale_out_settings_are_refused_with_field_and_value_named(
    changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigurationError) as raised:
        DatabaseSettings(PRIMARY, **changes)
    assert message in str(raised.value)


def test_replicas_of_a_sqlite_database_are_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="replicas need PostgreSQL"):
        DatabaseSettings("sqlite+aiosqlite:///app.db", replica_urls=REPLICAS[:1])
    with pytest.raises(ConfigurationError, match="replica_urls\\[0\\]: replicas need PostgreSQL"):
        DatabaseSettings(PRIMARY, replica_urls=("sqlite:///r.db",))


def test_a_bad_replica_url_never_repeats_its_password() -> None:
    with pytest.raises(ConfigurationError) as raised:
        DatabaseSettings(PRIMARY, replica_urls=("postgresql://u:hunter2@h:notaport/db",))
    assert "hunter2" not in str(raised.value)


def test_from_env_reads_comma_separated_replicas_and_the_other_scale_out_settings() -> None:
    settings = DatabaseSettings.from_env(
        {
            "DATABASE_URL": PRIMARY,
            "ASYNCDAL_REPLICA_URLS": f" {REPLICAS[0]} , {REPLICAS[1]},",
            "ASYNCDAL_READ_YOUR_WRITES_TIMEOUT": "0.25",
            "ASYNCDAL_REPLICA_MAX_LAG_BYTES": "65536",
            "ASYNCDAL_REPLICA_CHECK_INTERVAL": "2",
            "ASYNCDAL_REPLICA_RETRY_AFTER": "10",
            "ASYNCDAL_REPLICA_FALLBACK": "raise",
            "ASYNCDAL_MIGRATION_URL": "postgresql://owner@db1/app",
        }
    )
    assert len(settings.replica_urls) == 2
    assert settings.read_your_writes_timeout == 0.25
    assert settings.replica_max_lag_bytes == 65536
    assert (settings.replica_check_interval, settings.replica_retry_after) == (2.0, 10.0)
    assert settings.replica_fallback == "raise"
    assert settings.migration_url == "postgresql+asyncpg://owner@db1/app"
    cleared = DatabaseSettings.from_env(
        {"DATABASE_URL": PRIMARY, "ASYNCDAL_REPLICA_URLS": "", "ASYNCDAL_MIGRATION_URL": "none"}
    )
    assert (cleared.replica_urls, cleared.migration_url) == ((), None)


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        (
            "ASYNCDAL_REPLICA_MAX_LAG_BYTES",
            "lots",
            "ASYNCDAL_REPLICA_MAX_LAG_BYTES must be an integer",
        ),
        ("ASYNCDAL_REPLICA_FALLBACK", "sometimes", "replica_fallback must be 'primary' or 'raise'"),
        ("ASYNCDAL_REPLICA_URLS", "mysql://h/db", "replica_urls[0] uses unsupported driver"),
    ],
)
def test_from_env_names_the_variable_or_field_that_does_not_parse(
    variable: str, value: str, message: str
) -> None:
    with pytest.raises(ConfigurationError) as raised:
        DatabaseSettings.from_env({"DATABASE_URL": PRIMARY, variable: value})
    assert message in str(raised.value)


@pytest.mark.parametrize(
    ("token", "position"),
    [("0/0", 0), ("0/16B3748", 0x16B3748), ("1/0", 1 << 32), ("FFFFFFFF/FFFFFFFF", 2**64 - 1)],
)
def test_commit_tokens_order_as_wal_positions(token: str, position: int) -> None:
    assert parse_position(token) == position


@pytest.mark.parametrize("token", ["", "0", "0/", "/1", "x/1", "0/1/2", "123456789/0"])
def test_a_malformed_token_is_refused_naming_it(token: str) -> None:
    with pytest.raises(InvalidQueryError, match="after must be a commit_token"):
        parse_position(token)


async def test_pin_primary_is_a_context_variable_of_the_task_that_entered_it() -> None:
    db = Database(PRIMARY)
    other = Database(PRIMARY)
    seen: list[bool] = []

    async def elsewhere() -> None:
        seen.append(pinned(db))

    with db.pin_primary():
        assert pinned(db)
        assert not pinned(other)
        await asyncio.create_task(elsewhere())  # started inside: it inherits the pin
        with db.pin_primary():  # nesting is harmless
            assert pinned(db)
        assert pinned(db)
    outside = asyncio.create_task(elsewhere())
    await outside
    assert seen == [True, False]
    assert not pinned(db)


def test_unit_of_work_refuses_an_unknown_node() -> None:
    db = Database(PRIMARY)
    with pytest.raises(ConfigurationError, match="on must be 'primary' or None, got 'replica'"):
        db.unit_of_work(read_only=True, on="replica")  # type: ignore[arg-type]


def test_every_node_has_an_engine_and_a_pool_status_named_after_it() -> None:
    db = Database(DatabaseSettings(PRIMARY, replica_urls=REPLICAS, pool_size=3))
    assert list(db.engines) == ["primary", "replica1", "replica2"]
    assert db.engines["primary"] is db.engine
    statuses = db.pool_statuses()
    assert list(statuses) == ["primary", "replica1", "replica2"]
    assert statuses["replica2"].size == 3
    assert db.pool_status() == statuses["primary"]
    alone = Database("sqlite+aiosqlite:///never-opened.db")
    assert list(alone.engines) == list(alone.pool_statuses()) == ["primary"]
