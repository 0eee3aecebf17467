"""Signed webhooks through a real receiver on loopback (--webhook-allow-private), a real
Cylindria in front of fake GPUs, and, where a kill is the point, a real process.

Signatures are checked with the `standardwebhooks` package's own verifier, as a receiver in
any language would. Retry delays are shortened through the config, never slept out."""
from __future__ import annotations

import logging

import pytest
import requests
from standardwebhooks.webhooks import Webhook

from cylindria.service.server import Service
from tests import workflows
from tests.conftest import make_config
from tests.helpers import Api, free_ports, wait_for
from tests.processes import CylindriaProcess
from tests.webhook_receiver import Receiver

FAST = (0.05, 0.05, 0.05, 0.05)  # seconds between tries in these tests


@pytest.fixture
def receiver():
    receiver = Receiver().start()
    yield receiver
    receiver.stop()


def start(fakes, tmp_path, **overrides) -> Service:
    values = dict(webhook_allow_private=True, webhook_delays=FAST)
    values.update(overrides)
    return Service(make_config(fakes, tmp_path, **values)).serve_in_thread()


@pytest.fixture
def hooked(fakes, tmp_path):
    """A Cylindria whose webhooks may call loopback receivers, retrying within 50 ms."""
    service = start(fakes, tmp_path)
    yield service
    service.stop()


def verified(service: Service, request) -> dict:
    """The event, verified by the standardwebhooks library with the host's secret."""
    return Webhook(service.context.webhooks.secret.secret).verify(request.body, request.headers)


def without_webhook(view: dict) -> dict:
    return {k: v for k, v in view.items() if k != "webhook"}


def test_started_then_completed_arrive_signed_with_the_job_view(hooked, receiver):
    api = Api(hooked.url)
    hook = f"{receiver.url}/hooks/cylindria?token=receiver-secret"
    assert api.put(f"/startjob/hooked-1?webhook={hook}", json=workflows.core("hook1")).status_code == 201
    started, completed = receiver.wait(2)
    first, last = verified(hooked, started), verified(hooked, completed)
    assert (first["type"], last["type"]) == ("job.started", "job.completed")
    assert started.path == "/hooks/cylindria?token=receiver-secret"
    assert first["data"]["status"] == "running" and last["data"]["status"] == "completed"
    job = api.wait_status("hooked-1", "completed")
    assert without_webhook(last["data"]) == without_webhook(job)
    state = wait_for(lambda: (lambda w: w if w["delivered"] else None)(api.status("hooked-1")["webhook"]))
    assert state == {"url": f"{receiver.url}/hooks/cylindria", "events": 2, "delivered": True,
                     "attempts": 2, "given_up": False, "last_error": None}
    assert started.headers["webhook-id"] != completed.headers["webhook-id"]
    assert started.headers["content-type"] == "application/json"


def test_failed_and_cancelled_jobs_send_their_own_events(hooked, receiver):
    api = Api(hooked.url)
    api.put(f"/startjob/hook-fail?webhook={receiver.url}/f", json=workflows.fail())
    api.put(f"/startjob/hook-cancel?GpuId=1&webhook={receiver.url}/c",
            json=workflows.slow(seconds=2000, steps=400, prefix="hook_cancel"))  # the fake
    # sees an interrupt between two steps: 0.25 s apart at its time scale, not 12.5 s
    api.wait_status("hook-cancel", "running")
    assert api.delete("/job/hook-cancel").status_code in (200, 202)
    wait_for(lambda: receiver.of_type("job.failed") and receiver.of_type("job.cancelled"))
    failed = verified(hooked, receiver.of_type("job.failed")[0])
    assert failed["data"]["job_id"] == "hook-fail" and failed["data"]["error"]["node_type"] == "CylFail"


def test_a_receiver_failing_twice_gets_the_same_event_a_third_time(fakes, tmp_path):
    receiver = Receiver(failures=(500, 503)).start()
    service = start(fakes, tmp_path)
    try:
        api = Api(service.url)
        api.put(f"/startjob/retried?webhook={receiver.url}/r", json=workflows.core("retried"))
        wait_for(lambda: len(receiver.of_type("job.completed")) == 3, message="3 tries")
        tries = receiver.of_type("job.completed")
        assert len({t.headers["webhook-id"] for t in tries}) == 1
        assert all(verified(service, t)["data"]["status"] == "completed" for t in tries)
        state = wait_for(lambda: (lambda w: w if w["delivered"] else None)(api.status("retried")["webhook"]))
        assert state["attempts"] == 6 and state["last_error"] is None  # two events, three tries each
        metrics = api.get("/metrics").text
        assert "cylindria_webhook_failed_attempts_total 4.0" in metrics
        assert "cylindria_webhook_delivered_total 2.0" in metrics
    finally:
        service.stop()
        receiver.stop()


