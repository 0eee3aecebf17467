"""Per-prompt node progress, sent as `progress_state` like comfy_execution.progress does."""

from __future__ import annotations

from typing import Callable

Emit = Callable[[str, dict], None]


class ProgressState:
    """Node states of one prompt; every change sends the whole non-pending table."""

    def __init__(self, prompt_id: str, emit: Emit) -> None:
        self.prompt_id = prompt_id
        self._emit = emit
        self._nodes: dict[str, dict] = {}

    def _entry(self, node_id: str) -> dict:
        """The node's entry; new ones are pending with integer 0/1, as in ComfyUI."""
        return self._nodes.setdefault(node_id, {"state": "pending", "value": 0, "max": 1})

    def start(self, node_id: str) -> None:
        """A node begins: running at 0.0 of 1.0."""
        self._entry(node_id).update(state="running", value=0.0, max=1.0)
        self._send()

    def update(self, node_id: str, value: int, total: int) -> None:
        """A progress-bar step."""
        self._entry(node_id).update(state="running", value=value, max=total)
        self._send()

    def finish(self, node_id: str) -> None:
        """A node is done (also a cached one): value jumps to max."""
        entry = self._entry(node_id)
        entry.update(state="finished", value=entry["max"])
        self._send()

    def _send(self) -> None:
        """Emit `progress_state` with every node that is not pending."""
        nodes = {node_id: {
            "value": e["value"], "max": e["max"], "state": e["state"], "node_id": node_id,
            "prompt_id": self.prompt_id, "display_node_id": node_id, "parent_node_id": None,
            "real_node_id": node_id,
        } for node_id, e in self._nodes.items() if e["state"] != "pending"}
        self._emit("progress_state", {"prompt_id": self.prompt_id, "nodes": nodes})
