"""The dispatcher: Cylindria's own queue, sent to the GPUs as they become ready.

A GpuId=auto job is held (durably) until some GPU is ready for it: its ComfyUI reachable,
holding fewer than `depth` prompts (anyone's), and knowing every node class the job uses.
So no GPU idles while work waits, and a long job never holds short ones back on one GPU
while another is free. A job whose ComfyUI died under it comes back here (comfy.dispatch.held) and
is sent again. One thread runs `dispatch_once` whenever something may have made room (a job
ended or came back, a GPU was checked, a job was submitted or cancelled); the POSTs
themselves run on one sender thread per GPU, so a slow ComfyUI holds up no other GPU and
each ComfyUI gets its prompts in the order they were chosen for it.
"""
from __future__ import annotations

import bisect
import logging
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from comfy.inputs.assets import AssetStore
from comfy.comfyui.catalogue import Needs, needs_of
from comfy.comfyui.errors import ComfyError, ComfyRejected, ComfyTimeout, ComfyUnreachable
from comfy.tracking.events import finish
from comfy.comfyui.gpu import Gpu
from comfy.dispatch.held import MAX_ATTEMPTS, claim, expire
from comfy.jobs.job import Job, JobStatus
from comfy.inputs.placing import AssetNotFound
from comfy.jobs.store import JobStore
from comfy.dispatch.submit import post
from comfy.jobs.withheld import WithheldSecrets
from comfy.inputs.workflow import WorkflowError, parse_stored
from cylindria.storage import StorageUnavailable

logger = logging.getLogger(__name__)

EXPIRY_CHECK = 1.0  # seconds between looks for pinned jobs that waited too long


@dataclass(frozen=True)
class Held:
    """A held job as the dispatcher orders and places it."""

    key: tuple  # (-priority, 0 if sent before else 1, seq, job_id): the queue's order
    job_id: str
    priority: int
    auto: bool
    gpu_id: int | None  # a pinned job's own GPU
    held_at: float | None
    needs: Needs


