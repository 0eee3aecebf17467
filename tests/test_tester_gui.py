"""The tester's real window under Xvfb, driving a real Cylindria served with the fake ComfyUI
(tests/desktop.py).

Needs the Debian packages xvfb and xdotool (``apt-get install -y xvfb xdotool``).
"""

import gc
import json
import os
import subprocess
import tkinter as tk
from pathlib import Path

import blake3
import pytest
import requests

from tester import settings as settings_mod
from tester.app import App
from tester.watch import POLLING
from tests import workflows
from tests.desktop import (KEY, WAIT_S, cylindria, cylindria_with_fake_comfy, fill, free_port,
                           log_tail, pump_until as wait_for, xvfb)
from tests.fake_comfy.png import output_png
from tests.test_tester_events import FULL_STREAM, SseHandler
from tests.test_tester_logic import Server


@pytest.fixture(scope="module")
def display():
    with xvfb() as name, pytest.MonkeyPatch.context() as mp:
        mp.setenv("DISPLAY", name)
        yield name


@pytest.fixture(scope="module")
def servers_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("servers")


@pytest.fixture(scope="module")
def cylindria_port(servers_dir):
    with cylindria_with_fake_comfy(servers_dir) as port:
        yield port


@pytest.fixture(scope="module")
def limited_port(servers_dir):
    """A Cylindria with one event stream slot and assets up to 1 MiB, logging every request
    (successful GETs are DEBUG)."""
    with cylindria_with_fake_comfy(servers_dir, "cylindria-limited", "--max-streams", "1",
                                   "--max-asset-mb", "1", "--log-level", "DEBUG") as port:
        yield port


@pytest.fixture(scope="module")
def no_gpu_port(servers_dir):
    """A Cylindria whose only ComfyUI is not there (nobody listens on its port)."""
    with cylindria(servers_dir, free_port(), "cylindria-no-gpu") as port:
        yield port


@pytest.fixture
def config_dir(tmp_path, monkeypatch):
    path = tmp_path / "config"
    monkeypatch.setenv(settings_mod.CONFIG_DIR_ENV, str(path))
    return path


@pytest.fixture
def app(display, config_dir, cylindria_port, servers_dir):
    """The real App in a Tk root on the Xvfb display, with its fields filled in."""
    app = App(tk.Tk(screenName=display))
    app.root.geometry("1000x700+0+0")
    fill(app.url_entry, "http://127.0.0.1")
    fill(app.port_entry, str(cylindria_port))
    fill(app.gpu_entry, "0")
    fill(app.key_entry, KEY)
    wait_for(app, lambda: app.root.winfo_viewable(), "the window to show")
    yield app
    discard(app)
    # pytest shows this only for a failed test
    for log in sorted(servers_dir.glob("*.log")):
        print(f"---- end of {log.name} ----\n{log_tail(log)}")


def discard(app: App) -> None:
    """Destroy the window and free every Tk object now, on this (the Tk) thread.

    Left to the cyclic GC, they could be freed on a worker thread, which Tcl does not survive.
    """
    try:
        app.root.destroy()
    except tk.TclError:  # the test closed it already
        pass
    app.__dict__.clear()
    gc.collect()


def wait_for_text(app: App, *parts: str) -> None:
    """Wait until the text window contains every one of ``parts``."""
    wait_for(app, lambda: all(p in app.output() for p in parts), f"text {parts!r}")


def click(display: str, widget) -> None:
    """A real mouse click on ``widget`` through the X server."""
    widget.update_idletasks()
    x = widget.winfo_rootx() + widget.winfo_width() // 2
    y = widget.winfo_rooty() + widget.winfo_height() // 2
    subprocess.run(["xdotool", "mousemove", "--sync", str(x), str(y), "click", "1"],
                   env={**os.environ, "DISPLAY": display}, check=True, timeout=WAIT_S)


def start_job(app: App, tmp_path: Path, workflow: dict) -> None:
    """Press Start job and pick a file holding ``workflow`` in the dialog."""
    path = tmp_path / "workflow.json"
    path.write_text(json.dumps(workflow, indent=1))
    app.ask_workflow_file = lambda: str(path)
    app.start_button.invoke()


def watch_job(app: App, job_id: str) -> None:
    """Press Watch job and give ``job_id`` in the dialog."""
    app.ask_job_id = lambda title: job_id
    app.watch_button.invoke()


def log_text(path: Path) -> str:
    """A server's whole log so far."""
    return path.read_text(errors="replace")


