"""Every test isolated, in real pytest sessions: pytest-asyncio's auto and strict modes, function-
and session-scoped loops, both backends (the child's tests are ``_child.BEHAVIOURS``)."""

from __future__ import annotations

import pytest

from tests.plugin._child import LoopScope, Mode, project
from tests.plugin.conftest import BEHAVIOURS_COUNT


@pytest.mark.parametrize(
    ("mode", "loop_scope"),
    [("auto", "function"), ("strict", "session"), ("auto", "session"), ("strict", "function")],
)
def test_tests_that_commit_are_isolated_and_the_committing_db_is_emptied(
    pytester: pytest.Pytester, child_backend: str, mode: Mode, loop_scope: LoopScope
) -> None:
    project(pytester, mode=mode, loop_scope=loop_scope, postgres=child_backend == "postgres")
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=BEHAVIOURS_COUNT)
