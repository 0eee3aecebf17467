"""The service hosts' shared lifecycle: what the Windows service runs and stops, on Linux."""
import logging
import os
import re
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from cylindria.config.options import load_config
from cylindria.service import cli, winservice
from cylindria.service.logs import LOG_FILE_NAME
from cylindria.service.server import Service
from cylindria.service.winservice import ServiceRunner
from tests.conftest import TIME_SCALE, make_config
from tests.fake_comfy import FakeComfy
from tests.helpers import API_KEY, Api, free_ports, wait_for
from tests.processes import CylindriaProcess


def cylindria_threads() -> list[str]:
    return [t.name for t in threading.enumerate()
            if t.name.startswith("cylindria-") and t.is_alive()]


def no_cylindria_threads() -> bool:
    """True once every cylindria-* thread is gone: a /queue poll already under way at stop() is
    left to end by its own timeout (comfy.tracking.poller), so this waits for it, briefly."""
    return wait_for(lambda: cylindria_threads() == [], timeout=5, message="threads to end")


def service_flags(fakes, data_dir) -> list[str]:
    """Flags as `service install` stores them for the Windows service: no key among them."""
    return ["--host", "127.0.0.1", "--port", "0", "--numberOfGpus", str(len(fakes)),
            "--comfy-base-url", fakes[0].url, "--data-dir", str(data_dir), "--poll-interval", "0.5"]


def test_windows_service_module_imports_without_pywin32():
    has_pywin32 = winservice.win32serviceutil is not None
    assert (winservice.CylindriaService is not None) == has_pywin32
    folder, _, dotted = winservice.CLASS_STRING.rpartition(os.sep)
    assert dotted == "cylindria.service.winservice.CylindriaService"  # imported from `folder`
    assert (Path(folder) / "cylindria" / "service" / "winservice.py").is_file()
    if not has_pywin32:
        with pytest.raises(OSError, match="pywin32"):
            winservice.install([])


def test_the_service_runner_serves_with_the_key_file_and_stops_like_svcstop(fakes, tmp_path):
    data = tmp_path / "data"
    flags = service_flags(fakes, data)
    cli.store_key(load_config(flags + ["--api-key", API_KEY], {}), None)  # as install does
    runner = ServiceRunner()
    thread = threading.Thread(target=runner.run, args=(flags,), name="test-service-host")
    thread.start()
    wait_for(lambda: runner.service is not None and runner.service.ready.is_set())
    assert Api(runner.service.url).get("/jobstatus/nope").status_code == 404  # key accepted
    assert Api(runner.service.url, key="wrong-key-123").get("/jobstatus/nope").status_code == 401
    assert runner.stop() is True  # what CylindriaService.SvcStop calls
    thread.join(5)
    assert not thread.is_alive() and no_cylindria_threads()
    log = (data / LOG_FILE_NAME).read_text()
    assert "GET /jobstatus/nope 404" in log and "Cylindria stopped" in log and API_KEY not in log
    assert not [h for h in logging.getLogger().handlers if getattr(h, "baseFilename", "") ==
                str(data / LOG_FILE_NAME)]  # the runner took its file handler away again


def test_a_stop_before_the_start_is_honoured(fakes, tmp_path):
    runner = ServiceRunner()
    assert runner.stop() is True
    runner.run(service_flags(fakes, tmp_path / "data"))  # returns at once
    assert runner.service is None and cylindria_threads() == []


def test_a_port_in_use_leaves_nothing_running(fakes, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        service = Service(make_config(fakes, tmp_path, port=taken.getsockname()[1]))
        with pytest.raises(OSError):
            service.start()
    assert no_cylindria_threads() and not service.ready.is_set()


def test_sigterm_stops_the_command_line_cleanly(fakes, tmp_path):
    proc = CylindriaProcess(fakes[0].url, tmp_path / "data").start()
    try:
        proc.proc.terminate()  # SIGTERM: what systemd sends to stop the unit
        assert proc.proc.wait(timeout=30) == 0
    except subprocess.TimeoutExpired:
        proc.proc.kill()
        raise
    finally:
        proc.stop()
    assert "stopped on Ctrl+C or SIGTERM" in proc.log() and "Cylindria stopped" in proc.log()


@pytest.mark.parametrize("gpu0", ["silent", "refusing"])
def test_sigterm_with_a_gpu_unreachable_exits_0_when_the_log_says(tmp_path, gpu0):
    """GPU 0 accepts connections but never answers (its /queue call waits for a 10 s timeout on
    a pool thread) or refuses them; GPU 1 is fine. The logged stop time is the real one."""
    base = free_ports(2)
    with socket.socket() as silent, FakeComfy(port=base + 1, time_scale=TIME_SCALE):
        silent.bind(("127.0.0.1", base if gpu0 == "silent" else 0))
        silent.listen(64)  # never accepted: the kernel completes the handshakes, nobody answers
        proc = CylindriaProcess(f"http://127.0.0.1:{base}", tmp_path / "data").start()
        try:
            asked = time.monotonic()
            proc.proc.terminate()
            code = proc.proc.wait(timeout=30)
            measured = time.monotonic() - asked
        finally:
            proc.stop()
    assert code == 0
    logged = float(re.search(r"Cylindria stopped in (\d+\.\d+)s", proc.log()).group(1))
    # The figure is the stop's real length: the process ends right after it is written, and
    # never waits for the silent GPU's timeout (generous bounds: the test host may be busy).
    assert logged <= measured + 0.01 and measured - logged < 5.0, (logged, measured)


def test_a_signal_while_serving_asks_the_loop_to_end_and_raises_nothing(fakes, tmp_path):
    """The handler of SIGINT/SIGTERM raises nothing while the loop serves: an exception
    raised in a signal handler lands in whatever the main thread runs, a finalizer's
    (which swallows it: the stop lost); the loop notices the flag and everything stops.
    Before the loop runs, it raises KeyboardInterrupt, which ends the start."""
    from cylindria.cli import _interrupt
    idle = Service(make_config(fakes, tmp_path / "idle"))
    try:
        with pytest.raises(KeyboardInterrupt):
            _interrupt(15, None, service=idle)
    finally:
        idle.close()
    service = Service(make_config(fakes, tmp_path / "serving")).serve_in_thread()
    wait_for(lambda: service.serving, message="the loop to run")
    assert _interrupt(15, None, service=service) is None
    assert service._done.wait(10) and service.signalled
    assert no_cylindria_threads()
