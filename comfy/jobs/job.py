"""The job record and its states."""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class JobStatus(str, Enum):
    """Where a job is in its life; the last four are final.

    HELD is Cylindria's own queue (GpuId=auto, or a job waiting to be sent again): no
    ComfyUI has it. Clients see it as `queued` (with no GPU and no prompt yet).
    """

    HELD = "held"
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
    def public(self) -> str:
        """The status as the API shows it: a held job is `queued` (in Cylindria's queue)."""
        return "queued" if self is JobStatus.HELD else self.value

    @property
    def rank(self) -> int:
        """Order of the life cycle: a job only ever moves to a higher rank."""
        return _RANK[self]


FINISHED = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.LOST})
_RANK = {JobStatus.HELD: 0, JobStatus.SUBMITTING: 1, JobStatus.QUEUED: 2, JobStatus.RUNNING: 3,
         JobStatus.COMPLETED: 4, JobStatus.FAILED: 4, JobStatus.CANCELLED: 4, JobStatus.LOST: 4}


def may_move(current: JobStatus, new: JobStatus) -> bool:
    """Whether a job may go from `current` to `new`.

    States only move forward, so a late or replayed message never undoes a newer fact.
    Two ways back: a job marked lost while its ComfyUI was unreachable gets its true
    outcome if that ComfyUI comes back and its history knows the prompt; and an unfinished
    job goes back to Cylindria's queue (HELD) when its ComfyUI died under it or never got
    it. Only comfy.dispatch.held makes that move, and always for one named submission (its
    prompt_id), so no late message about an earlier attempt can.
    """
    if current == JobStatus.LOST:
        return new.finished and new != JobStatus.LOST
    if new == JobStatus.HELD:
        return not current.finished and current != JobStatus.HELD
    return new.rank > current.rank


@dataclass(slots=True)
class Job:
    """One job: durable fields first, then what the tracker keeps only in memory."""

    job_id: str
    gpu_id: int | None  # None while a GpuId=auto job is held: it may go to any GPU
    prompt_id: str | None  # None while held: every attempt gets its own
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
    auto: bool = False  # sent with GpuId=auto: Cylindria chooses the GPU at each attempt
    priority: int = 0
    attempts: int = 0  # times sent to a ComfyUI (not counted: a POST refused by one that is down)
    held_at: float | None = None  # when it last entered Cylindria's queue; None: never held
    labels: dict | None = None  # the client's string labels (Comfy API v2 `metadata`)
    webhook: str | None = None  # the URL told when the job starts and ends (cylindria/webhooks/)
    submitted_by: str | None = None  # the name of the key (or JWT subject) that submitted it
    node: str | None = None  # the fleet node that holds it (None: written before nodes existed)
    # The row's owner token: raised by each takeover of the job (cylindria/fleet/takeover.py),
    # never by its owner's writes, every one of which names the value it read: a node that
    # lost the job to the fleet (paused, cut off) can change nothing about it any more.
    fence: int = 0
    seq: int = 0
    # Volatile: rebuilt from ComfyUI after a restart, so never written to disk.
    queue_position: int | None = None
    progress_value: float = 0.0
    progress_max: float = 0.0
    progress_node: str | None = None
    done_nodes: frozenset = field(default_factory=frozenset)

    @property
    def owed(self) -> bool:
        """True once the client was told the job exists: it may never vanish again.

        A pinned job is owed from ComfyUI's acceptance; until then a submission ComfyUI
        never got is dropped, so the client's retry goes through. A job held in
        Cylindria's queue (GpuId=auto from the start, or a pinned one sent again) is owed
        from its 201: a submission of it that ComfyUI never got puts it back in the queue.
        """
        return self.auto or self.held_at is not None or self.status != JobStatus.SUBMITTING

    def progress(self) -> dict:
        """Whole-job progress: nodes done out of nodes to run, plus the current node's steps."""
        fraction = self.progress_value / self.progress_max if self.progress_max else 0.0
        total = max(self.nodes_total, self.nodes_done, 1)
        if self.status == JobStatus.COMPLETED:
            percent = 100.0
        elif self.status in (JobStatus.HELD, JobStatus.SUBMITTING, JobStatus.QUEUED):
            percent = 0.0
        else:
            step = min(max(fraction, 0.0), 1.0) if self.progress_node else 0.0
            percent = min(99.0, 100.0 * (min(self.nodes_done, total) + step) / total)
        return {"value": self.progress_value, "max": self.progress_max,
                "node": self.progress_node, "nodes_done": self.nodes_done,
                "nodes_total": self.nodes_total, "percent": round(percent, 1)}
