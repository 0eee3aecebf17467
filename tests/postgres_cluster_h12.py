"""A throwaway PostgreSQL cluster for tests: initdb + pg_ctl in a temporary dir, on a free
loopback port, trust auth, stopped by its PID. No pre-existing server, no Docker.

(h12's copy for the instance lock's tests: the lead merges it into tests/postgres.py.)
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from tests.helpers import free_ports, wait_for

PG_BIN = Path(os.environ.get("CYLINDRIA_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
PG_USER = "postgres"  # initdb refuses root: as root, the cluster runs as this system user


class PostgresCluster:
    """One PostgreSQL server of its own: `start()`, `url`, `stop()` (or `with`)."""

    def __init__(self):
        self.root: Path | None = None
        self.port = 0
        self.pid: int | None = None

    @property
    def url(self) -> str:
        """The superuser's URL of the cluster's `postgres` database, over loopback TCP."""
        return f"postgresql://{PG_USER}@127.0.0.1:{self.port}/postgres"

    def start(self) -> "PostgresCluster":
        """initdb, then start the server on a free loopback port and wait until it is up."""
        # Not under pytest's tmp_path: its parents are 0700 root's, which `postgres` cannot enter.
        self.root = Path(tempfile.mkdtemp(prefix="cylindria-pg-"))
        self._give_to_postgres(self.root)
        data = self.root / "data"
        self._run(PG_BIN / "initdb", "-D", data, "-U", PG_USER, "-A", "trust", "-E", "UTF8",
                  "--locale=C", "--no-sync")
        self.port = free_ports(1)
        options = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} "
                   "-c fsync=off -c full_page_writes=off")
        self._run(PG_BIN / "pg_ctl", "-D", data, "-l", self.root / "server.log", "-o", options,
                  "-w", "-t", "60", "start")
        self.pid = int((data / "postmaster.pid").read_text().split()[0])
        return self

    def stop(self) -> None:
        """Fast shutdown by the server's PID, wait for it to end, and delete the cluster."""
        if self.pid is not None:
            try:
                os.kill(self.pid, signal.SIGINT)  # PostgreSQL's "fast" shutdown
                wait_for(lambda: not _alive(self.pid), timeout=60, message="PostgreSQL to stop")
            except ProcessLookupError:
                pass
            self.pid = None
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def log(self) -> str:
        """The server's log so far (for a failing test's message)."""
        path = self.root / "server.log" if self.root else None
        return path.read_text(errors="replace") if path and path.exists() else ""

    def __enter__(self) -> "PostgresCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _run(self, *args) -> None:
        """Run a PostgreSQL tool as the cluster's user; its output in the error if it fails."""
        done = subprocess.run([str(a) for a in args], capture_output=True, text=True,
                              timeout=120, user=PG_USER if os.geteuid() == 0 else None,
                              env={**os.environ, "LC_ALL": "C"})
        if done.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({done.returncode}): {done.stdout}{done.stderr}"
                               f"{self.log()}")

    @staticmethod
    def _give_to_postgres(path: Path) -> None:
        if os.geteuid() == 0:
            shutil.chown(path, user=PG_USER)


def _alive(pid: int) -> bool:
    """Whether the process still exists (and is no zombie of ours)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
