"""GET /jobresult: the output list and byte-exact downloads, only of the job's own files."""
import pytest
import requests

from tests import workflows


def test_outputs_are_listed_and_downloaded_byte_for_byte(api, fake):
    api.put("/startjob/pic", json=workflows.core("pic"))
    api.wait_status("pic", "completed")
    listing = api.get("/jobresult/pic").json()
    assert listing["job_id"] == "pic"
    [output] = listing["outputs"]
    assert output == {"index": 0, "node_id": "3", "filename": "pic_00001_.png", "subfolder": "",
                      "type": "output", "url": "/jobresult/pic/0"}
    response = api.get(output["url"])
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "image/png"
    assert response.content == fake.output_bytes("pic_00001_.png")
    assert int(response.headers["Content-Length"]) == len(response.content)
    assert "pic_00001_.png" in response.headers["Content-Disposition"]


def test_results_of_an_unfinished_job_are_409(api, fake):
    fake.hold = True
    api.put("/startjob/later", json=workflows.core("later"))
    for path in ("/jobresult/later", "/jobresult/later/0"):
        response = api.get(path)
        assert response.status_code == 409 and response.json()["code"] == "job_not_finished"
        assert response.json()["details"]["status"] == "queued"


def test_unknown_job_or_output_is_404(api):
    assert api.get("/jobresult/ghost").json()["code"] == "job_not_found"
    api.put("/startjob/one", json=workflows.core("one"))
    api.wait_status("one", "completed")
    assert api.get("/jobresult/one/1").json()["code"] == "output_not_found"
    assert api.get("/jobresult/one/-1").status_code == 404


@pytest.mark.parametrize("path", [
    "/jobresult/../../etc/passwd", "/jobresult/%2e%2e/%2e%2e/etc/passwd",
    "/jobresult/one/..%2f..%2fsecret.png", "/jobresult/one/0?filename=../../etc/passwd",
    "/jobresult/one/0?subfolder=..&type=input", "/jobresult/one/0/../../view?filename=x",
    "/jobresult/one%2F0", "//jobresult/one/0"])
def test_no_client_value_reaches_view(api, fake, path):
    api.put("/startjob/one", json=workflows.core("one"))
    api.wait_status("one", "completed")
    before = len(fake.requests())
    response = requests.get(api.base_url + path, headers={"X-API-Key": api.session.headers["X-API-Key"]},
                            timeout=10)
    views = [r for r in fake.requests()[before:] if r.path == "/view"]
    for view in views:  # only the job's own file may have been asked for
        assert view.query == "filename=one_00001_.png&subfolder=&type=output"
    assert response.status_code in (200, 400, 404)