class Dispatcher:
    """Owns the queue's order and one thread that sends held jobs to ready GPUs."""

    def __init__(self, gpus: list[Gpu], store: JobStore, depth: int = 2,
                 requeue_wait: float = 300.0, tick: float = 5.0,
                 ready: threading.Event | None = None, affinity: bool = True,
                 assets: AssetStore | None = None, secrets: WithheldSecrets | None = None,
                 max_attempts: int = MAX_ATTEMPTS):
        self.gpus = gpus
        self.store = store
        self.depth = depth
        self.requeue_wait = requeue_wait
        self.tick = tick  # the floor: a pass at least this often, whatever woke it or not
        self.ready = ready  # set once start-up reconciliation is over
        self.affinity = affinity
        self.assets = assets  # where a job's asset references are read from, to place them
        self.secrets = secrets  # the credentials jobs carry for ComfyUI (never stored)
        self.max_attempts = max_attempts  # sends of a job whose every send fails, then failed
        self.affinity_counts: Counter = Counter()  # "hit" / "miss": jobs with model files sent
        self._lock = threading.Lock()
        self._order: list[tuple] = []  # the held jobs' keys, sorted: the queue
        self._held: dict[str, Held] = {}
        # What unfinished held jobs need, by job id, with the fingerprint of the workflow it
        # was read from (a submission that lost a race for its id must not lend its needs).
        self._needs: dict[str, tuple[str, Needs]] = {}
        # Held jobs whose workflow could not be read (the database was unavailable): taken
        # into the queue at a later pass, never left out of it.
        self._unsynced: set[str] = set()
        self._next_expiry = 0.0
        self._wake = threading.Event()
        self._stop = threading.Event()
        # One sender per GPU: two POSTs to one ComfyUI on two threads could arrive in either
        # order, and its queue would then run them out of the order (priority, model
        # affinity) they were chosen in.
        self._senders = [ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"cylindria-send{gpu.index}")
                         for gpu in gpus]
        self._thread = threading.Thread(target=self.run, name="cylindria-dispatcher", daemon=True)
        store.observe(self._observed)
        store.on_shared(self._shared_moved)

    # -- the thread -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the dispatcher thread (it first takes in the jobs held before a restart)."""
        self._thread.start()

    def stop(self, timeout: float = 1.0) -> None:
        """Stop sending. A POST under way is left to finish by its own timeout; if the
        process ends first, the job is settled at the next start like any crash."""
        self._stop.set()
        self._wake.set()
        if self._thread.ident is not None:
            self._thread.join(timeout)
        if self._thread.is_alive():
            logger.warning("dispatcher thread did not stop in %.1fs", timeout)
        for sender in self._senders:
            sender.shutdown(wait=False, cancel_futures=True)

    def wake(self) -> None:
        """Something may have made room, or work: run a pass now."""
        self._wake.set()

    def run(self) -> None:
        """Take in the held jobs, then a pass at every wake-up and at least every tick."""
        for job in self.store.jobs(newest_first=False):
            if job.status == JobStatus.HELD:
                self._sync(job.job_id)
        while not self._stop.is_set():
            if self.ready is not None and not self.ready.is_set():
                self.ready.wait(0.1)
                continue
            try:
                self.dispatch_once()
            except StorageUnavailable:  # logged once by the storage; the next pass tries again
                logger.debug("dispatch pass: database unavailable")
            except Exception:
                logger.exception("dispatch pass failed")
            self._wake.wait(self.tick)
            self._wake.clear()

    # -- the queue --------------------------------------------------------------------------

    def position(self, job_id: str) -> int | None:
        """How many held jobs will be sent before this one; None if it is not held."""
        with self._lock:
            held = self._held.get(job_id)
            return None if held is None else bisect.bisect_left(self._order, held.key)

    def remember(self, job_id: str, fingerprint: str, needs: Needs) -> None:
        """What a job about to be held needs (known at submission: saves reading it back)."""
        with self._lock:
            self._needs[job_id] = (fingerprint, needs)

    def forget(self, job_id: str, fingerprint: str) -> None:
        """A submission that was refused: what it remembered goes (unless another took over)."""
        with self._lock:
            if self._needs.get(job_id, ("",))[0] == fingerprint:
                del self._needs[job_id]

    def _observed(self, old: Job | None, new: Job) -> None:
        """Store observer: keep the queue in step with the jobs, and wake on room or work."""
        was_held = old is not None and old.status == JobStatus.HELD
        if new.status == JobStatus.HELD or was_held:
            self._sync(new.job_id)
        if new.status.finished:
            with self._lock:
                self._needs.pop(new.job_id, None)
        if new.status.finished or new.status == JobStatus.HELD or was_held:
            self._wake.set()

    def _shared_moved(self, job_id: str) -> None:
        """A job of the fleet's shared queue came into this node's store (work: a pass now) or
        left it (another node took it)."""
        self._sync(job_id)
        if self.store.get(job_id) is None:
            with self._lock:
                self._needs.pop(job_id, None)
        self._wake.set()

    def _sync(self, job_id: str) -> None:
        """Make the queue agree with the job as it is now. Observers run outside the store's
        lock and may run in any order, so the job is read again under this lock: whichever
        call comes last sees the last state."""
        job = self.store.get(job_id)
        try:
            needs = self._needs_of(job) if job is not None and job.status == JobStatus.HELD \
                else None
        except StorageUnavailable:
            with self._lock:
                self._unsynced.add(job_id)
            return
        with self._lock:
            self._unsynced.discard(job_id)
            job = self.store.get(job_id)
            old = self._held.pop(job_id, None)
            if old is not None:
                del self._order[bisect.bisect_left(self._order, old.key)]
            if job is None or job.status != JobStatus.HELD or needs is None:
                return
            held = Held((-job.priority, 0 if job.attempts else 1, job.seq, job_id), job_id,
                        job.priority, job.auto, job.gpu_id, job.held_at, needs)
            self._held[job_id] = held
            bisect.insort(self._order, held.key)

    def _needs_of(self, job: Job) -> Needs | None:
        """A held job's needs: remembered, or read from its stored workflow (after a restart
        or a requeue). A job whose workflow cannot be read can never be sent: it fails."""
        with self._lock:
            known = self._needs.get(job.job_id)
        if known is not None and known[0] == job.fingerprint:
            return known[1]
        workflow = self._workflow(job)
        if workflow is None:
            return None
        needs = needs_of(workflow.prompt)
        with self._lock:
            self._needs[job.job_id] = (job.fingerprint, needs)
        return needs

    def _workflow(self, job: Job):
        """The job's stored workflow, parsed; None (and the job failed) if it is unusable."""
        body = self.store.workflow(job.job_id)
        try:
            if body is not None:
                return self._with_secrets(job, parse_stored(body))
            why = "its workflow is missing from the database"
        except WorkflowError as exc:
            why = f"its stored workflow no longer parses: {exc.message}"
        except SecretsLost as exc:
            logger.error("job %s cannot be sent: %s", job.job_id, exc)
            self._fail(job, "partner_key_lost", str(exc))
            return None
        logger.error("job %s cannot be sent: %s", job.job_id, why)
        self._fail(job, "internal", f"Cylindria cannot send the job: {why}")
        return None

    def _with_secrets(self, job: Job, workflow):
        """The workflow with the credentials it was submitted with (held in memory only)."""
        if not workflow.withheld_names:
            return workflow
        secrets = self.secrets.get(job.job_id) if self.secrets is not None else None
        if secrets is None:
            raise SecretsLost(
                f"the job's {', '.join(workflow.withheld_names)} (extra_data) is kept in memory "
                "only, never on disk, and Cylindria restarted before it could send the job; "
                "submit it again")
        return workflow.with_secrets(secrets)

    def _fail(self, job: Job, kind: str, message: str) -> None:
        """Fail a job that cannot be sent."""
        self.store.change(job.job_id, finish(JobStatus.FAILED, {
            "type": kind, "message": message, "node_id": None, "node_type": None}),
            prompt_id=job.prompt_id)

    # -- one pass ---------------------------------------------------------------------------

    def dispatch_once(self) -> int:
        """Send every held job that can go now; returns how many were sent."""
        with self._lock:
            unsynced = list(self._unsynced)
        for job_id in unsynced:
            self._sync(job_id)
        self._expire_pinned()
        with self._lock:
            queue = [self._held[key[-1]] for key in self._order]
        if not queue:
            return 0
        load = self._load()
        # A pinned job goes to its own GPU as soon as that ComfyUI is reachable, whatever its
        # depth: fresh pinned submissions skip this queue, so under steady pinned load a
        # requeued one held to the depth would never go.
        plan = [(held, held.gpu_id) for held in queue if not held.auto and held.gpu_id in load]
        for _, index in plan:
            load[index] += 1
        free = {i: self.depth - n for i, n in load.items() if n < self.depth}
        deferred = []
        for held in (held for held in queue if held.auto):
            if not free:
                break
            if deferred and held.priority < deferred[0].priority:
                break  # a lower priority never overtakes a job waiting for its models' GPU
            candidates = [i for i in free if self._can_run(held, i)]
            if not candidates:
                self._fail_if_nowhere(held)
                continue  # nothing ready can run it: others behind it may use those GPUs
            choice = self._choose(held, candidates, free, load)
            if choice is None:
                deferred.append(held)
                continue
            plan.append((held, choice))
            _take(free, load, choice)
        for held in deferred:  # waited for its models' GPU; a GPU still free takes it anyway
            candidates = [i for i in free if self._can_run(held, i)]
            if candidates:
                choice = min(candidates, key=lambda i: (load[i], i))
                plan.append((held, choice))
                _take(free, load, choice)
        return sum(self._send(held, gpu_index) for held, gpu_index in plan)

    def _load(self) -> dict[int, int]:
        """Prompts in each ready-to-take ComfyUI: Cylindria's (counted live) plus others'."""
        ours = self.store.unfinished_per_gpu()
        now = time.monotonic()
        return {gpu.index: ours.get(gpu.index, 0) - ending(self.store, gpu) + gpu.foreign()
                for gpu in self.gpus if gpu.reachable is True and now >= gpu.resting_until}

    def _can_run(self, held: Held, index: int) -> bool:
        """Whether a GpuId=auto job may go to this GPU: it has the job's node classes (a
        pinned job goes to its own GPU only, planned apart in dispatch_once)."""
        catalogue = self.gpus[index].catalogue
        return catalogue is not None and catalogue.knows(held.needs.classes)

    def _fail_if_nowhere(self, held: Held) -> None:
        """A job held while no GPU could say what it has installed may use a node class
        that, as it turns out, no GPU has: once every GPU's catalogue is known, it fails
        (as it would have been refused at submission) instead of waiting for ever."""
        if not held.auto or any(gpu.catalogue is None for gpu in self.gpus):
            return
        if self.store.in_shared_queue(held.job_id):
            return  # the fleet's: another node's GPUs may have it (checked at submission)
        if any(self._can_run(held, gpu.index) for gpu in self.gpus):
            return
        missing = sorted(held.needs.classes - set().union(
            *(gpu.catalogue.nodes for gpu in self.gpus)))
        what = f"node class {', '.join(missing)}" if missing else "every node class it uses"
        logger.warning("job %s: no GPU has %s installed; failed", held.job_id, what)
        self.store.change(held.job_id, _fail_held(
            {"type": "invalid_workflow", "node_id": None, "node_type": missing[0] if missing else None,
             "message": f"no GPU has {what} installed (the job was held before the GPUs could "
                        "tell what they have)"}))

    def _choose(self, held: Held, candidates: list[int], free: dict, load: dict) -> int | None:
        """The GPU for a job among the ready ones: the one whose last job used the same model
        files, then the least loaded, then the lowest id. None when no ready GPU has its
        models but a busy one that can run it does: the job lets others pass until then."""
        models = held.needs.models
        if not models or not self.affinity:
            return min(candidates, key=lambda i: (load[i], i))
        overlap = {i: len(models & self.gpus[i].last_models) for i in candidates}
        best = max(overlap.values())
        if best == 0 and any(
                gpu.index not in free and gpu.reachable is True and models & gpu.last_models
                and self._can_run(held, gpu.index) for gpu in self.gpus):
            return None
        return min((i for i in candidates if overlap[i] == best), key=lambda i: (load[i], i))

    def _send(self, held: Held, gpu_index: int) -> int:
        """Claim the job for this GPU (a new attempt, its own prompt_id, marked in flight)
        and POST it on that GPU's sender; 0 if the job left the queue meanwhile (cancelled)."""
        prompt_id = str(uuid.uuid4())
        job = self.store.change(held.job_id, claim(gpu_index, prompt_id), sending=True)
        if job is None or job.prompt_id != prompt_id:
            return 0
        gpu = self.gpus[gpu_index]
        models = held.needs.models
        if models:
            self.affinity_counts["hit" if models & gpu.last_models else "miss"] += 1
            gpu.last_models = models
        self._senders[gpu_index].submit(self._post, gpu, job)
        return 1

    def _post(self, gpu: Gpu, job: Job) -> None:
        """Send one claimed job; what ComfyUI answered is recorded by comfy.dispatch.submit.post."""
        try:
            workflow = self._workflow(job)
            if workflow is None:
                return
            post(self.store, gpu, job, workflow, self.assets, self.max_attempts)
            gpu.rested()
        except (ComfyRejected, AssetNotFound) as exc:
            logger.info("job %s: not sent to GPU %d: %s", job.job_id, gpu.index, exc)
        except StorageUnavailable:  # nothing sent: the poller judges the submission later
            logger.info("job %s: not sent to GPU %d, the database is unavailable; left to the "
                        "poller's judgement", job.job_id, gpu.index)
        except ComfyTimeout as exc:
            logger.warning("job %s: GPU %d did not answer its POST (%s)", job.job_id, gpu.index, exc)
        except ComfyUnreachable as exc:
            logger.info("job %s: GPU %d unreachable (%s); back in the queue", job.job_id,
                        gpu.index, exc)
        except ComfyError as exc:
            gpu.rest()
            logger.warning("job %s: GPU %d answered its POST unusably (%s)",
                           job.job_id, gpu.index, exc)
        except Exception:
            gpu.rest()  # the next job may fail the same way: not in a loop
            logger.exception("sending job %s to GPU %d failed", job.job_id, gpu.index)
        finally:
            self.store.release(job.job_id, job.prompt_id)  # idempotent: post() released it
            self._wake.set()

    def _expire_pinned(self) -> None:
        """A job pinned to a GPU whose ComfyUI refuses connections waits for it up to
        requeue_wait, counted from when it became unreachable (or the job was held, if
        later): then lost. Never while that ComfyUI is reachable."""
        now = time.monotonic()
        if now < self._next_expiry:
            return
        self._next_expiry = now + EXPIRY_CHECK
        cutoff = time.time() - self.requeue_wait
        down = {gpu.index: gpu.unreachable_since for gpu in self.gpus
                if gpu.reachable is False and gpu.unreachable_since is not None}
        with self._lock:
            late = [held for held in self._held.values()
                    if not held.auto and held.gpu_id in down
                    and max(down[held.gpu_id], held.held_at or 0.0) < cutoff]
        for held in late:
            job = self.store.get(held.job_id)
            if job is not None:
                logger.warning("job %s: GPU %d did not come back in %gs; lost", held.job_id,
                               held.gpu_id, self.requeue_wait)
                expire(self.store, job, self.requeue_wait)


def ending(store: JobStore, gpu: Gpu) -> int:
    """Our prompts this ComfyUI finished with whose end is still being recorded: room already.
    Read after the store's counts, so one recorded meanwhile is in neither."""
    return sum(store.job_for_prompt(gpu.index, prompt_id) is not None
               for prompt_id in tuple(gpu.ending))


class SecretsLost(Exception):
    """A job's credentials for ComfyUI are gone (they are never stored): it cannot be sent."""


def _fail_held(error: dict):
    """An edit failing a job that is still held (a job sent meanwhile is left alone)."""
    def edit(job: Job) -> None:
        if job.status == JobStatus.HELD:
            finish(JobStatus.FAILED, error)(job)
    return edit


def _take(free: dict, load: dict, index: int) -> None:
    """One more prompt planned for this GPU."""
    load[index] += 1
    free[index] -= 1
    if free[index] <= 0:
        del free[index]

