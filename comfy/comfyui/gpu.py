"""One GPU's ComfyUI: its addresses, its client, and what Cylindria last learnt about it."""
from __future__ import annotations

import logging
import threading
import time
from urllib.parse import urlsplit, urlunsplit

from comfy.comfyui.client import ComfyClient
from comfy.comfyui.errors import ComfyError
from comfy.comfyui.queue import QueueSnapshot

logger = logging.getLogger(__name__)

STATS_MAX_AGE = 1.0  # seconds: /system_stats is expensive for ComfyUI


def gpu_base_url(base_url: str, index: int) -> str:
    """GPU n's ComfyUI: the base URL with its port plus n."""
    parts = urlsplit(base_url)
    port = (parts.port or (443 if parts.scheme == "https" else 80)) + index
    host = parts.hostname or "127.0.0.1"
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


class Gpu:
    """A GPU slot. Its live facts are guarded by its own small lock."""

    def __init__(self, index: int, base_url: str, client_id: str, client: ComfyClient | None = None):
        self.index = index
        self.base_url = base_url
        self.client_id = client_id
        self.client = client or ComfyClient(base_url, gpu_id=index)
        scheme = "wss" if base_url.startswith("https") else "ws"
        self.ws_url = f"{scheme}{base_url[base_url.index(':'):]}/ws?clientId={client_id}"
        self._lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self._stats: dict | None = None
        self._stats_at = float("-inf")
        self.reachable: bool | None = None  # None until first asked
        self.unreachable_since: float | None = None  # epoch seconds: refused since then
        self.created_at = time.monotonic()  # when Cylindria began with this GPU
        self.websocket_connected = False
        self.running = 0
        self.pending = 0
        self.foreign_ahead: dict[str, float] = {}  # queue items not Cylindria's: id -> number
        self.lost_in_outage: set[str] = set()  # job ids marked lost while refusing connections
        # Cylindria's prompts this ComfyUI said it finished with, while their end is being
        # recorded (Listener): its queue has room for the next one already.
        self.ending: set[str] = set()
        # Set when ComfyUI answers while the websocket is down: the listener then reconnects at
        # once instead of at the end of a backoff that grew while ComfyUI was away.
        self.wake = threading.Event()
        # Monotonic times of the last websocket frame and of sending the last accepted
        # submission: ComfyUI broadcasts `status` on every enqueue, so no frame since a
        # submission was sent means ComfyUI no longer sends to this socket (Listener.check_deaf).
        self.last_frame_at = float("-inf")
        self.last_submit_at = float("-inf")
        # Cylindria's queue: the node classes this ComfyUI has (read from /object_info when its
        # websocket connects), the model files of the last job sent to it (a job that uses
        # the same ones goes here first), and until when it is not sent held jobs after an
        # unusable answer.
        self.catalogue = None
        self.catalogue_wanted = True
        # Set once a first read of the catalogue was tried (read, or failed).
        self.catalogue_tried = threading.Event()
        self.last_models: frozenset = frozenset()
        self.resting_until = float("-inf")
        self.placed: set[str] = set()  # asset files this ComfyUI has in input/cylindria
        self._rest = 0.0
        self._told: dict[str, object] = {}  # topic -> what the log last said of it

    def is_news(self, topic: str, value) -> bool:
        """True if `value` differs from what the log last said of `topic` for this GPU (and
        remember it). The node classes and model files are read again at every websocket
        connection, the first one just after the start-up read: the same lists are said
        once, a change each time it happens."""
        with self._lock:
            news = topic not in self._told or self._told[topic] != value
            self._told[topic] = value
        return news

    def system_stats(self) -> dict | None:
        """ComfyUI's /system_stats, asked at most once a second however many callers ask."""
        with self._stats_lock:
            if time.monotonic() - self._stats_at < STATS_MAX_AGE:
                return self._stats
            self._stats_at = time.monotonic()
            try:
                self._stats = self.client.system_stats(timeout=2.0)
            except ComfyError as exc:
                logger.debug("GPU %d /system_stats failed: %s", self.index, exc)
                self._stats = None
            return self._stats

    def saw_queue(self, snapshot: QueueSnapshot, ours: set[str]) -> bool:
        """Record a /queue answer; True if the GPU had been unreachable until now."""
        with self._lock:
            came_back = self.reachable is False
            self.reachable = True
            self.unreachable_since = None
            self.running, self.pending = len(snapshot.running), len(snapshot.pending)
            self.foreign_ahead = {item.prompt_id: item.number
                                  for item in snapshot.running + snapshot.pending
                                  if item.prompt_id not in ours}
        if came_back:
            logger.info("GPU %d: ComfyUI at %s is reachable again", self.index, self.base_url)
        self.saw_answer()
        return came_back

    def saw_answer(self) -> None:
        """ComfyUI answered a call: a websocket that is down reconnects now."""
        if not self.websocket_connected:
            self.wake.set()

    def saw_failure(self, refused: bool) -> None:
        """Record a failed call; a refused connection means ComfyUI's process is gone."""
        with self._lock:
            was = self.reachable
            self.reachable = False if refused else self.reachable
            if refused and was is not False:
                self.unreachable_since = time.time()
        if refused and was is not False:
            logger.warning("GPU %d: ComfyUI at %s refuses connections", self.index, self.base_url)

    def set_catalogue(self, catalogue) -> None:
        """Record the node classes this ComfyUI has now."""
        with self._lock:
            self.catalogue = catalogue
            self.catalogue_wanted = False
        self.catalogue_tried.set()

    def rest(self) -> None:
        """ComfyUI answered a held job's POST with something unusable: send it none for a
        while (doubling, up to 30 s), so a broken ComfyUI is not hammered in a loop."""
        with self._lock:
            self._rest = min(max(0.5, self._rest * 2), 30.0)
            self.resting_until = time.monotonic() + self._rest

    def rested(self) -> None:
        """ComfyUI accepted a prompt: the rest is over."""
        self._rest = 0.0

    def set_websocket(self, connected: bool) -> None:
        """Record the websocket's state; a new connection means ComfyUI may have restarted,
        perhaps with other nodes, so its catalogue is read again."""
        with self._lock:
            changed = self.websocket_connected != connected
            self.websocket_connected = connected
            if connected:
                self.catalogue_wanted = True
            elif changed:
                # The socket dropped: ComfyUI may be restarting, with an emptied input folder
                # (a restart the socket missed shows as a refusal naming the file: comfy.dispatch.submit).
                self.placed = set()
        if changed:
            logger.info("GPU %d: websocket %s", self.index,
                        "connected" if connected else "disconnected")

    def foreign(self) -> int:
        """Prompts of other clients in this ComfyUI at the last /queue."""
        return len(self.foreign_ahead)

    def foreign_before(self, number: float | None) -> int:
        """How many prompts not Cylindria's run before a prompt with this number."""
        with self._lock:
            if number is None:
                return len(self.foreign_ahead)
            return sum(1 for n in self.foreign_ahead.values() if n < number)


def build_gpus(base_url: str, count: int, instance_id: str) -> list[Gpu]:
    """GPU 0..count-1 on consecutive ports, each with its own stable websocket client id."""
    return [Gpu(n, gpu_base_url(base_url, n), f"cylindria-{instance_id}-gpu{n}")
            for n in range(count)]
