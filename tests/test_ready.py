"""/health and /ready need no key; /ready follows the GPUs' reachability."""
from tests.helpers import Api, wait_for


def test_ready_flips_to_503_and_back(service, fakes):
    public = Api(service.url, key=None)
    assert public.get("/health").json() == {"status": "ok"}
    assert public.get("/ready").status_code == 200
    for fake in fakes:
        fake.stop()
    wait_for(lambda: public.get("/ready").status_code == 503)
    response = public.get("/ready")
    assert response.json()["ready"] is False
    assert [g["reachable"] for g in response.json()["gpus"]] == [False, False]
    fakes[1].restart()
    wait_for(lambda: public.get("/ready").status_code == 200)
    assert [g["reachable"] for g in public.get("/ready").json()["gpus"]] == [False, True]
