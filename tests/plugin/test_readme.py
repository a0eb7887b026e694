"""The README's "Testing your service" blocks are what a project would write: run them as one,
on both backends (with the repository's alembic.ini and revisions, which its conftest migrates)."""

from __future__ import annotations

import re
import shutil
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def readme_block(after: str) -> str:
    """The first ```python block after the line that starts with ``after``."""
    text = (REPO / "README.md").read_text()
    start = text.index(after)
    found = re.search(r"```python\n(.*?)```", text[start:], re.DOTALL)
    assert found is not None, f"no python block after {after!r} in README.md"
    return found.group(1)


def test_the_readme_testing_examples_pass(pytester: pytest.Pytester, child_backend: str) -> None:
    shutil.copy(REPO / "alembic.ini", pytester.path / "alembic.ini")
    shutil.copytree(
        REPO / "alembic", pytester.path / "alembic", ignore=shutil.ignore_patterns("__pycache__")
    )
    pytester.makeini(
        textwrap.dedent(
            """\
            [pytest]
            asyncio_mode = auto
            asyncio_default_fixture_loop_scope = session
            asyncio_default_test_loop_scope = session
            filterwarnings = error
            """
        )
    )
    pytester.makeconftest(readme_block("`tests/conftest.py` (a test runs this block"))
    pytester.makepyfile(test_users=readme_block("`tests/test_users.py`, one example per"))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)
