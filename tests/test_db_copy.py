"""`cylindria db copy`: a store with every kind of row moved SQLite -> PostgreSQL -> SQLite
and compared row by row, a real Cylindria serving the copy, refusals (a non-empty target, a
clashing job id, a running Cylindria), --merge, and a copy that fails midway."""
from __future__ import annotations

import json
import socket
import time
import uuid
from pathlib import Path

import blake3
import psycopg
import pytest

import cylindria.cli
from comfy.inputs.assets import Asset
from comfy.jobs.job import Job, JobStatus
from cylindria.service.core import ASSETS_DIR
from cylindria.service.instance import DataDirLock, NodeLock
from cylindria.service.server import Service
from cylindria.storage import DB_FILE_NAME, OutboxRow, open_url
from cylindria.storage.copy import Side, copy_store
from cylindria.storage.records import WHOLE
from tests import workflows
from tests.conftest import make_config
from tests.helpers import Api

NOW = time.time()
WORKFLOW = json.dumps({"prompt": workflows.core()}).encode()
FILES = {"own": b"\x89PNG\r\n\x1a\n own key's image", "shared": b"GIF89a a shared image"}


def hash_of(data: bytes) -> str:
    return f"blake3:{blake3.blake3(data).hexdigest()}"


def job(job_id: str, status: JobStatus, **fields) -> Job:
    values = dict(gpu_id=0, prompt_id=f"p-{job_id}", fingerprint=f"fp-{job_id}",
                  submitted_at=NOW - 100, number=1.0, submitted_by="alice")
    values.update(fields)
    return Job(job_id=job_id, status=status, **values)


def fill(storage, data_dir: Path, prefix: str = "") -> None:
    """Every kind of row: jobs finished, failed, held, requeued and running; assets of an own
    key and shared ones with their files and a use; a pending and a delivered event;
    retention counters and the instance id."""
    finished = dict(started_at=NOW - 90, finished_at=NOW - 80)
    jobs = [
        job(f"{prefix}done", JobStatus.COMPLETED, outputs=({"node_id": "3", "filename": "a.png",
            "subfolder": "", "type": "output"},), nodes_done=3, nodes_total=3,
            labels={"project": "x"}, webhook="http://127.0.0.1:9/hook", node="host-b", **finished),
        job(f"{prefix}failed", JobStatus.FAILED, error={"type": "execution_error",
            "message": "boom"}, warnings={"missing": ["x"]}, **finished),
        job(f"{prefix}held", JobStatus.HELD, gpu_id=None, prompt_id=None, auto=True,
            priority=7, held_at=NOW - 50),
        job(f"{prefix}requeued", JobStatus.HELD, gpu_id=1, prompt_id=None, attempts=2,
            held_at=NOW - 40, cancel_requested=False),
        job(f"{prefix}running", JobStatus.RUNNING, gpu_id=1, started_at=NOW - 30,
            nodes_done=1, nodes_total=3, attempts=1, node="host-a"),
        job(f"{prefix}old", JobStatus.COMPLETED, started_at=NOW - 10_000,
            finished_at=NOW - 9_000),
    ]
    for each in jobs:
        storage.jobs.insert(each, WORKFLOW)
    old = [seq for seq, job_id in storage.jobs.expired(NOW - 5_000, 10)]
    storage.jobs.delete_expired(old, NOW - 5_000)  # a retention counter
    folder = data_dir / ASSETS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for owner, (name, data) in (("alice", ("own", FILES["own"])), ("", ("shared", FILES["shared"]))):
        hash_text = hash_of(data)
        (folder / hash_text[len("blake3:"):]).write_bytes(data)
        storage.assets.add_file(hash_text, len(data), "image/png",
                                folder / hash_text[len("blake3:"):])
        storage.assets.add(Asset(uuid.uuid4().hex, hash_text, f"{name}.png", len(data),
                                 "image/png", NOW - 60, NOW - 20, owner))
        asset = storage.assets.find(hash_text=hash_text, owner=owner)
        storage.assets.add_use(asset.id, f"{prefix}running", f"fp-{prefix}running")
    events = [OutboxRow(f"{prefix}ev-{n}", f"{prefix}done", "http://127.0.0.1:9/hook",
                        "job.completed", b'{"n": %d}' % n, NOW - 70, due_at=NOW - 60,
                        client="alice") for n in (1, 2)]
    storage.jobs.update(storage.jobs.get(f"{prefix}done"), events)
    storage.outbox.retry(f"{prefix}ev-1", "503 from the receiver", NOW + 30)  # pending, 1 try
    storage.outbox.delivered(f"{prefix}ev-2", NOW - 55)
    storage.meta.get("instance_id", f"{prefix}beef")


