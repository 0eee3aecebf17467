"""One running Cylindria per data dir (SQLite) and per node name (PostgreSQL)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from types import SimpleNamespace

import pytest

from comfy.private import write_private
from cylindria.config.options import ConfigError
from cylindria.service.instance import (LOCK_FILE_NAME, DataDirLock, InstanceBusy, NodeLock,
                              take_instance_lock)
from tests import workflows
from cylindria.service.server import Service
from tests.conftest import make_config
from tests.helpers import API_KEY, Api
from tests.processes import ROOT, CylindriaProcess, terminate

HOST = socket.gethostname()


def busy_line(data_dir, pid: int) -> str:
    return (f"cylindria: error: the data dir {data_dir} is in use by Cylindria PID {pid} on "
            f"host {HOST} (stop it first, or give another --data-dir)")


def run_second(fake_url: str, data_dir) -> subprocess.CompletedProcess:
    """A second `cylindria.py` on `data_dir`, on a port of its own; expected to stop at once."""
    args = CylindriaProcess(fake_url, data_dir).args
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CYLINDRIA_")}
    return subprocess.run(args, cwd=ROOT, env=environ, capture_output=True, text=True, timeout=60)


def test_a_second_cylindria_on_one_data_dir_exits_2_naming_the_first(fakes, tmp_path):
    data_dir = tmp_path / "data"
    first = CylindriaProcess(fakes[0].url, data_dir).start()
    try:
        second = run_second(fakes[0].url, data_dir)
        assert second.returncode == 2, second.stdout + second.stderr
        assert (second.stdout + second.stderr).splitlines() == [busy_line(data_dir, first.proc.pid)]
        api = Api(first.url)
        assert api.put("/startjob/still-mine", json=workflows.core()).status_code == 201
        assert api.wait_status("still-mine", "completed")["outputs"]  # the first still dispatches
    finally:
        first.stop()


def test_a_killed_cylindria_does_not_block_the_next(fakes, tmp_path):
    """SIGKILL runs no clean-up: the OS drops the lock with the process all the same."""
    data_dir = tmp_path / "data"
    first = CylindriaProcess(fakes[0].url, data_dir).start()
    first.kill()
    assert holder(data_dir)["pid"] == first.proc.pid  # what it left behind names it
    second = CylindriaProcess(fakes[0].url, data_dir).start()
    try:
        assert holder(data_dir)["pid"] == second.proc.pid
        assert Api(second.url).get("/jobs").status_code == 200
    finally:
        second.stop()


def holder(data_dir) -> dict:
    return json.loads((data_dir / LOCK_FILE_NAME).read_text(encoding="utf-8"))


def test_the_data_dir_lock_is_one_holder_at_a_time(tmp_path):
    first = DataDirLock(tmp_path / "data").take()
    with pytest.raises(InstanceBusy) as refused:
        DataDirLock(tmp_path / "data").take()
    assert isinstance(refused.value, ConfigError)  # so that the start exits 2 with its line
    assert str(refused.value) == busy_line(tmp_path / "data", os.getpid()).removeprefix(
        "cylindria: error: ")
    first.release()
    again = DataDirLock(tmp_path / "data").take()
    assert holder(tmp_path / "data") == {"pid": os.getpid(), "host": HOST}
    again.release()


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_the_lock_file_is_private(tmp_path):
    lock = DataDirLock(tmp_path / "data").take()
    try:
        assert (tmp_path / "data" / LOCK_FILE_NAME).stat().st_mode & 0o777 == 0o600
    finally:
        lock.release()


def test_a_lock_file_left_behind_does_not_block(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / LOCK_FILE_NAME).write_text(json.dumps({"pid": 1, "host": "gone"}) + "\n" * 40)
    lock = DataDirLock(data_dir).take()
    try:
        assert holder(data_dir) == {"pid": os.getpid(), "host": HOST}
    finally:
        lock.release()


HOLD = """
import sys
from types import SimpleNamespace
from pathlib import Path
from cylindria.service.instance import take_instance_lock
lock = take_instance_lock(SimpleNamespace(data_dir=Path(sys.argv[1]), database=sys.argv[2] or None,
                                          node=sys.argv[3] or None))
