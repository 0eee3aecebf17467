"""Pure logic under the Comfy API v2 surface: byte ranges, v2's statuses and error codes, the
error envelope, output ids, credentials kept out of stored workflows, and the labels column
an older database gets."""
from __future__ import annotations

import json
import sqlite3

import pytest
from hypothesis import given, strategies as st

from comfy.tracking.events import finish
from comfy.comfyui.errors import ComfyTimeout
from comfy.jobs.job import Job, JobStatus
from comfy.jobs.store import JobStore
from comfy.jobs.withheld import WithheldSecrets
from comfy.inputs.workflow import WITHHELD, parse_stored, parse_workflow, workflow_of
from cylindria.storage.sqlite import JOBS_TABLE
from tests import workflows
from tests.backends import sqlite_storage
from cylindria.web.results import parse_range, satisfiable
from cylindria.web.v2.errors import envelope
from cylindria.web.v2.shapes import Shapes, error, output_id, parse_output_id, status

KEY = "partner-secret-value"


# -- Range ------------------------------------------------------------------------------------
@pytest.mark.parametrize("header, wanted", [
    ("bytes=0-99", (0, 99)), ("bytes=100-", (100, None)), ("bytes=-5", (None, 5)),
    (" bytes = 3 - 4 ", (3, 4)), ("bytes=5-4", None), ("bytes=-", None), ("items=0-1", None),
    ("bytes=0-1,3-4", None), ("bytes=a-b", None), ("", None), (None, None)])
def test_a_single_byte_range_is_read_and_anything_else_is_none(header, wanted):
    assert parse_range(header) == wanted


@given(size=st.integers(0, 10_000), first=st.none() | st.integers(0, 12_000),
       last=st.none() | st.integers(0, 12_000))
