"""Data dirs with many finished jobs, written straight into Cylindria's database."""
from __future__ import annotations

import hashlib
import time
import uuid
from pathlib import Path

from comfy.jobs.job import Job, JobStatus
from cylindria.storage import DB_FILE_NAME
from cylindria.storage.records import values
from cylindria.storage.sqlite import SqliteStorage


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
               nodes_done=3, nodes_total=3, attempts=1)


def fill(data_dir: Path, count: int) -> Path:
    """Create `data_dir` holding `count` finished jobs; returns it."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    db = SqliteStorage(data_dir / DB_FILE_NAME)
    now = time.time()
    try:
        # One transaction: JobRows.insert commits each row on its own, 100,000 commits is slow.
        db.jobs.import_rows(values(finished_job(n, now)) for n in range(count))
    finally:
        db.close()
    return data_dir


def bulk_fill(data_dir: Path, count: int, ended_at: float, first: int = 0) -> Path:
    """Add `count` finished jobs like `finished_job`'s (ids from `first` on) that ended from
    `ended_at` on, 10 ms apart, to `data_dir`'s database; returns the dir.

    One executemany in one transaction, with the rows built directly (the first is checked
    against what JobRows.insert would write for `finished_job`): a million rows in 11-14 s
    here, where building Job objects alone takes about 26 s.
    """
    data_dir = Path(data_dir)
    db = SqliteStorage(data_dir / DB_FILE_NAME)  # creates the dir (0700) and the schema
    now = ended_at - first * 0.01 + 3600  # finished_job(n, now) ends at now - 3600 + n * 0.01
    rows = _finished_rows(first, count, now)
    if count:
        sample = finished_job(first, now)
        expected = tuple(values(sample))
        row = next(_finished_rows(first, 1, now))
        if row[:2] + row[3:] != expected[:2] + expected[3:]:  # the prompt id is random
            raise RuntimeError(f"bulk_fill's rows drifted from JobRows.insert's: {row} {expected}")
    try:
        db.jobs.import_rows(rows)
    finally:
        db.close()
    return data_dir


def _finished_rows(first: int, count: int, now: float):
    """finished_job(n, now) for n in first..first+count-1 as rows in records.COLUMNS' order
    (each with a new random prompt id, as finished_job gives it)."""
    completed = JobStatus.COMPLETED.value
    for n in range(first, first + count):
        finished = now - 3600 + n * 0.01
        yield (job_id(n), 0, str(uuid.uuid4()), hashlib.blake2b(str(n).encode(), digest_size=16)
               .hexdigest(), completed, float(n), finished - 5.0, finished - 4.0, finished, None,
               f'[{{"node_id": "3", "filename": "cyl_{n:05d}_.png", "subfolder": "", '
               f'"type": "output"}}]', None, 0, 3, 3, 0, 0, 1, None, None, None, None, None, 0)
