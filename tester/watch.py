"""Following one job until it ends: what each poll's Result means for the progress bar."""

from dataclasses import dataclass, field

from tester.client import Result
from tester.format import (ERROR, INFO, Lines, OK, body_lines, error_summary, gpu_text, job_summary,
                           status_line)

TERMINAL = frozenset({"completed", "failed", "cancelled", "lost"})
MAX_CONNECTION_ERRORS = 5  # a restarting server is waited for, a dead one is given up on


@dataclass
class Update:
    """What one poll changes: the bar, the label (status and GPU), the lines, whether to stop."""

    percent: float | None
    status: str
    done: bool
    lines: Lines = field(default_factory=list)


def progress_percent(data: object) -> float | None:
    """``progress.percent`` from a job, clamped to 0..100, or None if absent."""
    if not isinstance(data, dict) or not isinstance(data.get("progress"), dict):
        return None
    value = data["progress"].get("percent")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return max(0.0, min(100.0, float(value)))


class Watch:
    """The state of watching one job; ``step(result)`` is called once per poll."""

    def __init__(self, job_id: str):
        self.job_id = job_id
        self.last_seen: tuple[str, object] | None = None  # (status, gpu_id) of the last answer
        self.connection_errors = 0

    def step(self, result: Result) -> Update:
        """Digest one /jobstatus Result."""
        if result.status is None:
            return self._connection_error(result)
        self.connection_errors = 0
        if not result.ok or not isinstance(result.data, dict):
            why = error_summary(result) or "unexpected answer"
            line = f"watch {self.job_id}: {status_line(result)[0]} ({why}); stopped watching"
            return Update(None, f"HTTP {result.status}", True, [(line, ERROR)])
        return self._job(result)

    def _job(self, result: Result) -> Update:
        """A job answer: report a new status or GPU; stop at a terminal status with the whole job."""
        job = result.data
        status, gpu_id = str(job.get("status", "?")), job.get("gpu_id")
        percent = progress_percent(job)
        if status == "completed":
            percent = 100.0
        label = status if percent is None else f"{status} {percent:.0f}%"
        lines: Lines = []
        done = status in TERMINAL
        if done:
            tag = OK if status == "completed" else ERROR
            lines.append((f"watch {self.job_id}: ended {status}", tag))
            lines.extend(body_lines(result))
        elif (status, gpu_id) != self.last_seen:  # a held auto job stays queued when sent to a GPU
            shown = label if status == "running" else status
            lines.append((f"watch {self.job_id}: {job_summary(job, shown)}", INFO))
        self.last_seen = (status, gpu_id)
        return Update(percent, f"{label} · {gpu_text(gpu_id)}", done, lines)

    def _connection_error(self, result: Result) -> Update:
        """No answer: keep trying a few times, then give up."""
        self.connection_errors += 1
        done = self.connection_errors >= MAX_CONNECTION_ERRORS
        line = f"watch {self.job_id}: {result.error_text}"
        if done:
            line += f"; stopped watching after {self.connection_errors} failed polls"
        return Update(None, "no answer", done, [(line, ERROR)])
