"""GET /metrics: Prometheus text that parses, with counters matching the jobs run."""
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from tests import workflows
from tests.helpers import Api


def scrape(api) -> dict:
    """{(metric name, sorted label items): value} of every sample."""
    response = api.get("/metrics")
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_counters_match_the_jobs_run(api, fakes):
    for n in range(3):
        api.put(f"/startjob/ok-{n}?GpuId=1", json=workflows.core(f"m{n}"))
    api.put("/startjob/bad", json=workflows.fail())
    for n in range(3):
        api.wait_status(f"ok-{n}", "completed")
    api.wait_status("bad", "failed")
    api.get("/jobstatus/missing")
    samples = scrape(api)
    assert samples[("cylindria_jobs_submitted_total", (("gpu", "1"),))] == 3
    assert samples[("cylindria_jobs_submitted_total", (("gpu", "0"),))] == 1
    assert samples[("cylindria_jobs_finished_total", (("gpu", "1"), ("status", "completed")))] == 3
    assert samples[("cylindria_jobs_finished_total", (("gpu", "0"), ("status", "failed")))] == 1
    assert samples[("cylindria_job_duration_seconds_count", (("gpu", "1"), ("status", "completed")))] == 3
    assert samples[("cylindria_gpu_reachable", (("gpu", "0"),))] == 1
    assert samples[("cylindria_websocket_connected", (("gpu", "1"),))] == 1
    assert ("cylindria_queue_length", (("gpu", "0"), ("state", "pending"))) in samples
    assert samples[("cylindria_http_requests_total", (("endpoint", "/startjob/<anypath:job_id>"),
                                                      ("method", "PUT"), ("status", "201")))] == 4
    assert samples[("cylindria_http_requests_total", (("endpoint", "/jobstatus/<anypath:job_id>"),
                                                      ("method", "GET"), ("status", "404")))] == 1
    assert samples[("cylindria_http_request_duration_seconds_count",
                    (("endpoint", "/startjob/<anypath:job_id>"),))] == 4


def test_websocket_reconnects_are_counted(api, fake, service):
    from tests.helpers import wait_for
    wait_for(lambda: service.context.gpus[0].websocket_connected)
    fake.drop_websockets()
    wait_for(lambda: scrape(api)[("cylindria_websocket_reconnects_total", (("gpu", "0"),))] >= 1)


def test_the_content_type_is_prometheus_own_once(api):
    response = api.get("/metrics")
    assert response.headers["Content-Type"] == CONTENT_TYPE_LATEST
    assert response.headers["Content-Type"].count("charset") == 1


def test_metrics_need_the_key(service):
    assert Api(service.url, None).get("/metrics").status_code == 401


def test_metrics_can_be_made_public(fakes, tmp_path):
    from tests.conftest import make_config
    from cylindria.service.server import Service
    with Service(make_config(fakes, tmp_path, metrics_public=True)) as service:
        public = Api(service.url, None)
        assert public.get("/metrics").status_code == 200
        assert public.get("/jobs").status_code == 401
