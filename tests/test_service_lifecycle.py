"""The service hosts' shared lifecycle: what the Windows service runs and stops, on Linux."""
import logging
import socket
import subprocess
import threading

import pytest

from tests.conftest import make_config
from tests.helpers import API_KEY, Api, wait_for
from tests.processes import CylindriaProcess
from web import service_cli, winservice
from web.config import load_config
from web.logs import LOG_FILE_NAME
from web.server import Service
from web.winservice import ServiceRunner


def cylindria_threads() -> list[str]:
    return [t.name for t in threading.enumerate()
            if t.name.startswith("cylindria-") and t.is_alive()]


def no_cylindria_threads() -> bool:
    """True once every cylindria-* thread is gone: a /queue poll already under way at stop() is
    left to end by its own timeout (comfy.poller), so this waits for it, briefly."""
    return wait_for(lambda: cylindria_threads() == [], timeout=5, message="threads to end")


def service_flags(fakes, data_dir) -> list[str]:
    """Flags as `service install` stores them for the Windows service: no key among them."""
    return ["--host", "127.0.0.1", "--port", "0", "--numberOfGpus", str(len(fakes)),
            "--comfy-base-url", fakes[0].url, "--data-dir", str(data_dir), "--poll-interval", "0.5"]


def test_windows_service_module_imports_without_pywin32():
    has_pywin32 = winservice.win32serviceutil is not None
    assert (winservice.CylindriaService is not None) == has_pywin32
    assert winservice.CLASS_STRING.endswith("cylindria.CylindriaService")
    if not has_pywin32:
        with pytest.raises(OSError, match="pywin32"):
            winservice.install([])


def test_the_service_runner_serves_with_the_key_file_and_stops_like_svcstop(fakes, tmp_path):
    data = tmp_path / "data"
    flags = service_flags(fakes, data)
    service_cli.store_key(load_config(flags + ["--api-key", API_KEY], {}), None)  # as install does
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
