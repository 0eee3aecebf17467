"""The prompt worker: one prompt at a time, with ComfyUI's message order and targeting."""

from __future__ import annotations

import asyncio
import copy
import logging
import time
import traceback
import uuid
from typing import Any

from .catalogue import Catalogue
from .files import FileStore
from .graph import OutputCache, dependency_order, is_link
from .hub import (PREVIEW_IMAGE, PREVIEW_IMAGE_WITH_METADATA, Hub, preview_frame,
                  preview_with_metadata_frame)
from .knobs import Knobs, Recorder
from .nodes import FakeImage, NodeDef
from .progress import ProgressState
from .prompt_queue import Item, PromptQueue

logger = logging.getLogger(__name__)
POLL = 0.02  # how often the idle worker re-reads `hold` and the free flags


class Interrupted(Exception):
    """comfy.model_management.InterruptProcessingException."""


def _now_ms() -> int:
    """Message timestamps are epoch milliseconds."""
    return int(time.time() * 1000)


def _type_name(ex: BaseException) -> str:
    """ComfyUI's full_type_name: builtins stay bare."""
    module = type(ex).__module__
    return type(ex).__qualname__ if module == "builtins" else f"{module}.{type(ex).__qualname__}"


def _format_value(value: Any) -> Any:
    """How execution_error's current_inputs show one value."""
    return value if value is None or isinstance(value, (int, float, bool, str)) else str(value)


class Executor:
    """The worker loop plus the flags HTTP handlers set (interrupt, free), and the model the
    instance holds loaded (one at a time: a checkpoint switch costs a load)."""

    def __init__(self, queue: PromptQueue, hub: Hub, files: FileStore, knobs: Knobs,
                 catalogue: Catalogue, recorder: Recorder) -> None:
        self.queue, self.hub, self.files, self.knobs = queue, hub, files, knobs
        self.catalogue, self.recorder = catalogue, recorder
        self.cache = OutputCache()
        self.interrupt_requested = False
        self.free_flags: dict[str, bool] = {}  # POST /free's, applied between prompts
        self.loaded_model: str | None = None
        self.wake = asyncio.Event()

    def interrupt(self, prompt_id: str | None = None) -> None:
        """POST /interrupt: global, or only when that prompt is the running one."""
        if not prompt_id or prompt_id in self.queue.running_ids():
            self.interrupt_requested = True

    async def loop(self) -> None:
        """Run prompts until cancelled; a bug in one step is logged, never fatal."""
        while True:
            try:
                await self.step()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - keep the worker alive, but say so loudly
                logger.exception("fake ComfyUI worker step failed")

    async def step(self) -> None:
        """Wait for a runnable prompt, then run it to the end."""
        while self.knobs.hold or not self.queue.has_pending():
            self._apply_free()
            await self._nap()
        self._apply_free()
        task_id, item = self.queue.take()
        await PromptRun(self, task_id, item).execute()

    async def end_permit(self) -> None:
        """Before a prompt reports its end: one of `end_gate`'s permits, if a test set one."""
        while (gate := self.knobs.end_gate) is not None and not gate.acquire(blocking=False):
            await self._nap()

    async def _nap(self) -> None:
        """Sleep up to POLL, less if woken. Not wait_for: on 3.11 it can swallow a cancel."""
        self.wake.clear()
        alarm = asyncio.get_running_loop().call_later(POLL, self.wake.set)
        try:
            await self.wake.wait()
        finally:
            alarm.cancel()

    def request_free(self, unload_models: bool, free_memory: bool) -> None:
        """POST /free: remember its flags (set ones only, as ComfyUI's set_flag) for the
        worker's next pause."""
        if unload_models:
            self.free_flags["unload_models"] = True
        if free_memory:
            self.free_flags["free_memory"] = True
        self.wake.set()

    def _apply_free(self) -> None:
        """The worker honours POST /free between prompts, as ComfyUI's prompt_worker does:
        unload_models defaults to free_memory, which also empties the output cache."""
        flags, self.free_flags = self.free_flags, {}
        free_memory = flags.get("free_memory", False)
        if flags.get("unload_models", free_memory):
            self.loaded_model = None
        if free_memory:
            self.cache.clear()

    async def load_model(self, ckpt_name: str) -> None:
        """Make ckpt_name the loaded model; a switch sleeps load_seconds (scaled) and counts
        one load, the model already loaded costs nothing."""
        if ckpt_name == self.loaded_model:
            return
        await asyncio.sleep(self.catalogue.load_seconds * self.knobs.time_scale)
        self.loaded_model = ckpt_name
        self.recorder.add_model_load(ckpt_name)


