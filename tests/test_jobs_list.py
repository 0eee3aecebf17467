"""GET /jobs: newest first, filters, pagination."""
from tests import workflows


def test_newest_first_with_filters_and_cursor(api):
    for n in range(5):
        api.put(f"/startjob/list-{n}?GpuId={n % 2}", json=workflows.core(f"l{n}"))
    api.put("/startjob/list-fail", json=workflows.fail())
    for n in range(5):
        api.wait_status(f"list-{n}", "completed")
    api.wait_status("list-fail", "failed")
    everything = api.get("/jobs").json()
    assert [j["job_id"] for j in everything["jobs"]] == \
        ["list-fail"] + [f"list-{n}" for n in range(4, -1, -1)]
    assert everything["next_before"] is None
    assert [j["job_id"] for j in api.get("/jobs?status=failed").json()["jobs"]] == ["list-fail"]
    assert [j["job_id"] for j in api.get("/jobs?gpu=1").json()["jobs"]] == ["list-3", "list-1"]
    first = api.get("/jobs?limit=4").json()
    assert len(first["jobs"]) == 4 and first["next_before"]
    rest = api.get(f"/jobs?limit=4&before={first['next_before']}").json()
    assert [j["job_id"] for j in rest["jobs"]] == ["list-1", "list-0"] and rest["next_before"] is None
    assert set(first["jobs"][0]) == set(api.status("list-fail"))


def test_bad_parameters_are_400(api):
    for query in ("status=done", "gpu=5", "limit=0", "limit=abc", "before=-3"):
        response = api.get(f"/jobs?{query}")
        assert response.status_code == 400 and response.json()["code"] == "invalid_parameter"