def run_job(app: App, tmp_path: Path, query: str = "GpuId=0") -> str:
    """Start a job from a workflow file and watch it to its end; return the job id."""
    # About 2 s at the fake's time scale: long enough for the watch to see it running.
    start_job(app, tmp_path, workflows.slow(seconds=40, steps=4))
    wait_for_text(app, "HTTP 201")
    job_id = app.last_job_id
    assert f"/startjob/{job_id}/?{query}" in app.output()
    assert f'"job_id": "{job_id}"' in app.output()

    prefills = []
    app.ask_job_id = lambda title: prefills.append(app.last_job_id) or app.last_job_id
    app.job_button.invoke()
    wait_for_text(app, f"GET http://127.0.0.1:{app.port_var.get()}/jobstatus/{job_id}/")
    app.watch_button.invoke()
    wait_for_text(app, f"watch {job_id}: ended completed")
    assert prefills == [job_id, job_id]
    return job_id


def test_server_status_by_real_click(app, display):
    click(display, app.status_button)
    wait_for_text(app, "Server status", "HTTP 200", '"gpu_id": 0')
    assert "Traceback" not in app.output()


def test_models_lists_the_gpus_model_files(app, display):
    url = f"http://127.0.0.1:{app.port_var.get()}/models"
    wait_for(app, lambda: "sdxl.safetensors" in requests.get(url, headers={"X-API-Key": KEY},
                                                             timeout=5).text,
             "Cylindria to read the fake ComfyUI's model files")
    click(display, app.models_button)
    wait_for_text(app, "Models", "HTTP 200", "checkpoints (2)", "  sd15.safetensors · GPU 0",
                  "  sdxl.safetensors · GPU 0", "loras (none)")
    assert '"folders"' not in app.output()  # the listing, not the JSON


def test_fleet_lists_the_one_node_of_a_single_host(app, display):
    url = f"http://127.0.0.1:{app.port_var.get()}/fleet"
    wait_for(app, lambda: (lambda gpu: gpu["reachable"] and gpu["websocket"] == "connected")(
        requests.get(url, headers={"X-API-Key": KEY}, timeout=5).json()["nodes"][0]["gpus"][0]),
        "a lease renewed since the GPU was reached and its websocket connected")
    click(display, app.fleet_button)
    wait_for_text(app, "Fleet", "HTTP 200", "1 node(s), 1 live · answered by ",
                  "  GPU 0 · reachable · websocket connected")
    assert '"nodes"' not in app.output()  # the listing, not the JSON


def test_start_job_then_watch_until_completed(app, tmp_path):
    job_id = run_job(app, tmp_path)
    out = app.output()
    assert out.rstrip().endswith("}")  # the finished job's JSON is the newest entry
    assert '"status": "completed"' in out.split("ended completed")[-1]
    assert app.progress["value"] == 100
    assert app.watch_var.get() == f"{job_id}: completed 100% · GPU 0"
    assert app.watch is None and app.watch_button["text"] == "Watch job…"


def test_auto_job_is_held_then_runs_on_a_gpu(app, tmp_path):
    fill(app.gpu_entry, "auto")
    fill(app.priority_entry, "5")
    job_id = run_job(app, tmp_path, "GpuId=auto&priority=5")
    started = app.output().split(f"as {job_id} ──")[1].split("── ")[0]  # the 201 entry only
    assert "queued · GPU - · queue position 0 · priority 5 · attempts 0" in started
    assert app.watch_var.get() == f"{job_id}: completed 100% · GPU 0"
    ended = app.output().split("ended completed")[-1]
    assert '"gpu_id": 0' in ended and '"attempts": 1' in ended and '"priority": 5' in ended


def test_held_auto_job_shows_no_gpu_while_none_is_reachable(app, no_gpu_port, tmp_path):
    fill(app.port_entry, str(no_gpu_port))
    fill(app.gpu_entry, "auto")
    fill(app.priority_entry, "-3")
    start_job(app, tmp_path, workflows.core())
    wait_for_text(app, "HTTP 201")
    job_id = app.last_job_id
    assert f"/startjob/{job_id}/?GpuId=auto&priority=-3" in app.output()
    assert "queued · GPU - · queue position 0 · priority -3 · attempts 0" in app.output()
    app.ask_job_id = lambda title: job_id
    app.watch_button.invoke()
    wait_for_text(app, f"watch {job_id}: queued · GPU - · queue position 0")
    label = app.watch_var.get  # "queued · GPU -", or "queued 0% · GPU -" when progress is sent
    wait_for(app, lambda: label().startswith(f"{job_id}: queued") and label().endswith("· GPU -"),
             "the watch label")
    app.watch_button.invoke()
    assert f"watch {job_id}: stopped by the operator" in app.output()


