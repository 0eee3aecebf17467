"""GpuId=auto: the least-loaded reachable GPU, skipping a GPU that is down."""
from collections import Counter

from tests import workflows


def test_eight_jobs_spread_over_two_gpus(api, fakes):
    fakes[0].hold = fakes[1].hold = True
    gpus = [api.put(f"/startjob/auto-{n}?GpuId=auto", json=workflows.core(f"a{n}")).json()["gpu_id"]
            for n in range(8)]
    assert Counter(gpus) == {0: 4, 1: 4}
    assert gpus[:2] == [0, 1]  # ties go to the lowest id


def test_a_gpu_that_is_down_is_skipped(api, fakes):
    fakes[0].stop()
    answers = [api.put(f"/startjob/skip-{n}?gpuid=AUTO", json=workflows.core(f"s{n}")) for n in range(3)]
    assert [a.status_code for a in answers] == [201] * 3
    assert {a.json()["gpu_id"] for a in answers} == {1}


def test_no_gpu_reachable_is_503_and_leaves_no_job(api, fakes):
    for fake in fakes:
        fake.stop()
    response = api.put("/startjob/nowhere?GpuId=auto", json=workflows.core())
    assert response.status_code == 503 and response.json()["code"] == "comfy_unreachable"
    assert api.get("/jobstatus/nowhere").status_code == 404


def test_serverstatus_all(api, fakes):
    fakes[1].stop()
    answer = api.get("/serverstatus?GpuId=all").json()
    assert [g["gpu_id"] for g in answer["gpus"]] == [0, 1]
    assert [g["reachable"] for g in answer["gpus"]] == [True, False]
