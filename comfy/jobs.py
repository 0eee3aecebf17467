"""The job record and its states."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import Enum


class JobStatus(str, Enum):
    """Where a job is in its life; the last four are final."""

    SUBMITTING = "submitting"
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    LOST = "lost"

    @property
    def finished(self) -> bool:
        """True once the job can never run again."""
        return self in FINISHED

    @property
    def rank(self) -> int:
        """Order of the life cycle: a job only ever moves to a higher rank."""
        return _RANK[self]


FINISHED = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.LOST})
UNFINISHED = frozenset(JobStatus) - FINISHED
_RANK = {JobStatus.SUBMITTING: 0, JobStatus.QUEUED: 1, JobStatus.RUNNING: 2,
         JobStatus.COMPLETED: 3, JobStatus.FAILED: 3, JobStatus.CANCELLED: 3, JobStatus.LOST: 3}


def may_move(current: JobStatus, new: JobStatus) -> bool:
    """Whether a job may go from `current` to `new`.

    States only move forward, so a late or replayed message never undoes a newer fact.
    The one way back: a job marked lost while its ComfyUI was unreachable gets its true
    outcome if that ComfyUI comes back and its history knows the prompt.
    """
    if current == JobStatus.LOST:
        return new.finished and new != JobStatus.LOST
    return new.rank > current.rank


@dataclass(slots=True)
class Job:
    """One job: durable fields first, then what the tracker keeps only in memory."""

    job_id: str
    gpu_id: int
    prompt_id: str
    fingerprint: str
    status: JobStatus = JobStatus.SUBMITTING
    number: float | None = None
    submitted_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    error: dict | None = None
    outputs: tuple = ()
    warnings: dict | None = None
    cancel_requested: bool = False
    nodes_done: int = 0
    nodes_total: int = 0
    seq: int = 0
    # Volatile: rebuilt from ComfyUI after a restart, so never written to disk.
    queue_position: int | None = None
    progress_value: float = 0.0
    progress_max: float = 0.0
    progress_node: str | None = None
    done_nodes: frozenset = field(default_factory=frozenset)

    def copy(self) -> "Job":
        """A shallow copy: callers get their own record, never the store's."""
        return dataclasses.replace(self)

    def progress(self) -> dict:
        """Whole-job progress: nodes done out of nodes to run, plus the current node's steps."""
        fraction = self.progress_value / self.progress_max if self.progress_max else 0.0
        total = max(self.nodes_total, self.nodes_done, 1)
        if self.status == JobStatus.COMPLETED:
            percent = 100.0
        elif self.status in (JobStatus.SUBMITTING, JobStatus.QUEUED):
            percent = 0.0
        else:
            step = min(max(fraction, 0.0), 1.0) if self.progress_node else 0.0
            percent = min(99.0, 100.0 * (min(self.nodes_done, total) + step) / total)
        return {"value": self.progress_value, "max": self.progress_max,
                "node": self.progress_node, "nodes_done": self.nodes_done,
                "nodes_total": self.nodes_total, "percent": round(percent, 1)}
