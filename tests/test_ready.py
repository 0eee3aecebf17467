"""/health and /ready need no key; /ready follows the GPUs' reachability."""
from tests.helpers import Api, wait_for


def test_ready_flips_to_503_and_back(service, fakes):
    public = Api(service.url, key=None)
    assert public.get("/health").json() == {"status": "ok"}
    wait_for(lambda: public.get("/ready").status_code == 200)  # once start-up reconciliation is over
    for fake in fakes:
        fake.stop()
    wait_for(lambda: public.get("/ready").status_code == 503)
    response = public.get("/ready")
    assert response.json()["ready"] is False
    assert [g["reachable"] for g in response.json()["gpus"]] == [False, False]
    fakes[1].restart()
    wait_for(lambda: public.get("/ready").status_code == 200)
    assert [g["reachable"] for g in public.get("/ready").json()["gpus"]] == [False, True]


def test_health_answers_while_a_slow_comfy_is_reconciled_and_jobs_wait(fakes, tmp_path):
    from tests.conftest import make_config
    from cylindria.service.server import Service
    fakes[0].http_delay = 1.5  # alive but slow: start-up reconciliation takes a while
    with Service(make_config(fakes, tmp_path)) as service:
        public = Api(service.url, key=None)
        assert public.get("/health").status_code == 200
        first = public.get("/ready")
        assert first.status_code == 503 and first.json()["reconciling"] is True
        assert Api(service.url).get("/jobstatus/none-yet").status_code == 404  # waited, then answered
        assert service.context.tracker.reconciled.is_set()
        fakes[0].http_delay = 0
        wait_for(lambda: public.get("/ready").status_code == 200)
        assert public.get("/ready").json()["reconciling"] is False
