"""One GPU's ComfyUI websocket: a daemon thread that keeps it open and feeds the store."""
from __future__ import annotations

import json
import logging
import random
import socket
import threading
import time
from typing import Callable

import websocket

from comfy.tracking.events import ended_prompt, handle_message
from comfy.comfyui.gpu import Gpu
from comfy.jobs.store import JobStore
from cylindria.storage import StorageUnavailable

logger = logging.getLogger(__name__)

DEAF_AFTER = 3.0  # seconds of websocket silence after an accepted submission that mean "deaf"



class LibraryNoise(logging.Filter):
    """websocket-client's own records, demoted to DEBUG. It logs every failed connect at ERROR
    ("[Errno 111] Connection refused - goodbye") without naming the GPU, at every reconnect for
    as long as a ComfyUI is down; Cylindria says it once per outage, naming the GPU."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


def quiet_library_logs() -> None:
    """Demote websocket-client's records to DEBUG (idempotent)."""
    library = logging.getLogger("websocket")
    if not any(isinstance(f, LibraryNoise) for f in library.filters):
        library.addFilter(LibraryNoise())


quiet_library_logs()

UNRECORDED = 1024  # prompts kept whose end is to be read from ComfyUI's history (see Listener)
# ComfyUI sends json.dumps({"type": ..., "data": ...}), so the type is at the start of the text.
IGNORED_PREFIXES = tuple(f'{{"type": "{kind}"' for kind in ("progress_state", "status", "feature_flags"))