def dump(storage) -> dict:
    """Every row of a store, kind by kind, as a copy reads them."""
    return {kind: [row for rows in storage.whole.read(kind) for row in rows] for kind in WHOLE}


def sqlite_url(data_dir: Path) -> str:
    return f"sqlite:///{data_dir / DB_FILE_NAME}"


def opened(url: str, data_dir: Path):
    return open_url(url, data_dir=data_dir)


@pytest.fixture
def pg(postgres_cluster):
    """Empty PostgreSQL databases of the session's cluster: pg() -> a new one's URL."""
    names = []

    def new() -> str:
        names.append(f"copy_{uuid.uuid4().hex}")
        return postgres_cluster.create_database(names[-1])
    yield new
    for name in names:
        postgres_cluster.drop_database(name)


def run_on(url: str, statement: str) -> list:
    """A statement's rows, read from a PostgreSQL database outside Cylindria."""
    with psycopg.connect(url) as conn:
        return conn.execute(statement).fetchall()


def run(capsys, *args: str) -> tuple[int, str, str]:
    """`cylindria db copy ...` in this process: exit code, stdout, stderr."""
    code = cylindria.cli.main(["db", "copy", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_store_goes_to_postgresql_and_back_row_by_row_and_serves(tmp_path, pg, capsys, fakes):
    first, second, third = (tmp_path / name for name in ("first", "second", "third"))
    source = open_url(None, data_dir=first)
    fill(source, first)
    expected = dump(source)
    expected_jobs = source.jobs.load("local")
    source.close()
    url = pg()

    code, out, err = run(capsys, "--from", str(first / DB_FILE_NAME), "--to", url,
                         "--to-data-dir", str(second))
    assert (code, err) == (0, "")
    table = {line[:19].strip(): line[19:].split() for line in out.splitlines()[1:]}
    assert table["jobs"][:2] == ["5", "2"]  # 5 jobs, 2 held
    assert table["assets"][0] == "2" and table["asset files"][:2] == ["2", str(sum(map(len, FILES.values())))]
    assert table["outbox events"][:2] == ["2", "1"] and table["retention counters"] == ["1"]
    assert table["asset files"][3:] == ["2", "files", "written", "to", "the", "database"]
    middle = opened(url, second)
    assert dump(middle) == expected and middle.jobs.load("local") == expected_jobs
    assert (middle.jobs.get("running").node, middle.jobs.get("done").node,  # each job's node
            middle.jobs.get("held").node) == ("host-a", "host-b", None)
    for data in FILES.values():  # the bytes are in the database, which every node reads
        assert b"".join(middle.assets.read_file(hash_of(data))) == data
    middle.close()
    assert not (second / ASSETS_DIR).exists()  # no node's cache was written

    code, out, err = run(capsys, "--from", url, "--from-data-dir", str(second),
                         "--to", sqlite_url(third))
    assert (code, err) == (0, "")
    back = opened(sqlite_url(third), third)
    assert dump(back) == expected and back.jobs.load("local") == expected_jobs
    source_again = opened(url, second)
    assert back.outbox.depth() == 1 and back.jobs.retired() == source_again.jobs.retired()
    source_again.close()  # a pool left to the garbage collector warns from its own thread
    back.close()
    for data in FILES.values():  # from the database: the source's folder has none
        assert (third / ASSETS_DIR / hash_of(data)[len("blake3:"):]).read_bytes() == data

    config = make_config(fakes, tmp_path, database=url, data_dir=second)
    with Service(config) as service:
        api = Api(service.url)
        done = api.status("done")
        assert (done["status"], done["gpu_id"], done["submitted_by"]) == ("completed", 0, "alice")
        assert done["outputs"] == [{"node_id": "3", "filename": "a.png", "subfolder": "",
                                    "type": "output"}]  # another node's: read from its row
        assert api.status("failed")["error"] == {"type": "execution_error", "message": "boom"}
        held = api.status("held")  # the dispatcher may have sent it by now
        assert held["priority"] == 7 and held["status"] in ("queued", "submitting", "running",
                                                           "completed")
        assert api.get("/jobstatus/old").status_code == 404  # retired before the copy


def test_a_move_on_one_host_keeps_the_files_where_they_are(tmp_path, pg, capsys):
    data_dir = tmp_path / "data"
    fill(open_url(None, data_dir=data_dir), data_dir)
    url = pg()
    code, out, err = run(capsys, "--from", sqlite_url(data_dir), "--to", url)
    assert code == 0, err
    assert "2 files written to the database" in out
    assert sorted(p.name for p in (data_dir / ASSETS_DIR).iterdir() if p.is_file()) == \
        sorted(hash_of(d)[len("blake3:"):] for d in FILES.values())  # kept: this node's cache
    target = opened(url, data_dir)
    assert target.assets.stored([hash_of(d) for d in FILES.values()]) == \
        {hash_of(d): True for d in FILES.values()}
    target.close()


def test_a_file_whose_bytes_are_not_its_hash_is_not_copied(tmp_path, pg, capsys):
    """A source file changed on disk: the copy fails, and the target's transaction (rows and
    bytes) is rolled back."""
    data_dir = tmp_path / "data"
    fill(open_url(None, data_dir=data_dir), data_dir)
    (data_dir / ASSETS_DIR / hash_of(FILES["own"])[len("blake3:"):]).write_bytes(b"changed")
    url = pg()
    code, out, err = run(capsys, "--from", sqlite_url(data_dir), "--to", url)
    assert (code, out) == (1, "")
    assert "the copy failed, the target is unchanged" in err and "another hash" in err
    target = opened(url, data_dir)
    assert target.whole.contents().asset_files == 0
    assert run_on(url, "SELECT COUNT(*) FROM asset_chunks") == [(0,)]
    target.close()


def test_a_non_empty_target_is_refused_without_merge(tmp_path, pg, capsys):
    source_dir, target_dir = tmp_path / "a", tmp_path / "b"
    fill(open_url(None, data_dir=source_dir), source_dir)
    url = pg()
    target = opened(url, target_dir)
    fill(target, target_dir, prefix="t-")
    before = dump(target)
    code, out, err = run(capsys, "--from", sqlite_url(source_dir), "--to", url,
                         "--to-data-dir", str(target_dir))
    assert (code, out) == (2, "")
    assert err.count("\n") == 1 and "the target is not empty: it holds 5 jobs, 2 assets" in err
    assert dump(target) == before
    target.close()


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_merge_adds_to_the_target_and_refuses_clashing_job_ids(kind, tmp_path, capsys, request):
    a, b = tmp_path / "a", tmp_path / "b"
    fill(open_url(None, data_dir=a), a)
    url = sqlite_url(b) if kind == "sqlite" else request.getfixturevalue("pg")()
    target = opened(url, b)
    fill(target, b, prefix="t-")
    before = dump(target)
    code, out, err = run(capsys, "--from", sqlite_url(a), "--to", url, "--to-data-dir", str(b),
                         "--merge")
    assert (code, err) == (0, "")
    merged = dump(target)
    assert [row[1] for row in merged["jobs"]] == \
        [row[1] for row in before["jobs"]] + [row[1] for row in dump(open_url(None, data_dir=a))["jobs"]]
    assert {row[0]: row[1] for row in merged["meta"]}["instance_id"] == "t-beef"  # the target's
    retired = {row[0]: row[1] for row in merged["meta"] if row[0].startswith("retired:")}
    assert set(retired.values()) == {"2"}  # the counters added up
    # the same owner's asset over the same file is the target's one, with both uses
    assert len(merged["assets"]) == 2 and len(merged["asset_uses"]) == 4

    c = tmp_path / "c"
    clashing = open_url(None, data_dir=c)
    clashing.jobs.insert(job("zz-new", JobStatus.COMPLETED, finished_at=NOW), WORKFLOW)
    clashing.jobs.insert(job("t-done", JobStatus.COMPLETED, finished_at=NOW), WORKFLOW)
    clashing.close()
    code, out, err = run(capsys, "--from", sqlite_url(c), "--to", url, "--to-data-dir", str(b),
                         "--merge")
    assert (code, out) == (2, "")
    assert "1 job id(s) are in both stores: t-done" in err and err.count("\n") == 1
    assert dump(target) == merged
    target.close()


def test_a_copy_that_fails_midway_leaves_the_target_as_it_was(tmp_path, pg):
    source_dir, target_dir = tmp_path / "a", tmp_path / "b"
    source = open_url(None, data_dir=source_dir)
    fill(source, source_dir)
    target_url = pg()
    target = opened(target_url, target_dir)
    target.meta.get("instance_id", "target's")
    before = dump(target)

    class Failing:
        """The source's rows, then a failure once the jobs and assets were written."""

        def __init__(self, whole):
            self.whole = whole

        def read(self, kind, batch=500):
            if kind == "events":
                raise OSError("the source's disk failed")
            return self.whole.read(kind, batch)

        def __getattr__(self, name):
            return getattr(self.whole, name)

    class Standin:
        whole = Failing(source.whole)
        assets = source.assets

    with pytest.raises(OSError):
        copy_store(Side(Standin(), source_dir / ASSETS_DIR), Side(target, target_dir / ASSETS_DIR))
    assert dump(target) == before
    assert run_on(target_url, "SELECT COUNT(*) FROM asset_chunks") == [(0,)]  # written, undone
    assert not (target_dir / ASSETS_DIR).exists() or not any((target_dir / ASSETS_DIR).iterdir())
    target.close()


def test_a_store_a_running_cylindria_holds_is_refused(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    fill(open_url(None, data_dir=a), a)
    lock = DataDirLock(b).take()  # a Cylindria on b
    try:
        code, out, err = run(capsys, "--from", sqlite_url(a), "--to", sqlite_url(b))
    finally:
        lock.release()
    assert (code, out) == (2, "")
    assert err.count("\n") == 1 and f"the data dir {b} is in use by Cylindria PID" in err
    assert not (b / DB_FILE_NAME).exists()


def test_bad_ends_are_refused_in_one_line(tmp_path, capsys):
    code, _, err = run(capsys, "--from", str(tmp_path / "none.sqlite3"), "--to", str(tmp_path / "x"))
    assert code == 2 and "no SQLite store at" in err
    fill(open_url(None, data_dir=tmp_path), tmp_path)
    code, _, err = run(capsys, "--from", sqlite_url(tmp_path), "--to", str(tmp_path / DB_FILE_NAME))
    assert code == 2 and "the same store" in err


def test_a_database_a_running_cylindria_on_this_host_holds_is_refused(tmp_path, pg, capsys):
    a = tmp_path / "a"
    fill(open_url(None, data_dir=a), a)
    url = pg()
    lock = NodeLock(url, socket.gethostname()).take()  # a Cylindria of this host on the database
    try:
        code, out, err = run(capsys, "--from", sqlite_url(a), "--to", url)
    finally:
        lock.release()
    assert (code, out) == (2, "")
    assert err.count("\n") == 1 and f"the node {socket.gethostname()} is in use by" in err
    target = opened(url, a)
    assert target.whole.contents().jobs == 0
    target.close()
