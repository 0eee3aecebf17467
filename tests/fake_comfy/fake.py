"""FakeComfy: a fake ComfyUI 0.3.64 on its own event-loop thread, driven from tests."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import threading
from typing import Any, Callable, Coroutine, Iterable

from .catalogue import DEFAULT_CHECKPOINTS, Catalogue
from .costs import cost_table
from .files import FileStore
from .instance import Instance
from .knobs import CostedSection, Knobs, RecordedRequest, Recorder, Upload

logger = logging.getLogger(__name__)
CALL_TIMEOUT = 10.0  # seconds a public method waits for the loop thread


def _check_loopback(host: str) -> None:
    """The fake never listens beyond this machine."""
    if host != "localhost" and not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"FakeComfy only binds loopback addresses, not {host!r}")


def _knob(name: str, convert: Callable[[Any], Any]) -> property:
    """A FakeComfy attribute that reads and writes one of its Knobs (converted on the way in)."""
    return property(lambda self: getattr(self.knobs, name),
                    lambda self, value: setattr(self.knobs, name, convert(value)))


def _costs(costs: dict[str, float] | str | None) -> dict[str, float] | None:
    """A copy of a cost table (route key -> seconds, see costs.py), so the caller's dict can
    change without the loop seeing it half-changed; a name ("none", "recorded", "real") is
    its table; None (no cost) stays None."""
    if isinstance(costs, str):
        costs = cost_table(costs)
    return None if costs is None else {str(k): float(v) for k, v in costs.items()}


def _models(models: dict[str, Iterable[str]]) -> dict[str, tuple[str, ...]]:
    """A copy of a folder -> file names table, so the caller's lists can change unseen."""
    return {str(folder): tuple(str(name) for name in names) for folder, names in models.items()}


