"""GPUs this Cylindria no longer has (restarted with a smaller --numberOfGpus): their jobs
end at start, and every surface finds no GPU for them instead of an index error."""
from __future__ import annotations

import logging

from comfy.tracking.events import finish
from comfy.comfyui.gpu import Gpu
from comfy.jobs.job import Job, JobStatus
from comfy.jobs.store import JobStore

logger = logging.getLogger(__name__)


def gpu_at(gpus: list[Gpu], index: int | None) -> Gpu | None:
    """The GPU of this index; None for a job never sent, or sent to a GPU that is gone."""
    return gpus[index] if index is not None and 0 <= index < len(gpus) else None


def lose_jobs_of_gone_gpus(store: JobStore, count: int) -> int:
    """End `lost` every unfinished job of a GPU index of `count` or more (its ComfyUI is no
    longer one Cylindria may ask, so nothing else would ever settle it); how many."""
    lost = 0
    for job in store.jobs(newest_first=False):
        if job.status.finished or job.gpu_id is None or job.gpu_id < count:
            continue
        ended = store.change(job.job_id, finish(JobStatus.LOST, _gone_error(job, count)))
        lost += ended is not None and ended.status == JobStatus.LOST
    if lost:
        logger.warning("%d unfinished job(s) of GPUs beyond --numberOfGpus %d ended lost",
                       lost, count)
    return lost


def _gone_error(job: Job, count: int) -> dict:
    """The error object of a job whose GPU is gone."""
    return {"type": "lost", "node_id": None, "node_type": None,
            "message": f"GPU {job.gpu_id} is no longer configured (Cylindria was restarted "
                       f"with --numberOfGpus {count}): its ComfyUI is not asked any more"}
