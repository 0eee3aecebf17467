"""The node name's lock kept through a lost database session (PostgreSQL restarted, the lock's
connection cut): the keeper takes it again; if another Cylindria took the name meanwhile, this
one stops with an ERROR line naming it and exits 2.

A lost session is made by ending the lock's backend from another connection
(pg_terminate_backend): what a restart does to it, without stopping the run's PostgreSQL
under other tests. One test restarts a cluster of its own."""
from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import threading
import uuid
from types import SimpleNamespace

import psycopg
import pytest
from psycopg import sql

from cylindria.service.instance import APP_PREFIX, NodeLock
from cylindria.service.nodekeeper import NodeKeeper
from cylindria.storage.nodelock import SQL, NodeTaken, PostgresNodeLock, node_key
from tests.helpers import wait_for
from tests.postgres import PostgresCluster
from tests.processes import ROOT, CylindriaProcess

HOST = socket.gethostname()
ME = APP_PREFIX + f"{os.getpid()} host={HOST}"  # how this process's NodeLock names its session
OTHER = APP_PREFIX + "4242 host=elsewhere"  # a Cylindria on another host, as its session says
OTHER_NAMED = "Cylindria PID 4242 on host elsewhere"
KEEPER = "cylindria.service.nodekeeper"


@pytest.fixture
def node_db(postgres_cluster):
    """A fresh database owned by a role of its own. The node connects as that role, which a
    test can stop from logging in: the node's reconnection then fails while other sessions
    (the test's, as the superuser) go on."""
    name = f"keep_{uuid.uuid4().hex[:12]}"
    superuser = postgres_cluster.url("postgres")
    admin(superuser, "CREATE ROLE {} LOGIN", name)
    admin(superuser, "CREATE DATABASE {} OWNER {}", name, name)
    yield SimpleNamespace(
        url=f"postgresql://{name}@127.0.0.1:{postgres_cluster.port}/{name}",
        admin_url=postgres_cluster.url(name),
        logins=lambda allowed: admin(superuser, "ALTER ROLE {} " + (
            "LOGIN" if allowed else "NOLOGIN"), name))
    postgres_cluster.drop_database(name)
    admin(superuser, "DROP ROLE {}", name)


