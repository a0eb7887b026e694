"""The event loop every stack of a run shares: asyncio's own, or uvloop (the ``uvloop`` extra).

One loop for the whole run, so no stack is measured on a faster loop than another; its name and
version go into the JSON, the tables' titles and the plot's subtitle.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Final

LOOPS: Final = ("asyncio", "uvloop")


class LoopUnavailableError(RuntimeError):
    """The chosen loop's package is not installed."""


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """A factory of new event loops of the named kind.

    Raises:
        LoopUnavailableError: ``uvloop`` was asked for and is not installed.
    """
    if name == "uvloop":
        try:
            import uvloop
        except ImportError:
            raise LoopUnavailableError(
                "--loop uvloop needs the uvloop package: pip install 'asyncdal[uvloop]'"
            ) from None
        return uvloop.new_event_loop
    if name == "asyncio":
        return asyncio.new_event_loop
    raise ValueError(f"unknown loop {name!r}: expected one of {', '.join(LOOPS)}")


def describe(name: str) -> str:
    """``asyncio`` or ``uvloop 0.23.0``: what the report names the loop."""
    if name == "asyncio":
        return name
    try:
        return f"{name} {version(name)}"
    except PackageNotFoundError:
        return name
