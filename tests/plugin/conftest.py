"""The plugin's tests: real pytest sessions (pytester, in child processes) on both backends."""

from __future__ import annotations

import pytest

from tests.support import require_postgres

#: How many of the child's BEHAVIOURS tests there are (see _child.py).
BEHAVIOURS_COUNT = 12


@pytest.fixture(
    params=[
        pytest.param("sqlite", marks=pytest.mark.sqlite),
        pytest.param("postgres", marks=pytest.mark.postgres),
    ]
)
async def child_backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Which backend the child session tests on: its temporary SQLite file (no URL), or a
    scratch database on the test server (``ASYNCDAL_TEST_URL``)."""
    if request.param == "postgres":
        monkeypatch.setenv("ASYNCDAL_TEST_URL", await require_postgres())
    else:
        monkeypatch.delenv("ASYNCDAL_TEST_URL", raising=False)
    return str(request.param)
