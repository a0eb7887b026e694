"""A scale-out topology on loopback: a primary, streaming replicas, PgBouncer in front.

Built from ``tests.faults._cluster.Cluster`` (initdb, free ports, ``fsync=off``, run as the
``postgres`` OS user when we are root): the primary is a ``Cluster``; each replica is a
``pg_basebackup -R -X stream`` clone of it (a hot standby that streams from the primary); PgBouncer
1.18 runs in transaction mode in front of the primary with a plain configuration.

``python -m tests.scaleout._topology`` builds one and prints its URLs (for the benchmark), then
removes everything on Ctrl-C.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from asyncdal import _pgserver
from tests.faults._cluster import Cluster, ClusterError, free_port

#: The server pool PgBouncer keeps per database and user (the issue's "server pool of 2").
PGBOUNCER_POOL_SIZE = 2
#: Replicas cancel a query that blocks replay after this long (the recovery-conflict test).
MAX_STANDBY_STREAMING_DELAY = "100ms"


class Replica(Cluster):
    """A hot standby cloned from a running primary with ``pg_basebackup -R -X stream``."""

    @classmethod
    def clone(cls, primary: Cluster, name: str) -> Replica:
        """Base-backup ``primary`` into a new temp dir, configured for a port of its own."""
        base = _server_owned_tempdir(f"asyncdal-{name}-")
        replica = cls(base, primary.bindir, free_port(), primary.user)
        atexit.register(replica.remove)
        try:
            replica._run(
                "pg_basebackup",
                "-h",
                "127.0.0.1",
                "-p",
                str(primary.port),
                "-U",
                "postgres",
                "-D",
                str(replica.data),
                "-R",  # standby.signal + primary_conninfo: a streaming standby
                "-X",
                "stream",
                "--checkpoint=fast",
                "--no-sync",
            )
            settings = {
                # Appended after the primary's copied lines: the last setting wins.
                "port": str(replica.port),
                "unix_socket_directories": f"'{base}'",
                "hot_standby": "on",
                "max_standby_streaming_delay": f"'{MAX_STANDBY_STREAMING_DELAY}'",
                "wal_receiver_status_interval": "'1s'",
            }
            with (replica.data / "postgresql.conf").open("a") as conf:
                conf.write(f"\n# asyncdal scale-out tests: standby {name}\n")
                conf.writelines(f"{key} = {value}\n" for key, value in settings.items())
        except BaseException:
            replica.remove()
            raise
        return replica

    @property
    def postmaster_pid(self) -> int:
        """The postmaster's pid (first line of ``postmaster.pid``)."""
        return int((self.data / "postmaster.pid").read_text().split()[0])

    @contextlib.contextmanager
    def stopped_postmaster(self) -> Iterator[None]:
        """SIGSTOP the postmaster (new connections hang; running backends go on); SIGCONT after,
        always."""
        pid = self.postmaster_pid
        os.kill(pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(pid, signal.SIGCONT)


class PgBouncer:
    """PgBouncer in transaction mode on a free port, run as the server user, in a temp dir."""

    def __init__(
        self,
        target_port: int,
        *,
        target_host: str = "127.0.0.1",
        pool_size: int = PGBOUNCER_POOL_SIZE,
        extra_databases: dict[str, str] | None = None,
    ) -> None:
        self.base = _server_owned_tempdir("asyncdal-pgbouncer-")
        self.port = free_port()
        self.target_port = target_port
        self.ini = self.base / "pgbouncer.ini"
        self.log = self.base / "pgbouncer.log"
        self._process: subprocess.Popen[bytes] | None = None
        atexit.register(self.remove)
        databases = {"*": f"host={target_host} port={target_port}", **(extra_databases or {})}
        # The plain configuration the issue allows: transaction pooling, trust auth on
        # loopback, and no setting added for asyncdal's sake.
        lines = [
            "[databases]",
            *(f"{name} = {value}" for name, value in databases.items()),
            "",
            "[pgbouncer]",
            "listen_addr = 127.0.0.1",
            f"listen_port = {self.port}",
            f"unix_socket_dir = {self.base}",
            "auth_type = trust",
            f"auth_file = {self.base / 'userlist.txt'}",
            "pool_mode = transaction",
            f"default_pool_size = {pool_size}",
            "max_client_conn = 500",
            f"logfile = {self.log}",
            f"pidfile = {self.base / 'pgbouncer.pid'}",
            "admin_users = postgres",
            "",
        ]
        self.ini.write_text("\n".join(lines))
        (self.base / "userlist.txt").write_text('"postgres" ""\n')
        _chown_tree(self.base)

    def url(self, database: str = "postgres") -> str:
        """An asyncdal URL for ``database`` through this PgBouncer."""
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        """Start in the foreground (a child we own) and wait until it accepts connections."""
        program = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
        if not Path(program).is_file():
            raise ClusterError("pgbouncer is not installed (apt-get install -y pgbouncer)")
        server = _server_user()
        user = server.pw_name if server is not None else None
        self._process = subprocess.Popen(
            [program, str(self.ini)],
            user=user,
            cwd=self.base,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 15
        while not _accepts(self.port):
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise ClusterError(f"pgbouncer did not start:\n{self.log_tail()}")
            time.sleep(0.05)

    def remove(self) -> None:
        """Stop PgBouncer (SIGTERM, then SIGKILL) and delete its temp dir."""
        process, self._process = self._process, None
        try:
            if process is not None and process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=10)
        finally:
            shutil.rmtree(self.base, ignore_errors=True)

    def log_tail(self, lines: int = 20) -> str:
        """The end of PgBouncer's log, for error messages."""
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return "(no pgbouncer log)"


@dataclass
class Topology:
    """A running primary, its streaming replicas and a PgBouncer in front of the primary."""

    primary: Cluster
    replicas: list[Replica]
    pgbouncer: PgBouncer
    down_port: int = 0
    _removed: bool = field(default=False, repr=False)

    @classmethod
    def build(cls, replicas: int = 2, pgbouncer_pool_size: int = PGBOUNCER_POOL_SIZE) -> Topology:
        """Create and start everything; on any failure, remove what was made and re-raise."""
        primary = Cluster.create()
        made: list[Replica] = []
        bouncer: PgBouncer | None = None
        try:
            with (primary.data / "postgresql.conf").open("a") as conf:
                # Streaming needs senders and a little retained WAL. synchronous_commit on (it
                # costs nothing with fsync off): otherwise a commit's WAL reaches the replicas
                # only with the WAL writer's next flush, up to 200 ms later.
                conf.write(
                    "max_wal_senders = 10\nwal_keep_size = '64MB'\nsynchronous_commit = on\n"
                )
            primary.start()
            for i in range(1, replicas + 1):
                replica = Replica.clone(primary, f"replica{i}")
                made.append(replica)
                replica.start()
            # A database entry that points at a closed port: "the primary is down" behind
            # PgBouncer, without stopping the real primary the replicas stream from.
            down_port = free_port()
            bouncer = PgBouncer(
                primary.port,
                pool_size=pgbouncer_pool_size,
                extra_databases={"down": f"host=127.0.0.1 port={down_port} dbname=postgres"},
            )
            bouncer.start()
            topology = cls(primary, made, bouncer, down_port)
            topology.wait_until_streaming()
        except BaseException:
            if bouncer is not None:
                bouncer.remove()
            for replica in made:
                replica.remove()
            primary.remove()
            raise
        return topology

    def wait_until_streaming(self, within: float = 60.0) -> None:
        """Block until ``pg_stat_replication`` on the primary shows every replica streaming."""
        deadline = time.monotonic() + within
        while True:
            out = self.primary._run(
                "psql",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.primary.port),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-Atc",
                "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
                check=False,
            ).stdout.strip()
            if out == str(len(self.replicas)):
                return
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"only {out or 0} of {len(self.replicas)} replicas streaming after "
                    f"{within:.0f} s\n{self.primary.log_tail()}"
                )
            time.sleep(0.1)

    def remove(self) -> None:
        """Stop and delete everything (PgBouncer, replicas, primary); safe to call twice."""
        if self._removed:
            return
        self._removed = True
        try:
            self.pgbouncer.remove()
        finally:
            for replica in self.replicas:
                with contextlib.suppress(Exception):
                    replica.remove()
            self.primary.remove()