class PromptRun:
    """Executes one queue item and records its history entry."""

    def __init__(self, executor: Executor, task_id: int, item: Item) -> None:
        self.executor, self.hub, self.task_id = executor, executor.hub, task_id
        self.item = copy.deepcopy(item)
        self.number, self.prompt_id, self.prompt, self.extra, self.outputs = self.item
        self.client_id: str | None = self.extra.get("client_id")
        self.messages: list[list] = []
        self.executed: list[str] = []
        self.ui_outputs: dict[str, dict] = {}
        self.meta: dict[str, dict] = {}
        self.sigs: dict[str, str] = {}
        self.progress = ProgressState(self.prompt_id, self.send)

    def add_message(self, event: str, data: dict, broadcast: bool) -> None:
        """A status message: kept for history; sent to the client (or all if broadcast)."""
        data = {**data, "timestamp": _now_ms()}
        self.messages.append([event, data])
        if self.client_id is not None or broadcast:
            self.hub.emit(event, data, self.client_id)

    def send(self, event: str | int, data: Any) -> None:
        """progress-like messages: to the client, or to everyone when there is none."""
        self.hub.emit(event, data, self.client_id)

    def send_to_client(self, event: str, data: dict) -> None:
        """executing/executed: only when the prompt carried a client_id."""
        if self.client_id is not None:
            self.hub.emit(event, data, self.client_id)

    async def execute(self) -> None:
        """execution_start .. execution_success/error/interrupted, then history and status."""
        self.executor.interrupt_requested = False  # a new prompt resets the interrupt flag
        self.hub.client_id = self.client_id
        self.add_message("execution_start", {"prompt_id": self.prompt_id}, False)
        self.sigs = self.executor.cache.set_prompt(self.prompt, self._changed)
        cached = [n for n in self.prompt if self.executor.cache.get(self.sigs[n]) is not None]
        self.add_message("execution_cached", {"nodes": cached, "prompt_id": self.prompt_id}, False)
        success = await self._run_nodes()
        await self.executor.end_permit()
        if success:
            self.add_message("execution_success", {"prompt_id": self.prompt_id}, False)
        self._finish(success)

    def _changed(self, node_id: str) -> Any:
        """IS_CHANGED of a node with its constant inputs (None for a class without one); a
        failure never matches a cached value (ComfyUI's NaN)."""
        definition = self._definition(node_id)
        if definition.is_changed is None:
            return None
        declared = definition.input_names()
        constants = {k: v for k, v in self.prompt[node_id]["inputs"].items()
                     if k in declared and not is_link(v)}
        try:
            return definition.is_changed(**constants)
        except Exception as ex:  # noqa: BLE001 - ComfyUI warns and runs the node again
            logger.warning("IS_CHANGED of node %s failed: %s", node_id, ex)
            return f"nan-{uuid.uuid4()}"

    def _plan(self) -> list[str]:
        """ExecutionList order: outputs always, their ancestors only when not cached."""
        cache = self.executor.cache
        return dependency_order(self.prompt, self.outputs,
                                descend=lambda n: cache.get(self.sigs[n]) is None)

    async def _run_nodes(self) -> bool:
        """Run the plan; False after an error or an interrupt (already reported)."""
        for node_id in self._plan():
            try:
                await self._run_node(node_id)
            except Interrupted:
                self._report_interrupt(node_id)
                return False
            except Exception as ex:  # noqa: BLE001 - a node failure is execution_error
                self._report_error(node_id, ex)
                return False
        return True

    async def _run_node(self, node_id: str) -> None:
        """One node: cached replay, or start/executing/run/executed/finish."""
        entry = self.executor.cache.get(self.sigs[node_id])
        if entry is not None:
            self._replay_cached(node_id, entry.ui)
            return
        self.progress.start(node_id)
        if self.client_id is not None:
            self.hub.last_node_id = node_id  # replayed to this client if it reconnects
        self.send_to_client("executing", {"node": node_id, "display_node": node_id,
                                          "prompt_id": self.prompt_id})
        self.check_interrupt()
        definition = self._definition(node_id)
        outputs, ui = await definition.run(NodeRunContext(self, node_id), **self._inputs(node_id))
        self.executor.cache.store(self.sigs[node_id], outputs, ui)
        if ui is not None:
            self._record_ui(node_id, ui)
        self.progress.finish(node_id)
        self.executed.append(node_id)

    def _definition(self, node_id: str) -> NodeDef:
        """The node's class as this instance serves it (validation refused the others)."""
        return self.executor.catalogue.nodes[self.prompt[node_id]["class_type"]]

    def _inputs(self, node_id: str) -> dict[str, Any]:
        """Declared inputs only; links read the producer's cached outputs."""
        declared = self._definition(node_id).input_names()
        values = {}
        for name, value in self.prompt[node_id]["inputs"].items():
            if name in declared:
                values[name] = self._resolve(value)
        return values

    def _resolve(self, value: Any) -> Any:
        """A constant, or slot `value[1]` of node `value[0]`."""
        if not is_link(value):
            return value
        return self.executor.cache.get(self.sigs[value[0]]).outputs[value[1]]

    def _record_ui(self, node_id: str, ui: dict) -> None:
        """An output node's result: `executed` now, outputs/meta for history later."""
        self.send_to_client("executed", {"node": node_id, "display_node": node_id,
                                         "output": ui, "prompt_id": self.prompt_id})
        self.ui_outputs[node_id] = ui
        self.meta[node_id] = {"node_id": node_id, "display_node": node_id,
                              "parent_node": None, "real_node_id": node_id}

    def _replay_cached(self, node_id: str, ui: dict | None) -> None:
        """A cached output node: `executed` replay and a finished progress entry."""
        if ui is not None:
            self._record_ui(node_id, ui)
        else:
            self.send_to_client("executed", {"node": node_id, "display_node": node_id,
                                             "output": None, "prompt_id": self.prompt_id})
        self.progress.finish(node_id)

    def check_interrupt(self) -> None:
        """Raise when an interrupt was requested (nodes.before_node_execution)."""
        if self.executor.interrupt_requested:
            self.executor.interrupt_requested = False
            raise Interrupted()

    def _report_interrupt(self, node_id: str) -> None:
        """execution_interrupted is broadcast when there is no client (broadcast=True)."""
        self.add_message("execution_interrupted", {
            "prompt_id": self.prompt_id, "node_id": node_id,
            "node_type": self.prompt[node_id]["class_type"], "executed": list(self.executed)},
            True)

    def _report_error(self, node_id: str, ex: Exception) -> None:
        """execution_error with ComfyUI's fields."""
        node = self.prompt[node_id]
        current = {k: [_format_value(self._safe_resolve(v))] for k, v in node["inputs"].items()}
        self.add_message("execution_error", {
            "prompt_id": self.prompt_id, "node_id": node_id, "node_type": node["class_type"],
            "executed": list(self.executed), "exception_message": f"{ex}\n",
            "exception_type": _type_name(ex), "traceback": traceback.format_tb(ex.__traceback__),
            "current_inputs": current, "current_outputs": list(self.prompt)}, False)

    def _safe_resolve(self, value: Any) -> Any:
        """Resolve for error reports; a missing upstream output shows as None."""
        try:
            return self._resolve(value)
        except Exception:  # noqa: BLE001 - reporting must not fail
            return None

    def _finish(self, success: bool) -> None:
        """History and leaving `running` in one step, then status, then `executing` null."""
        entry = {"prompt": self.item, "outputs": self.ui_outputs,
                 "status": {"status_str": "success" if success else "error",
                            "completed": success, "messages": self.messages},
                 "meta": self.meta}
        self.hub.last_node_id = None
        self.executor.queue.task_done(self.task_id, entry)
        self.send_to_client("executing", {"node": None, "prompt_id": self.prompt_id})


