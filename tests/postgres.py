"""A throwaway PostgreSQL cluster for the tests: `initdb` in a temporary directory, the server
on a free loopback port (its socket in that directory too), trust authentication, run as the
`postgres` system user when the tests run as root (initdb refuses root). The postmaster is
this process's child: stopped by its PID."""
from __future__ import annotations

import glob
import os
import re
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import psycopg
from psycopg import sql

from tests.helpers import free_ports, wait_for

MIN_VERSION = 13
SUPERUSER = "postgres"
NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
# Throwaway data: no fsync, so the tests are not held up by the disk of a shared host.
SETTINGS = ("listen_addresses=127.0.0.1", "fsync=off", "synchronous_commit=off",
            "full_page_writes=off", "max_connections=200", "shared_buffers=32MB")


class PostgresMissing(RuntimeError):
    """No PostgreSQL server binaries on this machine."""


def find_bindir() -> Path:
    """The newest PostgreSQL (13+) server binaries: Debian's /usr/lib/postgresql/<v>/bin, or
    initdb on the PATH."""
    found = []
    for bindir in glob.glob("/usr/lib/postgresql/*/bin"):
        version = Path(bindir).parent.name
        if version.isdigit() and int(version) >= MIN_VERSION and Path(bindir, "initdb").exists():
            found.append((int(version), Path(bindir)))
    if found:
        return max(found)[1]
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise PostgresMissing(
        "PostgreSQL's server binaries (initdb, postgres) are not installed: the tests start a "
        "throwaway cluster of their own and are never skipped. Install Debian's `postgresql` "
        "package (apt-get install postgresql), as the README's test command does.")


class PostgresCluster:
    """start(), stop(), restart(), url(dbname), create_database(name), drop_database(name)."""

    def __init__(self, bindir: Path | None = None):
        self.bindir = bindir or find_bindir()
        self.root = Path(tempfile.mkdtemp(prefix="cylindria-pg-"))
        self.data = self.root / "data"
        self.socket_dir = self.root / "socket"
        self.log_path = self.root / "postgres.log"
        self.port = free_ports(1)
        self.proc: subprocess.Popen | None = None
        self._as = {"user": SUPERUSER, "group": SUPERUSER, "extra_groups": []} \
            if os.geteuid() == 0 else {}
        self.socket_dir.mkdir()
        if self._as:
            for path in (self.root, self.socket_dir):
                shutil.chown(path, SUPERUSER, SUPERUSER)
        self._run("initdb", "-D", str(self.data), "-U", SUPERUSER, "-A", "trust", "-E", "UTF8",
                  "--no-sync")

    def _run(self, program: str, *args: str) -> None:
        """Run one of the binaries to its end (as the cluster's owner)."""
        done = subprocess.run([str(self.bindir / program), *args], cwd=self.root,
                              capture_output=True, text=True, **self._as)
        if done.returncode != 0:
            raise RuntimeError(f"{program} failed ({done.returncode}): {done.stderr.strip()}")

    def start(self) -> "PostgresCluster":
        """Start the server and wait until it accepts connections."""
        settings = [arg for setting in SETTINGS for arg in ("-c", setting)]
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(
                [str(self.bindir / "postgres"), "-D", str(self.data), "-p", str(self.port),
                 "-k", str(self.socket_dir), *settings],
                cwd=self.root, stdout=log, stderr=subprocess.STDOUT, **self._as)
        finally:
            log.close()
        wait_for(self._accepting, timeout=60, interval=0.05, message="PostgreSQL to start")
        return self

    def _accepting(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"PostgreSQL exited with {self.proc.returncode}: "
                               f"{self.log_path.read_text(errors='replace')[-2000:]}")
        try:
            with psycopg.connect(self.url("postgres"), connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    def stop(self) -> None:
        """Fast shutdown (clients cut off, nothing committed lost), waited for by PID."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        self.proc = None

    def restart(self) -> None:
        """Stop, then start again on the same port and data."""
        self.stop()
        self.start()

    def url(self, dbname: str) -> str:
        """A libpq URL for a database of this cluster (over TCP on loopback)."""
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, name: str) -> str:
        """A new empty database; its URL."""
        self._admin(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(_checked(name))))
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop a database, its connections cut."""
        self._admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(_checked(name))))

    def _admin(self, statement: sql.Composed) -> None:
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(statement)

    def close(self) -> None:
        """Stop the server and remove its directory."""
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "PostgresCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


def _checked(name: str) -> str:
    """A database name the tests made (lower-case identifier)."""
    if not NAME.fullmatch(name):
        raise ValueError(f"not a test database name: {name!r}")
    return name