def test_a_receiver_down_throughout_is_retried_then_given_up_and_the_job_is_unaffected(
        fakes, tmp_path, caplog):
    nobody = f"http://127.0.0.1:{free_ports(1)}/down"  # a free port: nothing listens there
    service = start(fakes, tmp_path)
    try:
        api = Api(service.url)
        api.put(f"/startjob/unheard?webhook={nobody}", json=workflows.core("unheard"))
        assert api.wait_status("unheard", "completed")["outputs"]
        retried = wait_for(lambda: (lambda w: w if w["attempts"] >= 6 else None)(
            api.status("unheard")["webhook"]), message="tries to go on")
        assert retried["delivered"] is False and "Connection" in retried["last_error"]
        assert retried["given_up"] is False
        # A day later, as far as the sender can tell: the next failed try of each event is
        # its last (the give-up time moved, not slept out).
        service.context.webhooks.sender.give_up_after = 0.0
        with caplog.at_level(logging.WARNING, logger="cylindria.webhooks.sender"):
            state = wait_for(lambda: (lambda w: w if w["given_up"] else None)(
                api.status("unheard")["webhook"]), message="the events to be given up")
            wait_for(lambda: "cylindria_webhook_outbox_depth 0.0" in api.get("/metrics").text)
        assert state["delivered"] is False
        assert "cylindria_webhook_given_up_total 2.0" in api.get("/metrics").text
        assert any("given up" in r.getMessage() for r in caplog.records)
        assert api.put("/startjob/after?GpuId=1", json=workflows.core("after")).status_code == 201
        assert api.wait_status("after", "completed")
    finally:
        service.stop()


@pytest.mark.parametrize("hook", [
    "ftp://127.0.0.1/x", "http://localhost:9/x", "http://127.0.0.1:9/x", "http://10.1.2.3/x",
    "http://169.254.169.254/latest/meta-data", "not a url", "http://[::1]:9/"])
def test_a_webhook_cylindria_will_not_call_is_400_and_leaves_no_job(api, hook):
    answer = api.put("/startjob/refused", params={"webhook": hook}, json=workflows.core("refused"))
    assert answer.status_code == 400 and answer.json()["code"] == "invalid_webhook", answer.text
    assert api.get("/jobstatus/refused").status_code == 404


def test_comfyuis_own_port_is_refused_even_where_private_addresses_are_allowed(hooked, fakes):
    api = Api(hooked.url)
    for fake in fakes:
        for host in ("127.0.0.1", "localhost"):
            answer = api.put("/startjob/into-comfy", json=workflows.core("c"),
                             params={"webhook": f"http://{host}:{fake.port}/prompt"})
            assert answer.json()["code"] == "invalid_webhook" and "ComfyUI" in answer.json()["error"]
    assert api.get("/jobstatus/into-comfy").status_code == 404


def test_the_webhook_is_part_of_the_job(hooked, receiver):
    api = Api(hooked.url)
    workflow = workflows.core("part")
    assert api.put(f"/startjob/part?webhook={receiver.url}/a", json=workflow).status_code == 201
    assert api.put(f"/startjob/part?webhook={receiver.url}/a", json=workflow).status_code == 200
    assert api.put(f"/startjob/part?webhook={receiver.url}/b", json=workflow).status_code == 409
    assert api.put("/startjob/part", json=workflow).status_code == 409
    wrapped = {"prompt": workflows.core("wrapped"), "webhook": f"{receiver.url}/w"}
    assert api.put("/startjob/wrapped", json=wrapped).status_code == 201
    assert api.status("wrapped")["webhook"]["url"] == f"{receiver.url}/w"
    both = api.put(f"/startjob/both?webhook={receiver.url}/q", json=wrapped)
    assert both.status_code == 400 and both.json()["code"] == "invalid_webhook"


def test_a_v2_job_takes_webhook_url(hooked, receiver):
    api = Api(hooked.url)
    answer = api.request("POST", "/api/v2/jobs", json={
        "workflow": workflows.core("v2hook"), "webhook_url": f"{receiver.url}/v2"})
    assert answer.status_code == 201, answer.text
    wait_for(lambda: receiver.of_type("job.completed"))
    assert verified(hooked, receiver.of_type("job.completed")[0])["data"]["job_id"] == answer.json()["id"]
    refused = api.request("POST", "/api/v2/jobs", json={
        "workflow": workflows.core("v2hook2"), "webhook_url": "ftp://127.0.0.1/x"})
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "invalid_webhook"