print("held", flush=True)
sys.stdin.read()
"""


class Holder:
    """Another process holding the instance lock until it is killed."""

    def __init__(self, data_dir, database: str = "", node: str = ""):
        self.proc = subprocess.Popen([sys.executable, "-c", HOLD, str(data_dir), database, node],
                                     cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        assert line == "held\n", self.proc.stderr.read()

    def kill(self) -> None:
        """SIGKILL by its PID (TerminateProcess on Windows)."""
        self.proc.kill()
        self.proc.wait(timeout=30)

    def close(self) -> None:
        terminate(self.proc)
        self.proc.stdin.close()
        self.proc.stdout.close()
        self.proc.stderr.close()


def test_another_process_holding_the_data_dir_is_named_and_its_death_frees_it(tmp_path):
    other = Holder(tmp_path / "data")
    try:
        with pytest.raises(InstanceBusy) as refused:
            DataDirLock(tmp_path / "data").take()
        assert f"Cylindria PID {other.proc.pid} on host {HOST}" in str(refused.value)
        other.kill()
        DataDirLock(tmp_path / "data").take().release()
    finally:
        other.close()


@pytest.fixture
def postgres(postgres_cluster):
    """A fresh database on the run's throwaway PostgreSQL (tests/postgres.py)."""
    name = f"lock_{uuid.uuid4().hex[:12]}"
    yield SimpleNamespace(url=postgres_cluster.create_database(name))
    postgres_cluster.drop_database(name)


def test_a_node_name_is_one_holder_at_a_time(postgres):
    first = NodeLock(postgres.url, "gpu-box-1").take()
    try:
        with pytest.raises(InstanceBusy) as refused:
            NodeLock(postgres.url, "gpu-box-1").take()
        assert str(refused.value) == (
            f"the node gpu-box-1 is in use by Cylindria PID {os.getpid()} on host {HOST} "
            "(stop it first, or give another --node)")
        NodeLock(postgres.url, "gpu-box-2").take().release()  # another name: another lock
    finally:
        first.release()
    NodeLock(postgres.url, "gpu-box-1").take().release()


def test_a_killed_holder_frees_its_node_name(postgres, tmp_path):
    """The server ends a session whose client is gone, and its advisory lock with it."""
    other = Holder(tmp_path / "other", postgres.url, "node-k")
    try:
        with pytest.raises(InstanceBusy) as refused:
            NodeLock(postgres.url, "node-k").take()
        assert f"Cylindria PID {other.proc.pid} on host {HOST}" in str(refused.value)
        other.kill()
        NodeLock(postgres.url, "node-k").take().release()
    finally:
        other.close()


def test_on_postgresql_both_the_data_dir_and_the_node_are_taken(postgres, tmp_path):
    first = take_instance_lock(SimpleNamespace(data_dir=tmp_path / "a", database=postgres.url,
                                               node="node-b"))
    try:
        with pytest.raises(InstanceBusy, match="data dir"):  # one data dir, two node names
            take_instance_lock(SimpleNamespace(data_dir=tmp_path / "a", database=postgres.url,
                                               node="node-c"))
        with pytest.raises(InstanceBusy, match="the node node-b"):  # one name, two data dirs
            take_instance_lock(SimpleNamespace(data_dir=tmp_path / "b", database=postgres.url,
                                               node="node-b"))
        DataDirLock(tmp_path / "b").take().release()  # the refused start kept nothing
    finally:
        first.release()


def test_the_node_name_defaults_to_the_host_name(postgres, tmp_path):
    first = take_instance_lock(SimpleNamespace(data_dir=tmp_path / "a", database=postgres.url))
    try:
        with pytest.raises(InstanceBusy, match=f"the node {HOST} "):
            NodeLock(postgres.url, HOST).take()
    finally:
        first.release()


def test_an_unreachable_database_is_one_line_without_the_password(tmp_path):
    config = SimpleNamespace(data_dir=tmp_path / "data", node="n",
                             database="postgresql://cyl:sesame@127.0.0.1:1/db?connect_timeout=5")
    with pytest.raises(ConfigError) as refused:
        take_instance_lock(config)
    assert "sesame" not in str(refused.value) and "\n" not in str(refused.value)
    DataDirLock(tmp_path / "data").take().release()  # the data dir was given back


def test_a_start_that_fails_while_building_exits_2_and_frees_the_data_dir(fakes, tmp_path):
    """A bad key entry is found after the lock is taken: one line, exit 2, the lock given back."""
    data_dir = tmp_path / "data"
    write_private(data_dir / "api_key", "short")
    args = [a for a in CylindriaProcess(fakes[0].url, data_dir).args if a != API_KEY]
    args.remove("--api-key")
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CYLINDRIA_")}
    done = subprocess.run(args, cwd=ROOT, env=environ, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert (done.stdout + done.stderr).splitlines() == [
        "cylindria: error: API keys: key entry 1: a key needs at least 8 characters"]
    with pytest.raises(ConfigError):
        Service(make_config(fakes, tmp_path, api_keys=()))
    DataDirLock(data_dir).take().release()