class FakeComfy:
    """A fake ComfyUI server; every public method is safe to call from any thread.

    custom_nodes / without_nodes / checkpoints / load_seconds make this instance's
    Catalogue (catalogue.py): what it has installed, fixed for its lifetime. `models`
    ({folder: [names]}) changes what GET /models/{folder} lists at any time (files added
    to a real ComfyUI's models folder show at once): the folders it names replace their
    defaults (checkpoints: the `checkpoints`, every other folder of MODEL_FOLDERS empty),
    and a folder not among them is added; {} goes back to the defaults.
    """

    def __init__(self, port: int = 0, host: str = "127.0.0.1", time_scale: float = 1.0,
                 costs: dict[str, float] | str | None = None, *,
                 custom_nodes: Iterable[str] = (), without_nodes: Iterable[str] = (),
                 checkpoints: Iterable[str] = DEFAULT_CHECKPOINTS,
                 load_seconds: float = 0.0) -> None:
        _check_loopback(host)
        self.host, self.port = host, port
        self._files = FileStore()
        self.catalogue = Catalogue(custom_nodes, without_nodes, checkpoints, load_seconds,
                                   self._files)
        self.knobs = Knobs(time_scale=time_scale, costs=_costs(costs))
        self._recorder = Recorder()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._instance: Instance | None = None
        self._saved: tuple[dict, int] | None = None  # (history, number) of the last stopped one

    # -- knobs, as plain attributes -----------------------------------------------------
    hold = _knob("hold", bool)
    ws_silent = _knob("ws_silent", bool)
    http_delay = _knob("http_delay", float)
    ignore_prompt_id = _knob("ignore_prompt_id", bool)
    end_gate = _knob("end_gate", lambda gate: gate)
    time_scale = _knob("time_scale", float)
    costs = _knob("costs", _costs)
    models = _knob("models", _models)

    @property
    def url(self) -> str:
        """Base URL, e.g. http://127.0.0.1:8188."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def running(self) -> bool:
        """Whether the fake is listening."""
        return self._instance is not None

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> "FakeComfy":
        """Listen on host:port (port 0 picks a free one); returns once listening."""
        return self._start(None)

    def stop(self) -> None:
        """Like killing the process: sockets dropped without close frame, port closed."""
        instance, self._instance = self._instance, None
        if instance is not None:
            self._call(instance.kill())
            self._saved = (instance.queue.history, instance.number)

    def restart(self, keep_state: bool = False) -> "FakeComfy":
        """Start again on the same port; keep_state keeps history (and the prompt counter)
        and the input folder, without it the input folder is empty (outputs always stay)."""
        self.stop()
        return self._start(self._saved if keep_state else None)

    def close(self) -> None:
        """Stop and end the loop thread; idempotent."""
        self.stop()
        loop, thread, self._loop, self._thread = self._loop, self._thread, None, None
        if loop is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(CALL_TIMEOUT)
        if thread.is_alive():
            logger.error("fake ComfyUI loop thread %s did not stop", thread.name)
        else:
            loop.close()

    def __enter__(self) -> "FakeComfy":
        """Start; `with FakeComfy() as fake:`."""
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        """Close."""
        self.close()

    # -- controls and observations ---------------------------------------------------------
    def drop_websockets(self) -> None:
        """Abort every websocket now (no close frame); reconnects are accepted."""
        if self._instance is not None:
            self._run(self._instance.hub.abort_all)

    def ws_client_ids(self) -> list[str]:
        """clientId of every open socket, oldest first (a replaced one is still listed)."""
        if self._instance is None:
            return []
        hub = self._instance.hub
        return self._run(lambda: [c.sid for c in hub.connections])

    def requests(self) -> list[RecordedRequest]:
        """Every HTTP request received so far (websocket upgrades included)."""
        return self._recorder.requests()

    def costed_sections(self) -> list[CostedSection]:
        """Every costed section so far (with `costs` set): route key, cost, entered, left."""
        return self._recorder.sections()

    def prompts_received(self) -> list[str]:
        """prompt_ids accepted by POST /prompt, in order."""
        return self._recorder.prompt_ids()

    @property
    def system_stats_calls(self) -> int:
        """Number of GET /system_stats answered."""
        return self._recorder.system_stats_calls

    @property
    def model_loads(self) -> int:
        """Checkpoint loads so far (a CheckpointLoaderSimple that switched the model; a
        cached loader or the checkpoint already loaded does not count), across restarts."""
        return len(self._recorder.model_loads())

    @property
    def last_model(self) -> str | None:
        """The checkpoint the instance holds loaded: None before its first load, after a
        POST /free that unloads models, and after stop() or restart() (a new process)."""
        if self._instance is None:
            return None
        executor = self._instance.executor
        return self._run(lambda: executor.loaded_model)

    @property
    def uploads(self) -> list[Upload]:
        """Every upload POST /upload/image accepted into the input folder, as (subfolder,
        name, data) where it lies (a refused one is not here; requests() has all)."""
        return self._recorder.uploads()

    def clear_inputs(self) -> None:
        """Empty the input folder (with its subfolders), as if someone cleaned it."""
        self._files.clear("input")

    def output_bytes(self, filename: str, subfolder: str = "", type: str = "output") -> bytes:
        """What /view serves for that file; KeyError when there is none."""
        data = self._files.get(type, subfolder, filename)
        if data is None:
            raise KeyError(f"no {type} file {subfolder}/{filename}")
        return data

    # -- loop plumbing ------------------------------------------------------------------
    def _start(self, saved: tuple[dict, int] | None) -> "FakeComfy":
        """Start a new instance, optionally with a previous history and prompt counter."""
        if self._instance is not None:
            return self
        if saved is None:
            self.clear_inputs()  # a fresh process sees an input folder someone emptied
        self._ensure_loop()
        try:
            self._instance = self._call(self._boot(*(saved or (None, 0))))
        except BaseException:
            self.close()  # no thread left behind when the port is taken; start() may retry
            raise
        self._thread.name = f"fake-comfy-{self.port}"
        return self

    async def _boot(self, history: dict | None, number: int) -> Instance:
        """Build the instance on the loop (its asyncio objects belong there) and listen."""
        instance = Instance(self.knobs, self._recorder, self._files, self.catalogue, history,
                            number)
        self.port = await instance.start(self.host, self.port)
        return instance

    def _ensure_loop(self) -> None:
        """Start the event-loop thread once."""
        if self._loop is not None:
            return
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name=f"fake-comfy-{self.port}")
        self._thread.start()

    def _call(self, coro: Coroutine) -> Any:
        """Run a coroutine on the loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(CALL_TIMEOUT)

    def _run(self, fn: Callable[[], Any]) -> Any:
        """Run a plain function on the loop (the only thread touching server state)."""

        async def call() -> Any:
            """The function, as a coroutine run_coroutine_threadsafe accepts."""
            return fn()

        return self._call(call())
