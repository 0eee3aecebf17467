"""What Cylindria knows of a job's output files beyond their names: their sizes (asked of the
ComfyUI that wrote them, once) and their content types and kinds (from their names)."""
from __future__ import annotations

import mimetypes
import threading
import time
from collections import OrderedDict
from typing import Callable

from comfy.comfyui.errors import ComfyError
from comfy.comfyui.gpu import Gpu

# The kinds of output the Comfy API v2 names, by the start of a content type.
KINDS = (("image/", "image"), ("video/", "video"), ("audio/", "audio"), ("text/", "text"))


def content_type(filename: str) -> str:
    """An output's content type, from its file name."""
    return mimetypes.guess_type(filename)[0] or "application/octet-stream"


def kind(filename: str) -> str:
    """image, video, audio, text, latent or file."""
    if filename.lower().endswith(".latent"):
        return "latent"
    kind_of = content_type(filename)
    return next((name for prefix, name in KINDS if kind_of.startswith(prefix)), "file")


ASK_TIMEOUT = 2.0  # seconds a HEAD /view may take: a request (GET /jobs/{id}) waits for it
QUIET_AFTER_FAILURE = 30.0  # seconds a ComfyUI that failed one is not asked again


class OutputSizes:
    """Output file sizes, each asked the first time someone wants it (of ComfyUI: HEAD /view;
    of the fleet node that holds the job: see `asked`) and remembered (an output file never
    changes), at most `limit` of them. They are asked while a client waits: a ComfyUI not
    known to answer, or a source that just failed to, is not asked (the size reads unknown)
    rather than hold every request of a job with many outputs."""

    def __init__(self, limit: int = 20000, clock=time.monotonic):
        self.limit = limit
        self.clock = clock
        self._lock = threading.Lock()
        self._sizes: OrderedDict[tuple, int] = OrderedDict()
        self._quiet_until: dict[tuple, float] = {}  # by source: ("gpu", index), ("node", name)

    def size(self, gpu: Gpu | None, job_id: str, output: dict) -> int | None:
        """The file's size in bytes, asked of its GPU's ComfyUI; None when it cannot say now."""
        if gpu is None or gpu.reachable is not True:
            with self._lock:
                return self._sizes.get(_key(job_id, output))
        return self.asked(("gpu", gpu.index), job_id, output, lambda: gpu.client.view_size(
            output["filename"], output["subfolder"], output["type"], timeout=ASK_TIMEOUT))

    def asked(self, source: tuple, job_id: str, output: dict, ask: Callable[[], int | None],
              failures: tuple = (ComfyError,)) -> int | None:
        """The file's size in bytes: remembered, else `ask()`ed of `source` (what holds the
        file), unless that failed (raised one of `failures`) in the last QUIET_AFTER_FAILURE
        seconds; None when it cannot say now."""
        key = _key(job_id, output)
        with self._lock:
            known = self._sizes.get(key)
            quiet = self.clock() < self._quiet_until.get(source, float("-inf"))
        if known is not None or quiet:
            return known
        try:
            size = ask()
        except failures:
            with self._lock:
                self._quiet_until[source] = self.clock() + QUIET_AFTER_FAILURE
            return None
        if size is not None:
            with self._lock:
                self._sizes[key] = size
                if len(self._sizes) > self.limit:
                    self._sizes.popitem(last=False)
        return size


def _key(job_id: str, output: dict) -> tuple:
    """What names one output file of one job."""
    return job_id, output["node_id"], output["filename"], output["subfolder"], output["type"]
