"""Who uses an asset: a submission under way (its use recorded, its job not reserved yet)
holds its assets against a delete and the retention sweep; a refused submission leaves no use
behind, and a job's uses leave with the job. And a file that cannot be unlinked yet (an open
file on Windows) is retried, never orphaned. On every backend."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from comfy.jobs.retention import RetentionSweep
from cylindria.service.server import Service
from tests import workflows
from tests.conftest import make_config
from tests.fake_comfy.png import output_png
from tests.helpers import Api, wait_for
from tests.test_assets import asset_ref, upload

DAY = 86400.0
PNG = output_png("raced.png", 8)


@pytest.fixture
def database_url(backend):
    """The servers of this module keep their rows on each backend in turn."""
    return backend.database


class Clock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


class BlockedReservation:
    """Stands in for the store's reserve: the submission stops there (its asset use already
    recorded) until released."""

    def __init__(self, store, monkeypatch):
        self.real = store.reserve
        self.entered, self.release = threading.Event(), threading.Event()
        monkeypatch.setattr(store, "reserve", self)

    def __call__(self, *args, **kwargs):
        self.entered.set()
        assert self.release.wait(30), "the test never released the reservation"
        return self.real(*args, **kwargs)


def submit_in_background(api: Api, job_id: str, asset: dict, gpu: str):
    """Startjob with this asset on a thread of its own: (the thread, its answers)."""
    workflow = workflows.core(job_id)
    workflow["3"]["inputs"]["filename_prefix"] = asset_ref(asset)
    answers = []
    thread = threading.Thread(target=lambda: answers.append(
        api.put(f"/startjob/{job_id}?GpuId={gpu}", json=workflow)))
    thread.start()
    return thread, answers


def use_rows(service) -> list[str]:
    """The ids of the jobs with a recorded asset use."""
    return sorted(service.context.storage.assets.users_ever())


@pytest.mark.parametrize("gpu", ["0", "auto"])
def test_a_delete_while_a_submission_is_under_way_is_409(service, api, monkeypatch, gpu):
    asset = upload(api, PNG).json()
    blocked = BlockedReservation(service.context.store, monkeypatch)
    thread, answers = submit_in_background(api, "racing", asset, gpu)
    try:
        assert blocked.entered.wait(30)
        refused = api.delete(f"/assets/{asset['id']}")
        assert refused.status_code == 409 and refused.json()["code"] == "asset_in_use"
    finally:
        blocked.release.set()
        thread.join(30)
    assert answers[0].status_code == 201, answers[0].text
    api.wait_status("racing", "completed")
    assert api.delete(f"/assets/{asset['id']}").status_code == 200


def test_the_sweep_keeps_an_asset_a_submission_under_way_uses(service, api, monkeypatch):
    context = service.context
    asset = upload(api, PNG).json()
    blocked = BlockedReservation(context.store, monkeypatch)
    later = Clock(time.time() + 2 * DAY)  # the asset unused for longer than the retention
    sweep = RetentionSweep(context.store, context.storage.jobs, DAY, clock=later,
                           assets=context.assets)
    thread, answers = submit_in_background(api, "swept", asset, "0")
    try:
        assert blocked.entered.wait(30)
        assert sweep.sweep_assets() == 0
        assert api.get(f"/assets/{asset['id']}").status_code == 200
    finally:
        blocked.release.set()
        thread.join(30)
        sweep.stop()
    assert answers[0].status_code == 201, answers[0].text
    assert api.wait_status("swept", ["completed", "failed"])["status"] == "completed"


def test_a_refused_submission_leaves_no_use_behind(service, api, fake):
    asset = upload(api, PNG).json()
    workflow = workflows.core("refused")
    workflow["3"]["inputs"]["filename_prefix"] = asset_ref(asset)
    workflow["2"]["class_type"] = "NoSuchNode"
    for gpu in ("0", "auto"):
        answer = api.put(f"/startjob/refused-{gpu}?GpuId={gpu}", json=workflow)
        assert answer.status_code == 400, answer.text
    assert use_rows(service) == []
    assert api.delete(f"/assets/{asset['id']}").status_code == 200


def test_a_jobs_asset_uses_leave_with_the_job(fakes, tmp_path, database_url):
    with Service(make_config(fakes, tmp_path, retention=DAY, database=database_url)) as service:
        api = Api(service.url)
        asset = upload(api, PNG).json()
        workflow = workflows.core("kept")
        workflow["3"]["inputs"]["filename_prefix"] = asset_ref(asset)
        assert api.put("/startjob/kept", json=workflow).status_code == 201
        api.wait_status("kept", "completed")
        assert use_rows(service) == ["kept"]
        context = service.context
        sweep = RetentionSweep(context.store, context.storage.jobs, DAY,
                               clock=Clock(time.time() + 2 * DAY), assets=context.assets)
        try:
            wait_for(lambda: sweep.sweep_once() or context.store.get("kept") is None)
        finally:
            sweep.stop()
        assert use_rows(service) == []


def test_a_file_that_cannot_be_unlinked_yet_is_removed_by_a_later_sweep(service, api, monkeypatch):
    """Windows: a file another process holds open cannot be unlinked. The client's asset
    goes; its file stays known, and the next sweep removes it."""
    context = service.context
    asset = upload(api, PNG).json()
    held_open = context.config.data_dir / "assets" / asset["hash"][7:]
    real_unlink = Path.unlink

    def unlink(path, missing_ok=False):
        if path.name == held_open.name:
            raise PermissionError(13, "The process cannot access the file", str(path))
        return real_unlink(path, missing_ok=missing_ok)

    with monkeypatch.context() as patched:
        patched.setattr(Path, "unlink", unlink)
        assert api.delete(f"/assets/{asset['id']}").status_code == 200
    assert api.get(f"/assets/{asset['id']}").status_code == 404
    assert held_open.exists()
    sweep = RetentionSweep(context.store, context.storage.jobs, DAY, assets=context.assets)
    try:
        sweep.sweep_assets()
    finally:
        sweep.stop()
    assert not held_open.exists()
    again = upload(api, PNG)
    assert again.status_code == 201 and held_open.read_bytes() == PNG
