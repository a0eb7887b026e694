"""``DatabaseSettings.fast_paths``: on by default, switched off directly or from the environment."""

from __future__ import annotations

import pytest

from asyncdal import DatabaseSettings
from asyncdal.errors import ConfigurationError

SQLITE = "sqlite+aiosqlite:///app.db"


def test_fast_paths_are_on_by_default_and_shown_only_when_off() -> None:
    assert DatabaseSettings(SQLITE).fast_paths is True
    assert "fast_paths" not in repr(DatabaseSettings(SQLITE))
    assert "fast_paths=False" in repr(DatabaseSettings(SQLITE, fast_paths=False))


@pytest.mark.parametrize(("raw", "expected"), [("0", False), ("off", False), ("true", True)])
def test_asyncdal_fast_paths_sets_them_from_the_environment(raw: str, expected: bool) -> None:
    env = {"DATABASE_URL": SQLITE, "ASYNCDAL_FAST_PATHS": raw}
    assert DatabaseSettings.from_env(env).fast_paths is expected


def test_a_bad_asyncdal_fast_paths_names_the_variable() -> None:
    env = {"DATABASE_URL": SQLITE, "ASYNCDAL_FAST_PATHS": "sometimes"}
    with pytest.raises(ConfigurationError, match="ASYNCDAL_FAST_PATHS must be a boolean"):
        DatabaseSettings.from_env(env)
