"""Data dirs with many finished jobs, written straight into Cylindria's database."""
from __future__ import annotations

import hashlib
import time
import uuid
from pathlib import Path

from comfy.database import Database
from comfy.jobs import Job, JobStatus
from web.app import DB_FILE_NAME


def job_id(n: int) -> str:
    """The id of the n-th bench job."""
    return f"bench-job-{n:07d}"


def finished_job(n: int, now: float) -> Job:
    """A completed job as Cylindria keeps it: one saved image, three nodes done."""
    finished = now - 3600 + n * 0.01
    return Job(job_id=job_id(n), gpu_id=0, prompt_id=str(uuid.uuid4()),
               fingerprint=hashlib.blake2b(str(n).encode(), digest_size=16).hexdigest(),
               status=JobStatus.COMPLETED, number=float(n), submitted_at=finished - 5.0,
               started_at=finished - 4.0, finished_at=finished,
               outputs=({"node_id": "3", "filename": f"cyl_{n:05d}_.png", "subfolder": "",
                         "type": "output"},),
               nodes_done=3, nodes_total=3)


def fill(data_dir: Path, count: int) -> Path:
    """Create `data_dir` holding `count` finished jobs; returns it."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(data_dir / DB_FILE_NAME)
    now = time.time()
    try:
        # One transaction: Database.insert commits each row on its own, 100,000 commits is slow.
        db._conn.execute("BEGIN")
        for n in range(count):
            db.insert(finished_job(n, now))
        db._conn.execute("COMMIT")
    finally:
        db.close()
    return data_dir
