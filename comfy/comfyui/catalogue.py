"""What each ComfyUI can run (its /object_info), and what a workflow needs of it.

A host's GPUs may have different custom nodes installed, so each GPU has its own catalogue,
read when its websocket connects (a restarted ComfyUI may have new nodes). A held job goes
only to a GPU whose catalogue knows every node class it uses, and a workflow no reachable
GPU could run is refused before it is held.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from comfy.comfyui.errors import ComfyError
from comfy.inputs.fileinputs import file_inputs_of
from comfy.comfyui.models import read_models
from comfy.comfyui.queue import nodes_needed
from comfy.inputs.workflow import WorkflowError

logger = logging.getLogger(__name__)

# String inputs naming a model file: jobs that use the same ones run best where they are loaded.
MODEL_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".gguf", ".sft")


@dataclass(frozen=True)
class Needs:
    """What a workflow asks of a GPU: its node classes, and the model files it loads."""

    classes: frozenset
    models: frozenset


def needs_of(prompt: dict) -> Needs:
    """The node classes and model files of an (already checked) API-format prompt."""
    classes, models = set(), set()
    for node in prompt.values():
        classes.add(node["class_type"])
        for value in node["inputs"].values():
            if isinstance(value, str) and value.lower().endswith(MODEL_SUFFIXES):
                models.add(value)
    return Needs(frozenset(classes), frozenset(models))


@dataclass(frozen=True)
class NodeClass:
    """One node class as a gateway needs it: its required inputs, and whether it is an output."""

    required: tuple
    output: bool


class Catalogue:
    """The node classes one ComfyUI knows, and its model files (comfy.comfyui.models)."""

    def __init__(self, nodes: dict[str, NodeClass], file_inputs: dict | None = None):
        self.nodes = nodes
        self.file_inputs = file_inputs or {}  # class -> its inputs that load a file (fileinputs)
        self.models: dict = {}  # folder -> file names, read after the nodes (refresh_catalogue)

    @classmethod
    def from_object_info(cls, body) -> "Catalogue":
        """Parse GET /object_info: {class: {"input": {"required": {...}}, "output_node": bool}}."""
        if not isinstance(body, dict):
            raise ValueError("/object_info is not an object")
        nodes = {}
        for name, info in body.items():
            if not isinstance(info, dict):
                continue
            inputs = info.get("input") if isinstance(info.get("input"), dict) else {}
            required = inputs.get("required") if isinstance(inputs.get("required"), dict) else {}
            nodes[str(name)] = NodeClass(tuple(required), info.get("output_node") is True)
        return cls(nodes, file_inputs_of(body))

    def knows(self, classes) -> bool:
        """True when every one of these node classes is installed here."""
        return all(name in self.nodes for name in classes)

    def problem(self, prompt: dict) -> dict | None:
        """Why this ComfyUI would refuse the prompt at validation, or None: a node class it
        does not know (any node), no output node, or a required input missing (on the nodes
        the outputs need: ComfyUI validates only those)."""
        for node_id, node in prompt.items():
            if node["class_type"] not in self.nodes:
                return {"node_id": node_id, "class_type": node["class_type"],
                        "reason": "unknown_node_class"}
        outputs = [node_id for node_id, node in prompt.items()
                   if self.nodes[node["class_type"]].output]
        if not outputs:
            return {"node_id": None, "class_type": None, "reason": "no_output_node"}
        for node_id in sorted(nodes_needed(prompt, outputs), key=_node_order):
            node = prompt[node_id]
            missing = [name for name in self.nodes[node["class_type"]].required
                       if name not in node["inputs"]]
            if missing:
                return {"node_id": node_id, "class_type": node["class_type"],
                        "reason": "missing_required_input", "inputs": missing}
        return None


def check_workflow(prompt: dict, catalogues: list[Catalogue]) -> None:
    """Refuse (400 invalid_workflow) a workflow that none of these catalogues could run,
    naming the node; with no catalogue known yet (no GPU reachable), nothing can be said."""
    problems = [catalogue.problem(prompt) for catalogue in catalogues]
    if not problems or any(problem is None for problem in problems):
        return
    for node_id, node in prompt.items():
        if not any(node["class_type"] in catalogue.nodes for catalogue in catalogues):
            raise WorkflowError("invalid_workflow", f"node {node_id}: class {node['class_type']!r} "
                                "is not installed on any reachable GPU",
                                {"node_id": node_id, "class_type": node["class_type"],
                                 "reason": "unknown_node_class"})
    problem = next((p for p in problems if p["reason"] != "unknown_node_class"), None)
    if problem is None:
        raise WorkflowError("invalid_workflow", "no reachable GPU has every node class of the "
                            f"workflow (node {problems[0]['node_id']}'s class "
                            f"{problems[0]['class_type']!r} is missing on one)",
                            {**problems[0], "reason": "no_gpu_has_every_class"})
    raise WorkflowError("invalid_workflow", _sentence(problem), problem)


def _sentence(problem: dict) -> str:
    """A problem other than an unknown class, as one human sentence."""
    if problem["reason"] == "no_output_node":
        return "the workflow has no output node (such as SaveImage), so ComfyUI would run nothing"
    return (f"node {problem['node_id']} ({problem['class_type']}): required input "
            f"{', '.join(problem['inputs'])} missing")


def _node_order(node_id: str):
    """Numeric node ids in numeric order, others after them: the first problem is the
    one a user reading the workflow top-down meets first."""
    return (0, int(node_id), "") if node_id.isdigit() else (1, 0, node_id)


def refresh_catalogue(gpu, read_models_later=None) -> bool:
    """Read the GPU's /object_info if it is wanted (first time, or its websocket just
    connected: ComfyUI may have restarted with other nodes); True if it was read now.
    `read_models_later(catalogue, gpu)` reads its model files apart (the poller's own
    workers); without it they are read here, after the classes."""
    if not gpu.catalogue_wanted:
        return False
    try:
        catalogue = Catalogue.from_object_info(gpu.client.object_info())
    except (ComfyError, ValueError) as exc:
        logger.warning("GPU %d: could not read /object_info (%s); jobs wait for it", gpu.index, exc)
        gpu.catalogue_tried.set()  # a submission waiting for it need not wait any longer
        return False
    previous = gpu.catalogue
    catalogue.models = previous.models if previous is not None else {}
    gpu.set_catalogue(catalogue)
    logger.log(_level(gpu.is_news("node classes", frozenset(catalogue.nodes))),
               "GPU %d: %d node classes installed", gpu.index, len(catalogue.nodes))
    # Then its model files, apart: the poll (this GPU's reconciliation, the dispatcher's
    # wake-up) never waits for 20 calls to a ComfyUI that may be slow. Until they are read
    # (or if they cannot be) the last known ones stand.
    if read_models_later is not None:
        read_models_later(catalogue, gpu)
    else:
        read_models_into(catalogue, gpu)
    return True


def read_models_into(catalogue: Catalogue, gpu, stop: threading.Event | None = None) -> None:
    """Read a GPU's model files onto its catalogue (a newer catalogue, after another
    reconnect, is left to its own read)."""
    try:
        lists = read_models(gpu.client, catalogue.models, stop)
    except Exception:
        logger.exception("GPU %d: reading its model files failed", gpu.index)
        return
    if lists is not catalogue.models:  # read now, not the last known lists kept
        logger.log(_level(gpu.is_news("model files", lists)),
                   "GPU %d: %d model files in %d folders", gpu.index,
                   sum(len(files) for files in lists.values()), len(lists))
    catalogue.models = lists


def _level(news: bool) -> int:
    """INFO for what changed (or is new), DEBUG for the same again."""
    return logging.INFO if news else logging.DEBUG