def test_a_satisfiable_range_covers_exactly_the_bytes_a_slice_would(size, first, last):
    if first is None and last is None or first is not None and last is not None and last < first:
        return  # parse_range never gives these
    data = bytes(range(256)) * (size // 256 + 1)
    data = data[:size]
    covered = satisfiable((first, last), size)
    if first is None:  # the last `last` bytes
        expected = data[-last:] if last else b""
    else:
        expected = data[first:None if last is None else last + 1]
    if covered is None:
        assert expected == b""
    else:
        start, end = covered
        assert 0 <= start <= end < size and data[start:end + 1] == expected


# -- statuses and errors ----------------------------------------------------------------------
def job_in(state: JobStatus, **fields) -> Job:
    return Job(job_id="j", gpu_id=0, prompt_id="p", fingerprint="f", status=state, **fields)


@pytest.mark.parametrize("state, v2", [
    (JobStatus.HELD, "queued"), (JobStatus.SUBMITTING, "queued"), (JobStatus.QUEUED, "queued"),
    (JobStatus.RUNNING, "running"), (JobStatus.COMPLETED, "succeeded"),
    (JobStatus.FAILED, "failed"), (JobStatus.CANCELLED, "canceled"), (JobStatus.LOST, "failed")])
def test_every_status_reads_as_a_v2_status(state, v2):
    assert status(job_in(state)) == v2


@pytest.mark.parametrize("state, held_position, expected", [
    (JobStatus.HELD, 4, 4), (JobStatus.QUEUED, None, 2), (JobStatus.SUBMITTING, None, None),
    (JobStatus.RUNNING, None, None), (JobStatus.COMPLETED, None, None)])
def test_the_queue_position_is_cylindrias_for_a_held_job_and_comfyuis_for_a_queued_one(
        state, held_position, expected):
    job = job_in(state, queue_position=2, submitted_at=1.0)
    assert Shapes("http://h/", 60.0, None, []).summary(job, held_position)["queue_position"] \
        == expected


def test_a_running_job_asked_to_cancel_reads_canceling():
    assert status(job_in(JobStatus.RUNNING, cancel_requested=True)) == "canceling"


def test_a_lost_job_is_a_failure_with_its_own_code_with_or_without_an_error_record():
    bare = error(job_in(JobStatus.LOST))
    recorded = error(job_in(JobStatus.LOST, error={"type": "lost", "message": "ComfyUI restarted"}))
    assert bare["code"] == recorded["code"] == "job_lost"
    assert recorded["message"] == "ComfyUI restarted"


@pytest.mark.parametrize("ours, code", [
    ("comfy_rejected", "invalid_workflow"), ("asset_not_found", "missing_asset"),
    ("partner_key_lost", "partner_key_lost"), ("internal", "internal_error"),
    ("unknown", "execution_failed"), ("RuntimeError", "node_execution_error")])
def test_failure_types_map_to_v2_error_codes(ours, code):
    failed = job_in(JobStatus.FAILED, error={"type": ours, "message": "boom", "node_id": "3",
                                             "node_type": "KSampler"})
    view = error(failed)
    assert view["code"] == code and view["node_id"] == "3" and view["class_type"] == "KSampler"
    if code == "node_execution_error":
        assert view["message"] == "RuntimeError: boom"


def test_jobs_that_did_not_fail_have_no_error():
    assert error(job_in(JobStatus.COMPLETED, error={"type": "x"})) is None
    assert error(job_in(JobStatus.RUNNING)) is None


@pytest.mark.parametrize("status_in, code_in, status_out, code_out", [
    (400, "asset_not_found", 422, "missing_asset"), (404, "asset_not_found", 404, "not_found"),
    (404, "job_not_found", 404, "not_found"), (400, "ui_format_workflow", 422, "workflow_format_ui"),
    (503, "comfy_unreachable", 503, "upstream_unreachable"), (429, "queue_full", 429, "queue_full"),
    (401, "unauthorized", 401, "unauthorized")])
def test_the_envelope_translates_cylindrias_codes(status_in, code_in, status_out, code_out):
    status_v2, body = envelope(status_in, code_in, "message", {"field": "x"})
    assert (status_v2, body["error"]["code"]) == (status_out, code_out)
    assert body["error"]["message"] == "message" and body["error"]["details"] == {"field": "x"}


def test_envelope_details_are_always_an_object_or_null():
    assert envelope(400, "invalid_json", "m", ["a"])[1]["error"]["details"] == {"value": ["a"]}
    assert envelope(400, "invalid_json", "m")[1]["error"]["details"] is None


@given(job_id=st.from_regex(r"[A-Za-z0-9_.-]{1,64}", fullmatch=True), index=st.integers(0, 999_999))
def test_an_output_id_reads_back_as_its_job_and_index(job_id, index):
    assert parse_output_id(output_id(job_id, index)) == (job_id, index)


@pytest.mark.parametrize("asset_id", ["plain", "~3", "job~", "job~x", "job~1234567"])
def test_ids_that_are_not_outputs_read_as_none(asset_id):
    assert parse_output_id(asset_id) is None


# -- credentials ------------------------------------------------------------------------------
def test_credentials_are_sent_but_never_in_the_kept_body():
    extra = {"api_key_comfy_org": KEY, "client_note": "kept"}
    workflow = workflow_of(workflows.core("w"), extra)
    assert KEY.encode() not in workflow.source
    assert workflow.payload("c", "p")["extra_data"] == extra
    stored = parse_stored(workflow.source)
    assert stored.withheld_names == ("api_key_comfy_org",) and stored.withheld == {}
    assert stored.extra_data == {"client_note": "kept"}
    assert stored.with_secrets({"api_key_comfy_org": KEY}).payload("c", "p")["extra_data"] == extra


def test_a_wrapped_startjob_body_loses_its_credentials_too():
    body = json.dumps({"prompt": workflows.core("w"),
                       "extra_data": {"auth_token_comfy_org": KEY}}).encode()
    workflow = parse_workflow(body)
    assert KEY.encode() not in workflow.source
    assert parse_stored(workflow.source).withheld_names == ("auth_token_comfy_org",)


def test_a_client_cannot_claim_withheld_credentials_it_never_gave():
    body = json.dumps({"prompt": workflows.core("w"), WITHHELD: ["api_key_comfy_org"]}).encode()
    assert parse_stored(parse_workflow(body).source).withheld_names == ()


def test_withheld_secrets_live_until_their_job_ends(tmp_path):
    """Bound only when the job is created: a retry keeps what the job had, a discarded
    submission leaves none, an ended job needs them no more."""
    store = JobStore(sqlite_storage(tmp_path).jobs)
    secrets = WithheldSecrets(store)
    job = Job(job_id="j", gpu_id=0, prompt_id="p", fingerprint="f")
    store.reserve(job, b"{}", withheld={"api_key_comfy_org": KEY})
    store.reserve(job, b"{}", withheld={"api_key_comfy_org": "a retry's"})
    assert secrets.get("j") == {"api_key_comfy_org": KEY}
    assert store.discard("j", "p") and secrets.get("j") is None
    store.reserve(job, b"{}", withheld={"api_key_comfy_org": KEY})
    store.release("j", "p")
    store.change("j", finish(JobStatus.COMPLETED))
    assert secrets.get("j") is None and len(secrets) == 0


# -- database ---------------------------------------------------------------------------------
def test_an_older_database_gets_the_labels_column_and_keeps_its_rows(tmp_path):
    path = tmp_path / "jobs.sqlite3"
    older = JOBS_TABLE.replace("    held_at REAL,\n    labels TEXT,\n    webhook TEXT,\n    submitted_by TEXT",
                               "    held_at REAL")
    assert "labels" not in older and "webhook" not in older
    conn = sqlite3.connect(path)
    conn.execute(older)
    conn.execute("INSERT INTO jobs (job_id, gpu_id, prompt_id, fingerprint, status, submitted_at, "
                 "held_at) VALUES ('old', 0, 'p', 'f', 'completed', 1.0, 0.5)")
    conn.commit()
    conn.close()
    db = sqlite_storage(tmp_path).jobs
    [job] = db.load("local")
    assert job.job_id == "old" and job.status is JobStatus.COMPLETED and job.labels is None
    db.insert(Job(job_id="new", gpu_id=None, prompt_id=None, fingerprint="f", status=JobStatus.HELD,
                  submitted_at=2.0, held_at=2.0, auto=True, labels={"team": "a"}), b"{}")
    reopened = sqlite_storage(tmp_path).jobs
    assert {job.job_id: job.labels for job in reopened.load("local")} == {"old": None, "new": {"team": "a"}}


# -- output sizes: asked of ComfyUI while a client waits -----------------------------------------
class SizedComfy:
    def __init__(self):
        self.asked, self.fail = 0, False

    def view_size(self, filename, subfolder, kind, timeout=None):
        self.asked += 1
        assert timeout is not None and timeout <= 2.0  # a request waits for it
        if self.fail:
            raise ComfyTimeout("no answer", 0, may_have_run=False)
        return 1234


def test_an_output_size_is_asked_once_and_only_of_a_comfyui_known_to_answer():
    from types import SimpleNamespace

    from comfy.comfyui.outputs import QUIET_AFTER_FAILURE, OutputSizes
    now = [100.0]
    sizes, comfy = OutputSizes(clock=lambda: now[0]), SizedComfy()
    gpu = SimpleNamespace(index=0, reachable=None, client=comfy)
    output = {"node_id": "9", "filename": "a.png", "subfolder": "", "type": "output"}
    assert sizes.size(gpu, "j", output) is None and comfy.asked == 0  # not known to answer
    gpu.reachable, comfy.fail = True, True
    assert sizes.size(gpu, "j", output) is None and comfy.asked == 1
    assert sizes.size(gpu, "j", {**output, "filename": "b.png"}) is None
    assert comfy.asked == 1  # it just failed: not asked again at once, for any file
    now[0] += QUIET_AFTER_FAILURE
    comfy.fail = False
    assert sizes.size(gpu, "j", output) == 1234 and comfy.asked == 2
    assert sizes.size(gpu, "j", output) == 1234 and comfy.asked == 2  # remembered


def test_an_output_size_asked_of_another_node_is_remembered_and_a_failure_quiets_that_node():
    """A job another node holds: its output sizes are asked of that node (Shapes.size), each
    once; a node that failed to answer is not asked again at once, the others still are."""
    from comfy.comfyui.outputs import QUIET_AFTER_FAILURE, OutputSizes

    class Down(Exception):
        pass

    now, asked = [100.0], []

    def ask(node: str, size: int | None):
        def asking():
            asked.append(node)
            if size is None:
                raise Down(node)
            return size
        return asking

    sizes = OutputSizes(clock=lambda: now[0])
    output = {"node_id": "9", "filename": "a.png", "subfolder": "", "type": "output"}
    other = {**output, "filename": "b.png"}
    assert sizes.asked(("node", "b"), "j", output, ask("b", None), failures=(Down,)) is None
    assert sizes.asked(("node", "b"), "j", other, ask("b", 7), failures=(Down,)) is None
    assert sizes.asked(("node", "c"), "k", output, ask("c", 5), failures=(Down,)) == 5
    assert asked == ["b", "c"]  # b just failed: not asked again at once; c is another source
    now[0] += QUIET_AFTER_FAILURE
    assert sizes.asked(("node", "b"), "j", other, ask("b", 7), failures=(Down,)) == 7
    assert sizes.asked(("node", "b"), "j", other, ask("b", 8), failures=(Down,)) == 7
    assert asked == ["b", "c", "b"]  # remembered: an output file never changes
