"""A GPU whose ComfyUI refuses connections: one WARNING naming it per outage, one line when it
is back, and none of websocket-client's own ERROR lines ("Connection refused - goodbye")."""
import logging

import pytest

from comfy.comfyui.gpu import Gpu
from comfy.comfyui.listener import Listener
from cylindria.service.server import Service
from tests.conftest import TIME_SCALE, make_config
from tests.fake_comfy import FakeComfy
from tests.helpers import free_ports, wait_for


@pytest.fixture
def library_logs(caplog):
    """Every record at DEBUG, websocket-client's included (conftest silences that library
    for the other tests: undone here, so the check below is real)."""
    library = logging.getLogger("websocket")
    library.setLevel(logging.NOTSET)
    caplog.set_level(logging.DEBUG)
    yield caplog
    library.setLevel(logging.CRITICAL)


class CountingListener(Listener):
    """A Listener that counts its failed connects."""

    refused = 0

    def handle_error(self, ws, error) -> None:
        if isinstance(error, ConnectionRefusedError):
            self.refused += 1
        super().handle_error(ws, error)


def records(caplog, name=None, level=None):
    return [r for r in caplog.records if (name is None or r.name == name)
            and (level is None or r.levelno == level)]


def test_a_refusing_gpu_is_warned_once_however_often_the_listener_retries(library_logs):
    port = free_ports(1)  # nothing listens there
    gpu = Gpu(3, f"http://127.0.0.1:{port}", "cid")
    listener = CountingListener(gpu, None, lambda index: None, backoff_initial=0.01,
                                backoff_max=0.05)
    listener.start()
    try:
        wait_for(lambda: listener.refused >= 10, message="ten refused connects")
    finally:
        listener.stop(timeout=5)
    caplog = library_logs
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    warnings = records(caplog, level=logging.WARNING)
    assert [(r.name, r.getMessage()) for r in warnings] == [
        ("comfy.comfyui.gpu", f"GPU 3: ComfyUI at http://127.0.0.1:{port} refuses connections")]
    library = records(caplog, "websocket")
    assert any("goodbye" in r.getMessage() for r in library)  # it did complain: at DEBUG
    assert {r.levelname for r in library} == {"DEBUG"}
    assert gpu.reachable is False


def test_an_outage_and_the_return_give_one_warning_and_one_info_line(tmp_path, library_logs):
    port = free_ports(1)
    fakes_stand_in = [type("Down", (), {"url": f"http://127.0.0.1:{port}"})()]
    config = make_config(fakes_stand_in, tmp_path, poll_interval=0.2)
    caplog = library_logs
    service = Service(config).serve_in_thread()
    try:
        wait_for(lambda: len([r for r in records(caplog, "websocket")
                              if "goodbye" in r.getMessage()]) >= 3, message="3 refused connects")
        with FakeComfy(port=port, time_scale=TIME_SCALE):
            wait_for(lambda: "reachable again" in caplog.text, message="the GPU to be back")
            service.stop()  # before the fake goes: that would be a second outage
    finally:
        service.stop()
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    url = f"http://127.0.0.1:{port}"
    # The outage's own lines (at stop, a poll of the 0.2 s interval may still be under way on
    # a loaded machine: the poller says so at WARNING, a line about the stop, not the outage).
    assert [r.getMessage() for r in records(caplog, level=logging.WARNING)
            if r.name != "comfy.tracking.poller"] == [f"GPU 0: ComfyUI at {url} refuses connections"]
    assert [r.getMessage() for r in records(caplog, "comfy.comfyui.gpu", logging.INFO)
            if "reachable" in r.getMessage()] == [f"GPU 0: ComfyUI at {url} is reachable again"]
