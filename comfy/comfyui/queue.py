"""ComfyUI's /queue answer as plain data, and the graph facts Cylindria derives from it."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class QueueItem:
    """One queue entry: ComfyUI's 5-array [number, prompt_id, prompt, extra_data, outputs]."""

    number: float
    prompt_id: str
    prompt: dict
    outputs: tuple

    @classmethod
    def from_json(cls, item: list) -> "QueueItem":
        """Parse ComfyUI's 5-array."""
        prompt = item[2] if isinstance(item[2], dict) else {}
        outputs = tuple(str(o) for o in item[4]) if len(item) > 4 else ()
        return cls(float(item[0]), str(item[1]), prompt, outputs)

    def nodes_to_run(self) -> int:
        """How many nodes ComfyUI will execute: the outputs and everything they depend on."""
        return len(nodes_needed(self.prompt, self.outputs)) or len(self.prompt)


@dataclass(frozen=True)
class QueueSnapshot:
    """What one GET /queue said."""

    running: tuple
    pending: tuple

    @classmethod
    def from_json(cls, body: dict) -> "QueueSnapshot":
        """Parse {"queue_running": [...], "queue_pending": [...]}; pending sorted as ComfyUI runs it."""
        running = tuple(QueueItem.from_json(i) for i in body["queue_running"])
        pending = tuple(sorted((QueueItem.from_json(i) for i in body["queue_pending"]),
                               key=lambda item: item.number))
        return cls(running, pending)

    def positions(self) -> dict[str, int]:
        """prompt_id -> how many prompts run before it (the running ones included)."""
        ahead = len(self.running)
        return {item.prompt_id: ahead + i for i, item in enumerate(self.pending)}

    def items(self) -> dict[str, QueueItem]:
        """prompt_id -> item, running and pending."""
        return {item.prompt_id: item for item in self.running + self.pending}


def nodes_needed(prompt: dict, outputs) -> set:
    """The output nodes and every node they link to, directly or not."""
    needed, todo = set(), [str(o) for o in outputs if str(o) in prompt]
    while todo:
        node_id = todo.pop()
        if node_id in needed:
            continue
        needed.add(node_id)
        inputs = prompt.get(node_id, {}).get("inputs", {})
        if isinstance(inputs, dict):
            todo.extend(str(v[0]) for v in inputs.values() if _is_link(v) and str(v[0]) in prompt)
    return needed


def _is_link(value) -> bool:
    """An input that is a link to another node's output: ["node_id", slot]."""
    return isinstance(value, list) and len(value) == 2 and isinstance(value[1], int)