class NodeRunContext:
    """The NodeContext handed to one running node."""

    def __init__(self, run: PromptRun, node_id: str) -> None:
        self.run, self.node_id = run, node_id

    async def sleep(self, seconds: float) -> None:
        """Sleep, scaled by time_scale."""
        await asyncio.sleep(max(0.0, seconds * self.run.executor.knobs.time_scale))

    async def progress(self, value: int, total: int, preview: bytes | None = None) -> None:
        """The progress hook: interrupt check, progress_state (+type 4), progress (+type 1)."""
        run = self.run
        run.check_interrupt()
        run.progress.update(self.node_id, value, total)
        metadata = run.hub.supports_preview_metadata(run.client_id)
        if preview is not None and metadata:
            run.send(PREVIEW_IMAGE_WITH_METADATA, preview_with_metadata_frame(preview, {
                "node_id": self.node_id, "prompt_id": run.prompt_id,
                "display_node_id": self.node_id, "parent_node_id": None,
                "real_node_id": self.node_id, "image_type": "image/jpeg"}))
        run.send("progress", {"value": value, "max": total, "prompt_id": run.prompt_id,
                              "node": self.node_id})
        if preview is not None and not metadata:
            run.send(PREVIEW_IMAGE, preview_frame(preview))

    async def load_model(self, ckpt_name: str) -> None:
        """The instance's model slot (the executor's: it outlives the prompt)."""
        await self.run.executor.load_model(ckpt_name)

    def save_images(self, image: FakeImage, prefix: str, kind: str) -> list[dict]:
        """One PNG per batch item: the image's pixels, or a stand-in when it has none."""
        return self.run.executor.files.save_images(prefix, kind, image.batch, image.png())