def test_server_status_for_auto_asks_about_every_gpu(app):
    fill(app.gpu_entry, "auto")
    app.status_button.invoke()
    wait_for_text(app, "/serverstatus?GpuId=all", "HTTP 200", '"gpus"')


def test_bad_priority_is_refused_before_sending(app, tmp_path):
    fill(app.priority_entry, "urgent")
    start_job(app, tmp_path, workflows.core())
    wait_for_text(app, "Refused: the priority must be an integer from -100 to 100")
    assert "Nothing was sent." in app.output() and "startjob" not in app.output()
    assert app.pending == 0 and app.last_job_id == ""


def test_watch_can_be_stopped(app):
    app.ask_job_id = lambda title: "job-that-is-not-there"
    app.watch_button.invoke()
    assert app.watch_button["text"] == "Stop watching"
    app.watch_button.invoke()  # before any answer is drained: the watch is still on
    assert app.watch is None and app.watch_button["text"] == "Watch job…"
    wait_for(app, lambda: app.pending == 0, "the late answer")
    assert "watch job-that-is-not-there: stopped by the operator" in app.output()
    assert "job_not_found" not in app.output()  # the late answer was dropped


def test_wrong_key_shows_401(app):
    fill(app.key_entry, "not-the-key")
    app.status_button.invoke()
    wait_for_text(app, "HTTP 401")
    assert '"code": "unauthorized"' in app.output()
    assert "Traceback" not in app.output()


def test_invalid_json_file_is_refused_before_sending(app, tmp_path):
    bad = tmp_path / "broken.json"
    bad.write_text('{"1": {"class_type": "EmptyImage",')
    app.ask_workflow_file = lambda: str(bad)
    app.start_button.invoke()
    wait_for_text(app, "Refused: broken.json is not valid JSON")
    assert "Nothing was sent." in app.output()
    assert app.pending == 0 and app.last_job_id == ""
    assert "startjob" not in app.output()


def test_dead_port_shows_connection_error(app):
    fill(app.port_entry, str(free_port()))
    app.status_button.invoke()
    wait_for_text(app, "connection error:")
    assert "Traceback" not in app.output()


def test_clear_empties_the_text_window(app):
    app.status_button.invoke()
    wait_for_text(app, "HTTP 200")
    app.clear_button.invoke()
    assert app.output() == ""


def test_fields_are_remembered_but_never_the_key(app, config_dir, cylindria_port):
    fill(app.gpu_entry, "auto")
    fill(app.priority_entry, "-7")
    app.close()
    saved = (config_dir / settings_mod.FILE_NAME).read_text()
    assert json.loads(saved) == {"url": "http://127.0.0.1", "port": str(cylindria_port),
                                 "gpu_id": "auto", "priority": "-7"}
    assert KEY not in saved
    again = App(tk.Tk(screenName=os.environ["DISPLAY"]))
    try:
        assert (again.url_var.get(), again.port_var.get()) == ("http://127.0.0.1",
                                                               str(cylindria_port))
        assert (again.gpu_var.get(), again.priority_var.get()) == ("auto", "-7")
        assert again.key_var.get() == ""
    finally:
        discard(again)


def test_upload_asset_then_run_a_workflow_that_refers_to_it(app, tmp_path):
    content = output_png("tester-upload.png", 8)
    path = tmp_path / "photo é.png"
    path.write_bytes(content)
    app.ask_asset_file = lambda: str(path)
    app.upload_button.invoke()
    wait_for_text(app, "Upload asset (photo é.png)", "HTTP 201")
    reference = app.root.clipboard_get()
    asset_id = json.loads(reference)["info"]["id"]
    out = app.output()
    assert f"POST http://127.0.0.1:{app.port_var.get()}/assets" in out
    assert f"asset {asset_id} · photo é.png · {len(content):,} bytes · new" in out
    assert f'"hash": "blake3:{blake3.blake3(content).hexdigest()}"' in out
    assert out.rstrip().endswith(f"workflow input (copied to the clipboard): {reference}")

    app.upload_button.invoke()  # the same bytes again: the same asset
    wait_for_text(app, "HTTP 200", "already stored (created_new: false)")
    assert f"asset {asset_id} · " in app.output().split("HTTP 200")[-1]

    workflow = workflows.core("unused")
    workflow["3"]["inputs"]["filename_prefix"] = json.loads(reference)  # as pasted from the clipboard
    start_job(app, tmp_path, workflow)
    wait_for_text(app, "HTTP 201 CREATED")
    job_id = app.last_job_id
    watch_job(app, job_id)
    wait_for_text(app, f"watch {job_id}: ended completed")


