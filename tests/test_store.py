"""The job store: write-through persistence, forward-only states, the submit handshake
(on every backend)."""
import threading

import pytest

from comfy.tracking.events import finish
from comfy.jobs.job import Job, JobStatus
from comfy.jobs.store import JobStore


@pytest.fixture
def storage(backend):
    return backend.open()


@pytest.fixture
def store(storage):
    return JobStore(storage.jobs)


def new_job(job_id="job-1", gpu_id=0, prompt_id="p-1") -> Job:
    return Job(job_id=job_id, gpu_id=gpu_id, prompt_id=prompt_id, fingerprint="f")


def queued(job: Job) -> None:
    job.status = JobStatus.QUEUED


def test_reserve_records_submitting_and_a_second_reserve_returns_it(store):
    job, created = store.reserve(new_job(), b"{}")
    assert created and job.status == JobStatus.SUBMITTING and store.in_flight("job-1")
    again, created = store.reserve(new_job(prompt_id="p-other"), b"{}")
    assert not created and again.prompt_id == "p-1"


def test_every_state_change_survives_a_reopen(store, backend):
    store.reserve(new_job(), b"{}")
    store.release("job-1", "p-1")
    store.change("job-1", queued)
    store.change("job-1", finish(JobStatus.COMPLETED, outputs=[{"node_id": "3", "filename": "a.png",
                                                                "subfolder": "", "type": "output"}]))
    reopened = JobStore(backend.open().jobs)
    job = reopened.get("job-1")
    assert job.status == JobStatus.COMPLETED and job.outputs[0]["filename"] == "a.png"
    assert job.finished_at is not None and reopened.active() == []


def test_states_never_move_backwards(store):
    store.reserve(new_job(), b"{}")
    store.change("job-1", lambda j: setattr(j, "status", JobStatus.RUNNING))
    job = store.change("job-1", queued)
    assert job.status == JobStatus.RUNNING
    store.change("job-1", finish(JobStatus.FAILED, error={"type": "x"}))
    assert store.change("job-1", finish(JobStatus.COMPLETED)).status == JobStatus.FAILED


def test_lost_can_still_learn_its_true_outcome(store):
    store.reserve(new_job(), b"{}")
    store.change("job-1", finish(JobStatus.LOST))
    job = store.change("job-1", finish(JobStatus.COMPLETED), allow_finished=True)
    assert job.status == JobStatus.COMPLETED and job.error is None


def test_discard_leaves_nothing_so_a_retry_can_reserve_again(store, backend):
    store.reserve(new_job(), b"{}")
    store.discard("job-1", "p-1")
    assert store.get("job-1") is None and not store.in_flight("job-1")
    assert JobStore(backend.open().jobs).get("job-1") is None
    assert store.reserve(new_job(), b"{}")[1]


def test_discard_never_removes_an_accepted_job(store):
    store.reserve(new_job(), b"{}")
    store.change("job-1", queued)
    store.discard("job-1", "p-1")
    assert store.get("job-1").status == JobStatus.QUEUED


def test_discard_and_change_act_only_on_the_submission_they_name(store):
    """A judgment of an older submission never lands on a newer one under the same id."""
    store.reserve(new_job(prompt_id="p-old"), b"{}")
    store.release("job-1", "p-old")
    assert store.discard("job-1", "p-old")
    store.reserve(new_job(prompt_id="p-new"), b"{}")  # a retry's submission, its POST under way
    assert not store.discard("job-1", "p-old")
    assert store.change("job-1", queued, prompt_id="p-old") is None
    store.release("job-1", "p-old")  # the old POST's end must not clear the new one's flag
    job = store.get("job-1")
    assert job.prompt_id == "p-new" and job.status == JobStatus.SUBMITTING
    assert store.in_flight("job-1") and store.settled_active(0) == []


def test_wait_settled_returns_when_the_post_is_over(store):
    store.reserve(new_job(), b"{}")
    threading.Timer(0.05, lambda: (store.change("job-1", queued), store.release("job-1", "p-1"))).start()
    assert store.wait_settled("job-1", timeout=10).status == JobStatus.QUEUED


def test_prompt_index_only_covers_unfinished_jobs_of_that_gpu(store):
    store.reserve(new_job(gpu_id=1), b"{}")
    assert store.change_by_prompt(0, "p-1", queued) is None
    assert store.change_by_prompt(1, "p-1", queued).status == JobStatus.QUEUED
    store.change("job-1", finish(JobStatus.COMPLETED))
    assert store.change_by_prompt(1, "p-1", queued) is None


def test_settled_active_leaves_out_jobs_whose_post_is_under_way(store):
    store.reserve(new_job("a", prompt_id="pa"), b"{}")
    store.reserve(new_job("b", prompt_id="pb"), b"{}")
    store.release("b", "pb")
    assert [j.job_id for j in store.settled_active(0)] == ["b"]


def test_instance_id_is_stable(storage, backend):
    first = storage.meta.get("instance_id", "abcd")
    assert storage.meta.get("instance_id", "zzzz") == first == "abcd"
    assert backend.open().meta.get("instance_id", "other") == "abcd"
