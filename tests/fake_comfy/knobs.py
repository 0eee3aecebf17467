"""Test controls and instrumentation shared by every part of one fake instance."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any, NamedTuple


@dataclass
class Knobs:
    """Behaviour switches a test flips from its own thread (plain attribute reads are atomic)."""

    time_scale: float = 1.0
    hold: bool = False
    ws_silent: bool = False
    http_delay: float = 0.0
    ignore_prompt_id: bool = False
    # When set, a prompt that has run its nodes reports its end only after taking one permit:
    # a test then decides when each prompt ends, whatever the machine's load.
    end_gate: threading.Semaphore | None = None
    costs: dict[str, float] | None = None  # route key -> seconds (costs.py); None: no cost
    # folder -> file names GET /models/{folder} lists, over the defaults (server.model_files)
    models: dict[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class RecordedRequest:
    """One HTTP request as the fake received it."""

    method: str
    path: str
    query: str
    body: bytes
    headers: dict[str, str]
    json: Any = field(default=None)


class CostedSection(NamedTuple):
    """One request's stay in the costed section (handler + recorded cost, under the lock)."""

    key: str  # e.g. "POST /prompt 200"
    cost: float  # the route's cost in seconds: the section lasts this, within a timer tick
    entered: float  # time.perf_counter() after taking the instance's lock
    left: float  # time.perf_counter() before releasing it


class Upload(NamedTuple):
    """One file POST /upload/image accepted into the input folder: where it lies, its bytes."""

    subfolder: str
    name: str
    data: bytes


def _parse_json(body: bytes) -> Any:
    """The body as JSON, or None when it is empty or not JSON."""
    try:
        return json.loads(body) if body else None
    except ValueError:
        return None


class Recorder:
    """Thread-safe log of what the fake saw; cumulative across stop()/restart()."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._prompt_ids: list[str] = []
        self._system_stats_calls = 0
        self._sections: list[CostedSection] = []
        self._model_loads: list[str] = []
        self._uploads: list[Upload] = []

    def add_request(self, method: str, path: str, query: str, body: bytes, headers: dict) -> None:
        """Remember one request (called on arrival, before any http_delay)."""
        entry = RecordedRequest(method, path, query, body, dict(headers), _parse_json(body))
        with self._lock:
            self._requests.append(entry)

    def add_prompt(self, prompt_id: str) -> None:
        """Remember a prompt accepted by POST /prompt."""
        with self._lock:
            self._prompt_ids.append(prompt_id)

    def count_system_stats(self) -> None:
        """Count one GET /system_stats answered."""
        with self._lock:
            self._system_stats_calls += 1

    def add_section(self, section: CostedSection) -> None:
        """Remember one costed section, so tests can check that sections never overlap."""
        with self._lock:
            self._sections.append(section)

    def add_model_load(self, ckpt_name: str) -> None:
        """Remember one checkpoint load (a switch of the instance's model)."""
        with self._lock:
            self._model_loads.append(ckpt_name)

    def add_upload(self, upload: Upload) -> None:
        """Remember one upload into the input folder."""
        with self._lock:
            self._uploads.append(upload)

    def uploads(self) -> list[Upload]:
        """A copy of the uploads so far, in order."""
        with self._lock:
            return list(self._uploads)

    def model_loads(self) -> list[str]:
        """A copy of the checkpoints loaded so far, in order."""
        with self._lock:
            return list(self._model_loads)

    def sections(self) -> list[CostedSection]:
        """A copy of the costed sections so far, in the order they were left."""
        with self._lock:
            return list(self._sections)

    def requests(self) -> list[RecordedRequest]:
        """A copy of every request so far."""
        with self._lock:
            return list(self._requests)

    def prompt_ids(self) -> list[str]:
        """A copy of the accepted prompt ids, in order."""
        with self._lock:
            return list(self._prompt_ids)

    @property
    def system_stats_calls(self) -> int:
        """How many GET /system_stats were answered."""
        with self._lock:
            return self._system_stats_calls
