"""Credentials a job carries for ComfyUI (a partner node's Comfy API key), kept in memory only.

A job's workflow is stored until it ends so that it can be sent (again) after a restart or
after its ComfyUI died; its credentials are not (comfy.inputs.workflow.Workflow.withheld). They wait
here, under the job's id, until the job ends. The store binds them in the step that creates
the job (JobStore.reserve), so they are always those of the submission that created it, and
there before the dispatcher can see the job. A job that needs them after a restart of
Cylindria, before it was ever sent, cannot have them: the dispatcher fails it and says so.
"""
from __future__ import annotations

import threading

from comfy.jobs.job import Job
from comfy.jobs.store import JobStore


class WithheldSecrets:
    """job id -> the extra_data credentials to send with it."""

    def __init__(self, store: JobStore):
        self._lock = threading.Lock()
        self._secrets: dict[str, dict] = {}
        store.withhold(self._bind)
        store.observe(self._observed)

    def get(self, job_id: str) -> dict | None:
        """The credentials of this job, or None if none are held (never given, or lost)."""
        with self._lock:
            return self._secrets.get(job_id)

    def __len__(self) -> int:
        with self._lock:
            return len(self._secrets)

    def _bind(self, job_id: str, secrets: dict | None) -> None:
        """Store keeper (under the store's lock): a new job's credentials, or None when its
        submission was discarded."""
        with self._lock:
            if secrets:
                self._secrets[job_id] = dict(secrets)
            else:
                self._secrets.pop(job_id, None)

    def _observed(self, old: Job | None, new: Job) -> None:
        """Store observer: a job that ended needs its credentials no more."""
        if new.status.finished and new.job_id in self._secrets:
            with self._lock:
                self._secrets.pop(new.job_id, None)
