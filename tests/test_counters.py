"""The job counters of /metrics only ever go up: a held job that gets a GPU, or a lost job
later found completed, moves no count down (Prometheus would read a reset)."""
from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from cylindria.service.server import Service
from tests import workflows
from tests.conftest import make_config
from tests.helpers import Api, lose_a_finished_job

COUNTERS = ("cylindria_jobs_submitted", "cylindria_jobs_finished")


def counters(api: Api) -> dict:
    """(sample name, labels) -> value of the job counters, parsed as Prometheus reads them."""
    answer = api.get("/metrics")
    assert answer.status_code == 200
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(answer.text)
            if family.name in COUNTERS for sample in family.samples}


def assert_none_went_down(before: dict, after: dict) -> None:
    down = {key: (value, after.get(key, 0.0)) for key, value in before.items()
            if after.get(key, 0.0) < value}
    assert not down, f"counters went down: {down}"


def test_a_held_job_that_gets_a_gpu_moves_no_counter_down(fakes, tmp_path):
    for fake in fakes:
        fake.stop()
    with Service(make_config(fakes, tmp_path)) as service:
        api = Api(service.url)
        assert api.put("/startjob/held?GpuId=auto", json=workflows.core("held")).status_code == 201
        before = counters(api)
        assert before[("cylindria_jobs_submitted_total", (("gpu", "none"),))] == 1
        for fake in fakes:
            fake.restart()
        api.wait_status("held", "completed", timeout=30)
        after = counters(api)
        assert_none_went_down(before, after)
        assert sum(value for (name, labels), value in after.items()
                   if name == "cylindria_jobs_finished_total") == 1


def test_a_lost_job_found_completed_moves_no_counter_down(fakes, tmp_path):
    config = make_config(fakes, tmp_path, poll_interval=3600, websocket=False, max_attempts=1)
    with Service(config) as service:
        api = Api(service.url)
        lose_a_finished_job(service, fakes[0], api, "back")
        lost = counters(api)
        assert lost[("cylindria_jobs_finished_total", (("gpu", "0"), ("status", "lost")))] == 1
        fakes[0].restart(keep_state=True)
        service.context.tracker.poller.request(0)
        api.wait_status("back", "completed")
        found = counters(api)
        assert_none_went_down(lost, found)
        key = ("cylindria_jobs_finished_total", (("gpu", "0"), ("status", "completed")))
        assert found[key] == 1  # the true end is counted when it is learnt


def test_counters_start_from_the_durable_totals_after_a_restart(fakes, tmp_path):
    config = make_config(fakes, tmp_path)
    with Service(config) as service:
        api = Api(service.url)
        api.put("/startjob/one", json=workflows.core("one"))
        api.wait_status("one", "completed")
    with Service(config) as service:
        shown = counters(Api(service.url))
        assert shown[("cylindria_jobs_submitted_total", (("gpu", "0"),))] == 1
        assert shown[("cylindria_jobs_finished_total", (("gpu", "0"), ("status", "completed")))] == 1