def test_the_secret_is_generated_once_kept_private_and_never_logged(fakes, tmp_path, caplog, capsys,
                                                                   receiver):
    with caplog.at_level(logging.DEBUG):
        service = start(fakes, tmp_path)
        secret = service.context.webhooks.secret
        printed = capsys.readouterr().out
        assert secret.secret.startswith("whsec_") and secret.secret in printed
        assert str(secret.path) in printed and (secret.path.stat().st_mode & 0o777) == 0o600
        api = Api(service.url)
        api.put(f"/startjob/logged?webhook={receiver.url}/l", json=workflows.core("logged"))
        receiver.wait(2)
        service.stop()
        again = start(fakes, tmp_path)
        assert again.context.webhooks.secret.secret == secret.secret
        assert secret.secret not in capsys.readouterr().out  # shown once only
        again.stop()
    assert not [r for r in caplog.records if secret.secret in r.getMessage()]
    assert any(str(secret.path) in r.getMessage() for r in caplog.records)


def test_an_operators_secret_file_is_used_and_a_bad_one_stops_the_start(fakes, tmp_path):
    from cylindria.config.options import ConfigError
    good = tmp_path / "mine"
    good.write_text("whsec_" + "QUJD" * 8 + "\n")  # 24 bytes
    service = start(fakes, tmp_path, webhook_secret_file=good)
    assert service.context.webhooks.secret.secret == "whsec_" + "QUJD" * 8
    service.stop()
    bad = tmp_path / "bad"
    bad.write_text("not-a-secret")
    with pytest.raises(ConfigError, match="webhook secret"):
        Service(make_config(fakes, tmp_path, webhook_secret_file=bad))


def test_an_event_kept_through_a_kill_is_delivered_after_the_restart(fake, tmp_path):
    """SIGKILL after the job ended and its events failed once: the restarted Cylindria sends
    them, with the ids they had, once the receiver is up."""
    port = free_ports(1)
    data = tmp_path / "data"
    args = ("--webhook-allow-private",)
    first = CylindriaProcess(fake.url, data, gpus=1, extra=args).start()
    receiver = Receiver(port=port)
    second = None
    try:
        api = Api(first.url)
        api.put(f"/startjob/survivor?webhook=http://127.0.0.1:{port}/s", json=workflows.core("survivor"))
        api.wait_status("survivor", "completed")
        wait_for(lambda: api.status("survivor")["webhook"]["attempts"] >= 2, message="a failed try each")
        first.kill()
        receiver.start()
        second = CylindriaProcess(fake.url, data, gpus=1, extra=args).start()
        wait_for(lambda: receiver.of_type("job.completed") and receiver.of_type("job.started"),
                 timeout=30, message="both events after the restart")
        secret = (data / "webhook_secret").read_text().strip()
        kinds = [Webhook(secret).verify(r.body, r.headers)["type"] for r in receiver.received]
        assert sorted(set(kinds)) == ["job.completed", "job.started"]
        assert len({r.headers["webhook-id"] for r in receiver.received}) == 2
        # Printed once on the first start's console (its stdout shares this file), never
        # in a log record of either process.
        output = first.log() + second.log()
        assert output.count(secret) == 1 and f"\n  {secret}" in first.log()
        assert not [line for line in output.splitlines() if secret in line and line[:2] == "20"]
    finally:
        first.stop()
        if second is not None:
            second.stop()
        receiver.stop()


def test_the_example_receiver_verifies_real_calls(hooked, tmp_path):
    """examples/webhook_receiver.py, as the README runs it (the secret's path, here a port of
    its own), in a process of its own: it verifies Cylindria's calls with the standardwebhooks
    package, prints them, and refuses a call that Cylindria did not sign."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "examples" / "webhook_receiver.py"
    port = free_ports(1)
    secret_path = str(hooked.context.webhooks.secret.path)
    receiver = subprocess.Popen([sys.executable, "-u", str(script), secret_path, str(port)],
                                cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
    try:
        forged = {"webhook-id": "msg_forged", "webhook-timestamp": "1700000000",
                  "webhook-signature": "v1,AAAA"}
        wait_for(lambda: _answers(port))
        assert requests.post(f"http://127.0.0.1:{port}/", data=b"{}", headers=forged,
                             timeout=10).status_code == 400
        api = Api(hooked.url)
        wait_for(lambda: api.put(f"/startjob/readme-hook?webhook=http://127.0.0.1:{port}/",
                                 json=workflows.core("readme_hook")).status_code in (200, 201))
        events = set()  # the two events come concurrently, in either order
        while len(events) < 2:
            line = receiver.stdout.readline()
            assert line, "the receiver stopped"
            assert line.startswith("job."), line  # it prints the events, nothing else
            events.add(line.strip())
        assert events == {"job.started readme-hook running", "job.completed readme-hook completed"}
        wait_for(lambda: api.status("readme-hook")["webhook"]["delivered"])
    finally:
        receiver.kill()
        receiver.wait(timeout=10)


def _answers(port: int) -> bool:
    """Whether something answers HTTP on that loopback port (the receiver answers GET 501)."""
    try:
        requests.get(f"http://127.0.0.1:{port}/", timeout=2)
        return True
    except requests.ConnectionError:
        return False