def admin(url: str, statement: str, *names: str) -> None:
    """One statement with identifiers, as the superuser."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL(statement).format(*map(sql.Identifier, names)))


def holder(url: str, node: str):
    """The session holding the node's lock (its application_name and backend PID), or None."""
    key = node_key(node)
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(SQL["holder"], ((key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF)).fetchone()
    return None if row is None else SimpleNamespace(name=row[0], pid=row[1])


def end_session(url: str, pid: int) -> None:
    """What a database restart does to one session: its backend ends."""
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()[0]


def new_holder(url: str, node: str, before: int):
    """The lock's holder once it is a session other than `before`; None until then."""
    now = holder(url, node)
    return now if now is not None and now.pid != before else None


def took(lock: PostgresNodeLock) -> bool:
    """Whether `lock` could be taken now."""
    try:
        lock.take()
    except NodeTaken:
        return False
    return True


def records(caplog, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == KEEPER and r.levelno == level]


def test_a_lost_session_is_taken_again_by_the_keeper(node_db, caplog):
    caplog.set_level(logging.INFO, logger=KEEPER)
    lock = NodeLock(node_db.url, "keep-1").take()
    lost = []
    try:
        lock.keep(lost.append)
        first = holder(node_db.admin_url, "keep-1")
        assert first.name == ME
        end_session(node_db.admin_url, first.pid)
        wait_for(lambda: records(caplog, logging.INFO), message="the lock to be held again")
        again = holder(node_db.admin_url, "keep-1")
        assert again.name == ME and again.pid != first.pid and lost == []
        assert records(caplog, logging.WARNING) == [
            "the node keep-1's lock was lost with its database session (PostgreSQL restarted "
            "or the connection was cut): taking it again"]
        assert records(caplog, logging.INFO) == ["the node keep-1's lock is held again"]
    finally:
        lock.release()
    assert holder(node_db.admin_url, "keep-1") is None  # given back before release() returned
    assert lock.keeper._thread.is_alive() is False  # release() stopped the keeper


def test_a_name_taken_while_the_session_was_gone_is_reported_naming_the_holder(node_db):
    mine = PostgresNodeLock(node_db.url, "keep-2", ME).take()
    other = PostgresNodeLock(node_db.admin_url, "keep-2", OTHER)
    holders = []
    keeper = NodeKeeper(mine, holders.append)  # its step driven here: no thread
    try:
        assert keeper.keep_once() is True and holders == []  # held: nothing to do
        end_session(node_db.admin_url, holder(node_db.admin_url, "keep-2").pid)
        wait_for(lambda: took(other), message="the other to take the name once the session ended")
        assert keeper.keep_once() is False  # this one is not that node any more
        assert [(h.application_name, h.session) for h in holders] == [
            (OTHER, holder(node_db.admin_url, "keep-2").pid)]
        assert NodeLock._named(holders[0]) == OTHER_NAMED  # as the ERROR line names it
        assert not mine.held()
    finally:
        mine.release()
        other.release()


def test_while_the_database_is_unreachable_the_keeper_waits_and_takes_it_again(node_db):
    mine = PostgresNodeLock(node_db.url, "keep-3", ME).take()
    holders = []
    keeper = NodeKeeper(mine, holders.append)
    try:
        node_db.logins(False)  # its reconnections are refused from now on
        first = holder(node_db.admin_url, "keep-3")
        end_session(node_db.admin_url, first.pid)
        wait_for(lambda: holder(node_db.admin_url, "keep-3") is None, message="the session's end")
        assert keeper.keep_once() is True and keeper.lost  # unreachable: not another's
        assert keeper.keep_once() is True and keeper.lost
        node_db.logins(True)
        assert keeper.keep_once() is True and not keeper.lost
        assert holder(node_db.admin_url, "keep-3").name == ME and holders == []
    finally:
        node_db.logins(True)
        mine.release()


def test_postgresql_restarted_under_the_lock(caplog):
    """The real thing: the server stopped and started again under a kept lock."""
    caplog.set_level(logging.INFO, logger=KEEPER)
    with PostgresCluster() as cluster:  # the test's own: the run's is never stopped
        url = cluster.create_database("restart")
        lock = NodeLock(url, "keep-4").take()
        lost = []
        try:
            lock.keep(lost.append)
            cluster.stop()
            wait_for(lambda: records(caplog, logging.WARNING), message="the loss to be noticed")
            cluster.start()
            wait_for(lambda: records(caplog, logging.INFO), timeout=30,
                     message="the lock to be held again")
            assert holder(url, "keep-4").name == ME and lost == []
            assert len(records(caplog, logging.WARNING)) == 1  # once, not at every retry
        finally:
            lock.release()


def node_process(fakes, data_dir, url: str, node: str) -> CylindriaProcess:
    return CylindriaProcess(fakes[0].url, data_dir, extra=("--database", url, "--node", node))


def test_a_cylindria_keeps_its_node_name_across_a_lost_session(node_db, fakes, tmp_path):
    first = node_process(fakes, tmp_path / "a", node_db.url, "x").start()
    try:
        was = holder(node_db.admin_url, "x")
        assert was.name == APP_PREFIX + f"{first.proc.pid} host={HOST}"
        end_session(node_db.admin_url, was.pid)
        wait_for(lambda: "the node x's lock is held again" in first.log(), timeout=30,
                 message="the first to take its name again")
        assert new_holder(node_db.admin_url, "x", was.pid).name == was.name
        second = subprocess.run(node_process(fakes, tmp_path / "b", node_db.url, "x").args,
                                cwd=ROOT, env=environment(), capture_output=True, text=True,
                                timeout=60)
        assert second.returncode == 2, second.stdout + second.stderr
        assert (second.stdout + second.stderr).splitlines() == [
            f"cylindria: error: the node x is in use by Cylindria PID {first.proc.pid} on host "
            f"{HOST} (stop it first, or give another --node)"]
        assert first.proc.poll() is None
    finally:
        first.stop()


def test_a_cylindria_whose_name_was_taken_meanwhile_stops_with_an_error(node_db, fakes,
                                                                       tmp_path):
    first = node_process(fakes, tmp_path / "a", node_db.url, "y").start()
    other = PostgresNodeLock(node_db.admin_url, "y", OTHER)
    try:
        node_db.logins(False)  # the first cannot take its name again until let in
        end_session(node_db.admin_url, holder(node_db.admin_url, "y").pid)
        wait_for(lambda: took(other), message="the other to take the name")
        wait_for(lambda: "the node y's lock was lost" in first.log(), timeout=30,
                 message="the first to notice")
        assert first.proc.poll() is None  # an unreachable database alone does not stop it
        node_db.logins(True)
        assert first.proc.wait(timeout=30) == 2
        assert (f" ERROR cylindria.service.instance: the node y was taken by {OTHER_NAMED} "
                "while this Cylindria's database session was gone: stopping") in first.log()
    finally:
        node_db.logins(True)
        first.stop()
        other.release()


def environment() -> dict:
    """This environment without CYLINDRIA_* settings (the flags say everything)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("CYLINDRIA_")}


class CuttableLink:
    """A TCP relay to PostgreSQL whose client sides can be cut while the server sides stay
    open: a network cut as the client sees it, the server's session living on until its own
    end is noticed (keepalives; here end_server_sides())."""

    def __init__(self, port: int):
        self.port = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url_port = self.listener.getsockname()[1]
        self.pairs: list[tuple[socket.socket, socket.socket]] = []
        threading.Thread(target=self._accept, name="test-link", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            server = socket.create_connection(("127.0.0.1", self.port))
            self.pairs.append((client, server))
            for source, target in ((client, server), (server, client)):
                threading.Thread(target=relay, args=(source, target), daemon=True).start()

    def cut_client_sides(self) -> None:
        """The clients see their connections end; PostgreSQL sees nothing."""
        for client, _ in self.pairs:
            client.shutdown(socket.SHUT_RDWR)
            client.close()

    def close(self) -> None:
        """Every server side ended, and no new connection taken."""
        self.listener.close()
        for sock in (sock for pair in self.pairs for sock in pair):
            with contextlib.suppress(OSError):  # shutdown wakes a relay blocked on it
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


def relay(source: socket.socket, target: socket.socket) -> None:
    """Copy one direction until either side fails; the other direction's sockets are left."""
    try:
        while data := source.recv(65536):
            target.sendall(data)
    except OSError:
        pass


def test_its_own_lost_session_still_holding_the_lock_is_waited_for(node_db, postgres_cluster):
    """A cut seen by the client only: its old session, still alive on the server, holds the
    name. That is no other Cylindria: the keeper waits for the server to end it."""
    link = CuttableLink(postgres_cluster.port)
    via_link = node_db.url.replace(f":{postgres_cluster.port}/", f":{link.url_port}/")
    mine = PostgresNodeLock(via_link, "keep-5", ME).take()
    holders = []
    keeper = NodeKeeper(mine, holders.append)
    try:
        old = holder(node_db.admin_url, "keep-5").pid
        link.cut_client_sides()
        assert keeper.keep_once() is True and keeper.lost  # its own old session: wait
        assert holder(node_db.admin_url, "keep-5").pid == old and holders == []
        end_session(node_db.admin_url, old)  # the server notices at last
        wait_for(lambda: holder(node_db.admin_url, "keep-5") is None, message="the session's end")
        assert keeper.keep_once() is True and not keeper.lost and holders == []
        assert new_holder(node_db.admin_url, "keep-5", old).name == ME
    finally:
        mine.release()
        link.close()