def test_a_bad_upload_shows_the_servers_error_and_copies_nothing(app, tmp_path):
    app.root.clipboard_clear()
    app.root.clipboard_append("untouched")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    app.upload_asset(str(empty))
    wait_for_text(app, "HTTP 400", "invalid_asset: the file is empty")
    app.upload_asset(str(tmp_path / "missing.png"))
    wait_for_text(app, "cannot read ")
    assert app.root.clipboard_get() == "untouched" and "workflow input" not in app.output()


def test_an_upload_over_the_limit_shows_413(app, limited_port, tmp_path):
    fill(app.port_entry, str(limited_port))
    big = tmp_path / "big.bin"
    big.write_bytes(b"\0" * (3 * 1024 * 1024))
    app.upload_asset(str(big))
    wait_for_text(app, "HTTP 413", "asset_too_large: ", '"limit_bytes": 1048576')


def test_watch_follows_the_event_stream(app, limited_port, servers_dir, tmp_path):
    fill(app.port_entry, str(limited_port))
    job_id = run_job(app, tmp_path)
    assert f"Watch job {job_id} ──\nfollowing its event stream (/jobevents)" in app.output()
    assert POLLING not in app.output()
    log = servers_dir / "cylindria-limited.log"
    wait_for(app, lambda: f"GET /jobevents/{job_id}/ 200" in log_text(log), "the stream's log line")
    # the one JobStatus is run_job's own button; the watch sent none
    assert log_text(log).count(f"GET /jobstatus/{job_id}/ ") == 1


def test_watch_polls_when_every_stream_is_taken(app, limited_port, servers_dir, tmp_path):
    fill(app.port_entry, str(limited_port))
    # Not run_job's 40 s: ComfyUI would answer an unchanged sleep node from its cache at once.
    start_job(app, tmp_path, workflows.slow(seconds=41, steps=4))
    wait_for_text(app, "HTTP 201")
    job_id = app.last_job_id
    url = f"http://127.0.0.1:{limited_port}/jobevents/{job_id}/"
    with requests.get(url, headers={"X-API-Key": KEY}, stream=True, timeout=WAIT_S) as held:
        assert held.status_code == 200  # the one slot is taken until this job ends
        watch_job(app, job_id)
        wait_for_text(app, f"watch {job_id}: no event stream: HTTP 429",
                      "too_many_streams", POLLING)
        wait_for_text(app, f"watch {job_id}: ended completed")
    assert app.watch_var.get() == f"{job_id}: completed 100% · GPU 0"
    log = log_text(servers_dir / "cylindria-limited.log")
    assert f"GET /jobevents/{job_id}/ 429" in log and f"GET /jobstatus/{job_id}/ 200" in log


def test_stopping_the_watch_closes_its_stream(app, limited_port, tmp_path):
    fill(app.port_entry, str(limited_port))
    start_job(app, tmp_path, workflows.slow(seconds=400, steps=80))  # about 20 s here
    wait_for_text(app, "HTTP 201")
    job_id = app.last_job_id
    watch_job(app, job_id)
    wait_for_text(app, f"watch {job_id}: running")
    reader = app.reader._thread
    app.watch_button.invoke()
    assert app.reader is None and f"watch {job_id}: stopped by the operator" in app.output()
    wait_for(app, lambda: not reader.is_alive(), "the reader thread to end")
    url = f"http://127.0.0.1:{limited_port}/jobevents/{job_id}/"
    headers = {"X-API-Key": KEY}

    def slot_free() -> bool:
        with requests.get(url, headers=headers, stream=True, timeout=WAIT_S) as again:
            return again.status_code == 200
    try:
        wait_for(app, slot_free, "the server to get its stream slot back")
    finally:
        requests.delete(f"http://127.0.0.1:{limited_port}/job/{job_id}/", headers=headers,
                        timeout=WAIT_S)


def test_a_stream_that_drops_falls_back_to_polling(app):
    with Server(SseHandler) as stub:
        stub.httpd.mode, stub.httpd.chunks = "drop", FULL_STREAM[:3]  # queued, then running
        fill(app.port_entry, str(stub.httpd.server_address[1]))
        watch_job(app, "j")
        wait_for_text(app, "watch j: running", "watch j: the event stream broke (", POLLING,
                      "watch j: ended completed")
        paths = [r["path"] for r in stub.received]
    assert paths[:2] == ["/jobevents/j/", "/jobstatus/j/"]
    assert app.watch is None and app.progress["value"] == 100
