"""Following one job until it ends: what each event or poll means for the progress bar.

A watch follows the job's event stream (/jobevents); when the server refuses the stream (429
too_many_streams when its slots are taken) or the stream drops before the job ends, it polls
/jobstatus every second instead.
"""

import json
from dataclasses import dataclass, field

from tester.client import Result
from tester.events import Ended, Event, Item, Refused
from tester.format import (BODY, ERROR, INFO, Lines, OK, error_summary, gpu_text, job_summary,
                           pretty_json, status_line)

TERMINAL = frozenset({"completed", "failed", "cancelled", "lost"})
MAX_CONNECTION_ERRORS = 5  # a restarting server is waited for, a dead one is given up on
POLLING = "polling every second instead"


@dataclass
class Update:
    """What one event or poll changes: the bar, the label (status and GPU), the lines, whether
    to stop, and whether to poll from now on (the stream is over before the job)."""

    percent: float | None
    status: str
    done: bool
    lines: Lines = field(default_factory=list)
    poll: bool = False


def progress_percent(data: object) -> float | None:
    """``progress.percent`` from a job, clamped to 0..100, or None if absent."""
    if not isinstance(data, dict) or not isinstance(data.get("progress"), dict):
        return None
    value = data["progress"].get("percent")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return max(0.0, min(100.0, float(value)))


def refused_reason(result: Result) -> str:
    """Why the event stream did not open, e.g. ``HTTP 429 (too_many_streams: ...)``."""
    if result.status is None:
        return f"no event stream ({result.error_text})"
    why = error_summary(result) or ("not an event stream" if result.ok else result.reason)
    return f"no event stream: {status_line(result)[0]} ({why})"


def ended_reason(ended: Ended) -> str:
    """Why the event stream is over though the job is not."""
    if ended.error_text:
        return f"the event stream broke ({ended.error_text})"
    return "the event stream ended before the job did"


class Watch:
    """The state of watching one job: ``stream_step(item)`` per stream item, ``step(result)``
    per poll."""

    def __init__(self, job_id: str):
        self.job_id = job_id
        self.last_seen: tuple[str, object] | None = None  # (status, gpu_id) of the last answer
        self.job: dict | None = None  # the job as last seen, which progress events update
        self.label = "…"
        self.finished = False
        self.connection_errors = 0

    def stream_step(self, item: Item) -> Update:
        """Digest one item of the event stream: an event, or why there is no stream (any more)."""
        if isinstance(item, Event):
            return self._event(item)
        if self.finished or (isinstance(item, Ended) and item.stopped):
            return Update(None, self.label, True)
        reason = refused_reason(item.result) if isinstance(item, Refused) else ended_reason(item)
        line = f"watch {self.job_id}: {reason}; {POLLING}"
        return Update(None, self.label, False, [(line, INFO)], poll=True)

    def _event(self, event: Event) -> Update:
        """A status event holds the job as /jobstatus shows it; a progress event its progress."""
        if event.name not in ("status", "progress"):
            return Update(None, self.label, False)  # a kind of event this tester does not know
        try:
            data = json.loads(event.data)
        except ValueError:
            data = None
        if isinstance(data, dict) and event.name == "status":
            return self._job(data)
        if isinstance(data, dict) and self.job is not None:
            return self._job({**self.job, "progress": data})
        line = f"watch {self.job_id}: unexpected {event.name} event: {event.data[:200]}"
        return Update(None, self.label, False, [(line, ERROR)])

    def step(self, result: Result) -> Update:
        """Digest one /jobstatus Result."""
        if result.status is None:
            return self._connection_error(result)
        self.connection_errors = 0
        if not result.ok or not isinstance(result.data, dict):
            why = error_summary(result) or "unexpected answer"
            line = f"watch {self.job_id}: {status_line(result)[0]} ({why}); stopped watching"
            return Update(None, f"HTTP {result.status}", True, [(line, ERROR)])
        return self._job(result.data)

    def _job(self, job: dict) -> Update:
        """A job: report a new status or GPU; stop at a terminal status with the whole job."""
        status, gpu_id = str(job.get("status", "?")), job.get("gpu_id")
        percent = progress_percent(job)
        if status == "completed":
            percent = 100.0
        label = status if percent is None else f"{status} {percent:.0f}%"
        lines: Lines = []
        self.finished = status in TERMINAL
        if self.finished:
            tag = OK if status == "completed" else ERROR
            lines.append((f"watch {self.job_id}: ended {status}", tag))
            lines.append((pretty_json(job), BODY))
        elif (status, gpu_id) != self.last_seen:  # a held auto job stays queued when sent to a GPU
            shown = label if status == "running" else status
            lines.append((f"watch {self.job_id}: {job_summary(job, shown)}", INFO))
        self.last_seen, self.job = (status, gpu_id), job
        self.label = f"{label} · {gpu_text(gpu_id)}"
        return Update(percent, self.label, self.finished, lines)

    def _connection_error(self, result: Result) -> Update:
        """No answer: keep trying a few times, then give up."""
        self.connection_errors += 1
        done = self.connection_errors >= MAX_CONNECTION_ERRORS
        line = f"watch {self.job_id}: {result.error_text}"
        if done:
            line += f"; stopped watching after {self.connection_errors} failed polls"
        return Update(None, "no answer", done, [(line, ERROR)])
