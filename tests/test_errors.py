"""Every error is the contract's JSON: Flask's own, waitress's own, and unexpected ones."""
import socket

from tests import workflows


def assert_json_error(response, status, code):
    assert response.status_code == status
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert body["code"] == code and isinstance(body["error"], str) and body["error"]
    return body


def test_unknown_endpoint_is_json_404(api):
    assert_json_error(api.get("/prompt"), 404, "not_found")
    assert_json_error(api.get("/api/prompt"), 404, "not_found")


def test_wrong_method_is_json_405(api):
    assert_json_error(api.get("/startjob/x"), 405, "method_not_allowed")
    assert_json_error(api.request("POST", "/jobstatus/x"), 405, "method_not_allowed")


def test_body_over_the_limit_is_json_413_and_leaves_no_job(fakes, tmp_path):
    from tests.conftest import make_config
    from tests.helpers import Api
    from cylindria.service.server import Service
    config = make_config(fakes, tmp_path, max_body_bytes=1024)
    with Service(config) as service:
        api = Api(service.url)
        response = api.put("/startjob/big", data=b"{" + b" " * 2048 + b"}")
        assert_json_error(response, 413, "payload_too_large")
        far_over = api.put("/startjob/big", data=b"x" * 200_000)
        assert_json_error(far_over, 413, "payload_too_large")
        assert api.get("/jobstatus/big").status_code == 404


def test_unexpected_exception_is_500_without_traceback(api, service, caplog):
    def explode(*args, **kwargs):
        raise RuntimeError("boom-secret-detail")
    service.context.store.lookup = explode  # what /jobstatus reads a job with
    response = api.get("/jobstatus/anything")
    assert_json_error(response, 500, "internal_error")
    assert "boom" not in response.text and "Traceback" not in response.text
    assert "boom-secret-detail" in caplog.text


def test_malformed_request_line_gets_a_json_answer(service):
    with socket.create_connection(("127.0.0.1", service.port), timeout=10) as conn:
        conn.sendall(b"GET /serverstatus HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n")
        chunks = []
        while chunk := conn.recv(65536):  # waitress closes the connection after an error
            chunks.append(chunk)
        answer = b"".join(chunks).decode("latin-1")
    head, _, body = answer.partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 400") and "application/json" in head
    assert '"code": "bad_request"' in body


def test_comfy_bad_answer_is_502(api, fake, service):
    service.context.gpus[0].client.base_url += "/nowhere"  # every call now gets the fake's 404
    response = api.put("/startjob/bad-answer", json=workflows.core())
    assert_json_error(response, 502, "comfy_bad_response")
    assert api.get("/jobstatus/bad-answer").status_code == 404