class Listener:
    """Reads `ws://<gpu>/ws?clientId=<id>` for as long as Cylindria runs, reconnecting by itself."""

    def __init__(self, gpu: Gpu, store: JobStore, on_change: Callable[[int], None],
                 ping_interval: float = 10.0, ping_timeout: float = 5.0,
                 backoff_initial: float = 0.5, backoff_max: float = 10.0,
                 on_room: Callable[[], None] | None = None):
        self.gpu = gpu
        self.store = store
        self.on_change = on_change  # asks for a reconciliation of this GPU
        self.on_room = on_room  # told when one of our prompts ends: this GPU has room now
        # Prompts some message of which could not be recorded (the database was unavailable):
        # their end is read from ComfyUI's history, whole, not from the end message (UNRECORDED
        # at most; forgotten at a reconnect, which reconciles every job of the GPU anyway).
        self._unrecorded: dict[str, None] = {}
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.connects = 0
        self._backoff = backoff_initial
        self._stop = threading.Event()
        self._ws: websocket.WebSocketApp | None = None
        self._thread = threading.Thread(target=self.run, name=f"cylindria-ws-gpu{gpu.index}",
                                        daemon=True)

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def signal_stop(self) -> None:
        """Ask the loop to end and close the socket, without waiting."""
        self._stop.set()
        self.gpu.wake.set()
        if self._ws is not None:
            self._ws.keep_running = False
        self._shutdown_socket()

    def _shutdown_socket(self) -> None:
        """End the current connection now (the loop then reconnects, unless stopped)."""
        ws = self._ws
        if ws is None:
            return
        raw = getattr(getattr(ws, "sock", None), "sock", None)
        try:
            # Shutting the TCP socket wakes the reading thread at once; a polite close
            # handshake would wait for the peer (and for websocket-client's select timeout).
            if raw is not None:
                raw.shutdown(socket.SHUT_RDWR)
        except OSError:  # already closed or half-open: the loop ends either way
            logger.debug("closing GPU %d websocket failed", self.gpu.index, exc_info=True)

    def join(self, timeout: float) -> None:
        """Wait for the thread; log it if it would not stop."""
        if self._thread.ident is not None:
            self._thread.join(timeout)
        if self._thread.is_alive():
            logger.warning("websocket thread of GPU %d did not stop in %.1fs", self.gpu.index, timeout)

    def stop(self, timeout: float = 1.0) -> None:
        """Ask the loop to end, close the socket, and wait for the thread."""
        self.signal_stop()
        self.join(timeout)

    def run(self) -> None:
        """Connect, read until the socket drops, wait a backoff, and again until stopped."""
        while not self._stop.is_set():
            try:
                self._ws = self._connect()
                # UTF-8 is checked anyway when the text is decoded; websocket-client's own
                # check runs in pure Python for every frame and costs more than the message.
                self._ws.run_forever(ping_interval=self.ping_interval,
                                     ping_timeout=self.ping_timeout, suppress_origin=True,
                                     skip_utf8_validation=True)
            except Exception:
                logger.exception("websocket loop of GPU %d failed", self.gpu.index)
            self._pause(self._next_backoff())

    def _pause(self, delay: float) -> None:
        """Wait out a backoff, cut short when ComfyUI is seen answering again (or at stop):
        a job sent right after a restart is then followed by the websocket, not by the poll."""
        if self.gpu.wake.wait(delay):
            self._backoff = self.backoff_initial
        self.gpu.wake.clear()

    def _connect(self) -> websocket.WebSocketApp:
        """A new socket with its callbacks."""
        return websocket.WebSocketApp(
            self.gpu.ws_url, on_open=self.handle_open, on_data=self.handle_frame,
            on_close=self.handle_close, on_error=self.handle_error)

    def handle_open(self, ws=None) -> None:
        """Connected: ComfyUI replays nothing it sent while the socket was down, so reconcile."""
        if self._ws is not None and ws is not None and ws is not self._ws:
            return
        self._backoff = self.backoff_initial
        self.connects += 1  # first: whoever sees the flag turn true must find this connect counted
        self.gpu.set_websocket(True)
        self._unrecorded.clear()
        self.on_change(self.gpu.index)

    def handle_frame(self, ws, data, opcode=websocket.ABNF.OPCODE_TEXT, fin=True) -> None:
        """One frame: binary previews are dropped at once; text messages go to the store."""
        self.gpu.last_frame_at = time.monotonic()
        if opcode != websocket.ABNF.OPCODE_TEXT:
            return
        if isinstance(data, bytes):
            try:
                data = data.decode("utf-8")  # in C, and it is the UTF-8 check as well
            except UnicodeDecodeError:
                logger.warning("GPU %d sent a text frame that is not UTF-8", self.gpu.index)
                return
        self.handle_message(data)

    def handle_message(self, text: str) -> None:
        """Decode and apply one text message."""
        if text.startswith(IGNORED_PREFIXES):
            return  # never parsed: progress_state repeats every node's state (O(nodes) per message)
        try:
            message = json.loads(text)
        except ValueError:
            logger.warning("GPU %d sent a websocket message that is not JSON", self.gpu.index)
            return
        if not isinstance(message, dict):
            return
        ended = ended_prompt(message)
        if ended is not None and ended in self._unrecorded:
            # What ComfyUI said of it before is not all in the job (an output, say): ended
            # from this message, it would show less than it made. A reconciliation reads its
            # end from ComfyUI's history instead.
            self.on_change(self.gpu.index)
            return
        ending = self._ending(ended)
        try:
            handle_message(self.store, self.gpu.index, message)
        except StorageUnavailable:  # logged once by the storage; the poller catches up later
            logger.debug("GPU %d: a message was not recorded (database unavailable)",
                         self.gpu.index)
            self._not_recorded(message)
        finally:
            if ending is not None:  # recorded (or left to the poller, the GPU busy till then)
                self.gpu.ending.discard(ending)

    def _not_recorded(self, message: dict) -> None:
        """Remember the prompt of a message the store could not record."""
        data = message.get("data")
        prompt_id = data.get("prompt_id") if isinstance(data, dict) else None
        if isinstance(prompt_id, str):
            self._unrecorded[prompt_id] = None
            while len(self._unrecorded) > UNRECORDED:
                del self._unrecorded[next(iter(self._unrecorded))]

    def _ending(self, prompt_id: str | None) -> str | None:
        """A message ending one of our prompts (`prompt_id`, from ended_prompt): the GPU
        counts as having room (Gpu.ending) and the dispatcher is told before the end is
        recorded, so the next job's claim runs beside that write instead of after it."""
        if prompt_id is None or self.on_room is None \
                or self.store.job_for_prompt(self.gpu.index, prompt_id) is None:
            return None
        self.gpu.ending.add(prompt_id)
        self.on_room()
        return prompt_id

    def check_deaf(self, now: float) -> bool:
        """Reopen a socket ComfyUI has stopped sending to; True if it did.

        ComfyUI drops a clientId from its table when any socket under that id closes, so a
        reconnect that beat the old socket's clean-up stays open (pings still answered) but
        receives nothing. Every enqueue is broadcast as `status`, so silence for DEAF_AFTER
        seconds after an accepted submission gives it away.
        """
        gpu = self.gpu
        if not gpu.websocket_connected or gpu.last_frame_at >= gpu.last_submit_at \
                or now - gpu.last_submit_at < DEAF_AFTER:
            return False
        logger.warning("GPU %d: websocket silent since a submission %.1fs ago; reconnecting",
                       gpu.index, now - gpu.last_submit_at)
        gpu.last_frame_at = now  # once per silence, not at every check
        self._shutdown_socket()
        return True

    def handle_close(self, ws=None, status=None, reason=None) -> None:
        """Disconnected: tracking goes on through the poller until the socket is back."""
        was_connected = self.gpu.websocket_connected
        self.gpu.set_websocket(False)
        if was_connected and not self._stop.is_set():
            self.on_change(self.gpu.index)

    def handle_error(self, ws, error) -> None:
        """A socket error: a refused connect marks the GPU down (warned once per outage, by
        Gpu.saw_failure); others are for the close handler. An exception from one of these
        callbacks lands here too: that is a bug, logged with its traceback."""
        if not isinstance(error, (OSError, websocket.WebSocketException)):
            logger.error("GPU %d: websocket callback failed", self.gpu.index,
                         exc_info=(type(error), error, error.__traceback__))
            return
        logger.debug("GPU %d websocket error: %s", self.gpu.index, error)
        if isinstance(error, ConnectionRefusedError):
            self.gpu.saw_failure(refused=True)

    def _next_backoff(self) -> float:
        """Capped exponential backoff with jitter, so 8 GPUs do not reconnect in lockstep."""
        delay = self._backoff
        self._backoff = min(self._backoff * 2, self.backoff_max)
        return delay * random.uniform(0.5, 1.0)
