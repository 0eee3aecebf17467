"""ComfyUI's PromptQueue: pending heap, running items and the in-memory history."""

from __future__ import annotations

import copy
import heapq
import itertools
from typing import Callable

MAX_HISTORY = 10000
Item = list  # [number, prompt_id, prompt, extra_data, outputs_to_execute]


class PromptQueue:
    """Only touched from the event loop; `on_change` broadcasts `status` like queue_updated()."""

    def __init__(self, on_change: Callable[[], None], history: dict | None = None) -> None:
        self._on_change = on_change
        self._heap: list[tuple] = []  # (number, prompt_id, seq, item) keeps ComfyUI's heap order
        self._seq = itertools.count()
        self._task_ids = itertools.count()
        self.running: dict[int, Item] = {}
        self.history: dict[str, dict] = history if history is not None else {}

    def remaining(self) -> int:
        """queue_remaining: running plus pending."""
        return len(self._heap) + len(self.running)

    def put(self, item: Item) -> None:
        """Enqueue and broadcast status."""
        heapq.heappush(self._heap, (item[0], item[1], next(self._seq), item))
        self._on_change()

    def has_pending(self) -> bool:
        """Whether a prompt waits."""
        return bool(self._heap)

    def take(self) -> tuple[int, Item]:
        """Move the first pending item to running and broadcast status."""
        item = heapq.heappop(self._heap)[3]
        task_id = next(self._task_ids)
        self.running[task_id] = item
        self._on_change()
        return task_id, item

    def task_done(self, task_id: int, entry: dict) -> None:
        """Finish a run: leave running and enter history in one step, then broadcast status."""
        item = self.running.pop(task_id)
        if len(self.history) > MAX_HISTORY:
            self.history.pop(next(iter(self.history)))
        self.history[item[1]] = entry
        self._on_change()

    def snapshot(self) -> tuple[list[Item], list[Item]]:
        """(queue_running, queue_pending) as GET /queue shows them, pending in heap order."""
        return (copy.deepcopy(list(self.running.values())),
                copy.deepcopy([entry[3] for entry in self._heap]))

    def running_ids(self) -> list[str]:
        """prompt_ids currently running."""
        return [item[1] for item in self.running.values()]

    def delete(self, prompt_id: str) -> None:
        """Remove the first pending item with that id (status only when one was removed)."""
        for index, entry in enumerate(self._heap):
            if entry[1] == prompt_id:
                self._heap.pop(index)
                heapq.heapify(self._heap)
                self._on_change()
                return

    def wipe(self) -> None:
        """Drop every pending item (always broadcasts status)."""
        self._heap = []
        self._on_change()

    def get_history(self, max_items: int | None = None, offset: int = -1) -> dict:
        """GET /history: the last max_items entries, oldest first."""
        if offset < 0 and max_items is not None:
            offset = len(self.history) - max_items
        keys = list(self.history)[max(offset, 0):]
        keys = keys[:max_items] if max_items is not None else keys
        return {key: copy.deepcopy(self.history[key]) for key in keys}

    def history_of(self, prompt_id: str) -> dict:
        """GET /history/{id}: {} while queued, running or unknown."""
        entry = self.history.get(prompt_id)
        return {prompt_id: copy.deepcopy(entry)} if entry is not None else {}
