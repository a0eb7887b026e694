"""The rule shared by the tests and the benchmark for which PostgreSQL to use."""

from __future__ import annotations

from pathlib import Path

import pytest

from asyncdal import _pgserver
from asyncdal._pgserver import choose_server


def _never() -> bool:
    raise AssertionError("the default URL was probed although a server was configured")


@pytest.mark.parametrize("configured", ["postgresql+asyncpg://u:pw@db:5432/app", "embedded"])
@pytest.mark.parametrize("fallback", [True, False])
def test_a_configured_server_or_embedded_wins_without_probing_the_default(
    configured: str, fallback: bool
) -> None:
    expected = "embedded" if configured == "embedded" else "configured"
    assert choose_server(configured, _never, embedded_fallback=fallback) == expected


@pytest.mark.parametrize("fallback", [True, False])
def test_the_server_answering_at_the_default_url_comes_next(fallback: bool) -> None:
    assert choose_server(None, lambda: True, embedded_fallback=fallback) == "default"
    assert choose_server("", lambda: True, embedded_fallback=fallback) == "default"


def test_nothing_answering_falls_back_to_the_embedded_server_when_installed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_pgserver, "find_bindir", lambda: Path("/somewhere/bin"))
    assert choose_server(None, lambda: False, embedded_fallback=True) == "embedded"


def test_nothing_answering_gives_none_without_the_wheel_or_when_no_fallback_is_allowed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # No fallback is what CI asks for: a missing PostgreSQL there is a failure, not a detour.
    assert choose_server(None, lambda: False, embedded_fallback=False) == "none"
    monkeypatch.setattr(_pgserver, "find_bindir", lambda: None)
    assert choose_server(None, lambda: False, embedded_fallback=True) == "none"