def _server_owned_tempdir(prefix: str) -> Path:
    # As root, under /tmp: the server user must be able to reach the directory.
    as_root = os.geteuid() == 0
    base = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp" if as_root else None))
    _chown_tree(base)
    return base


def _server_user() -> pwd.struct_passwd | None:
    # The same OS user as the clusters' (tests/faults/_cluster.py): None unless we are root.
    try:
        return _pgserver.server_user()
    except _pgserver.EmbeddedPostgresError as error:
        raise ClusterError(str(error)) from None


def _chown_tree(path: Path) -> None:
    user = _server_user()
    if user is None:
        return
    for root, dirs, files in os.walk(path):
        os.chown(root, user.pw_uid, user.pw_gid)
        for name in dirs + files:
            os.chown(os.path.join(root, name), user.pw_uid, user.pw_gid)


def _accepts(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.2)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def main() -> None:
    """Build a topology, print its URLs, wait for Ctrl-C (or SIGTERM), remove it."""
    # A server pool as large as the benchmark's client pools, so that PgBouncer is measured
    # rather than a queue in front of 2 server connections.
    topology = Topology.build(pgbouncer_pool_size=20)
    try:
        primary = topology.primary.url("postgres")
        replicas = ",".join(r.url("postgres") for r in topology.replicas)
        print(f"primary   {primary}")
        print(f"replicas  {replicas}")
        print(f"pgbouncer {topology.pgbouncer.url('postgres')}")
        print(
            "\npython -m benchmarks --backends postgresql --workloads read,write --stacks uow "
            f"--postgres {primary} --replicas {replicas} "
            f"--pgbouncer {topology.pgbouncer.url('postgres')}\n\nCtrl-C removes everything.",
            flush=True,
        )
        # Started in the background, a process ignores SIGINT: take it, and SIGTERM, as Ctrl-C.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
    finally:
        topology.remove()


if __name__ == "__main__":
    main()
