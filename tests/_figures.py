"""The figures tests assert, printed after the run under a heading of their own.

A ``conftest.py`` makes one ``Figures`` and exposes its fixture and its summary hook::

    FIGURES = Figures("fault figures")
    figure = FIGURES.fixture()


    def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
        FIGURES.print(terminalreporter)

A test then calls ``figure("17 failed typed, 33 succeeded")``; the line also goes into the test's
``user_properties`` (JUnit XML). The issue notes quote these lines.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

#: What the ``figure`` fixture gives a test.
Figure = Callable[[str], None]


class Figures:
    """The figures of one folder of tests."""

    def __init__(self, heading: str) -> None:
        self.heading = heading
        self.lines: list[str] = []

    def fixture(self) -> Any:
        """The ``figure`` fixture, recording into this collection."""

        @pytest.fixture
        def figure(request: pytest.FixtureRequest) -> Figure:
            """``figure("1000 reads: 0 on the primary")``: a result, printed after the run."""

            def record(text: str) -> None:
                self.lines.append(f"{request.node.name}: {text}")
                request.node.user_properties.append(("figure", text))

            return record

        return figure

    def print(self, terminalreporter: pytest.TerminalReporter) -> None:
        """Print the figures recorded, if any, under the heading."""
        if self.lines:
            terminalreporter.section(self.heading)
            for line in self.lines:
                terminalreporter.write_line(line)
