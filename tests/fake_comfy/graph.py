"""Prompt-graph helpers: links, dependency order, node signatures and the output cache."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Callable, Iterable


def is_link(value: Any) -> bool:
    """ComfyUI's is_link: a [node_id, slot] pair."""
    return (isinstance(value, list) and len(value) == 2
            and isinstance(value[0], str) and isinstance(value[1], int))


def links(node: dict) -> list[str]:
    """The node ids this node reads from, in input-name order."""
    return [v[0] for _, v in sorted(node.get("inputs", {}).items()) if is_link(v)]


def dependency_order(prompt: dict, roots: Iterable[str],
                     descend: Callable[[str], bool] = lambda _: True) -> list[str]:
    """Post-order over the roots' ancestry (iterative: chains can be thousands long)."""
    order: list[str] = []
    state: dict[str, str] = {}
    for root in roots:
        stack = [(root, False)]
        while stack:
            node_id, expanded = stack.pop()
            if expanded:
                state[node_id] = "done"
                order.append(node_id)
            elif state.get(node_id) is None:
                state[node_id] = "open"
                stack.append((node_id, True))
                stack += [(src, False) for src in reversed(links(prompt[node_id])) if descend(src)]
            elif state[node_id] == "open":
                raise ValueError(f"dependency cycle through node {node_id}")
    return order


def signatures(prompt: dict, changed: Callable[[str], Any] | None = None) -> dict[str, str]:
    """Per node, a hash of its class, its IS_CHANGED value (`changed(node_id)`), constants
    and its ancestors' signatures (Merkle style)."""
    result: dict[str, str] = {}
    for node_id in dependency_order(prompt, list(prompt)):
        node = prompt[node_id]
        parts: list[Any] = [node.get("class_type"), changed(node_id) if changed else None]
        for key, value in sorted(node.get("inputs", {}).items()):
            parts.append([key, ["LINK", result[value[0]], value[1]] if is_link(value) else value])
        text = json.dumps(parts, sort_keys=True, default=str)
        result[node_id] = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return result


@dataclass(frozen=True)
class CacheEntry:
    """One node's outputs and its ui (for the `executed` replay)."""

    outputs: tuple
    ui: dict | None


class OutputCache:
    """ComfyUI's default ("classic") cache: keyed by signature, trimmed to the latest prompt."""

    def __init__(self) -> None:
        self._entries: dict[str, CacheEntry] = {}

    def set_prompt(self, prompt: dict,
                   changed: Callable[[str], Any] | None = None) -> dict[str, str]:
        """Adopt a new prompt: drop entries it does not use; return its signatures."""
        sigs = signatures(prompt, changed)
        used = set(sigs.values())
        self._entries = {k: v for k, v in self._entries.items() if k in used}
        return sigs

    def get(self, sig: str) -> CacheEntry | None:
        """The cached entry for a signature."""
        return self._entries.get(sig)

    def store(self, sig: str, outputs: tuple, ui: dict | None) -> None:
        """Remember a node's result."""
        self._entries[sig] = CacheEntry(outputs, ui)

    def clear(self) -> None:
        """POST /free {"free_memory": true}."""
        self._entries.clear()
