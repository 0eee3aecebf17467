"""The job store: one lock, an in-memory dict as the read path, the store of record
(storage.JobRows: SQLite or PostgreSQL) written through."""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
from bisect import bisect_left
from collections import Counter
from operator import attrgetter
from typing import Callable, Iterable

from comfy.jobs.job import Job, JobStatus, may_move
from comfy.jobs.recent import RecentRows
from cylindria.storage import JobIdTaken, JobRows, OutboxRow
from cylindria.storage.records import DURABLE

logger = logging.getLogger(__name__)

_durable = attrgetter(*DURABLE)  # the durable fields as one tuple, compared in C
# What a running job's messages change most often, the progress of its nodes: with a progress
# writer (defer_progress) a change of these alone is written to the row off the thread that
# made it, the latest state at once for several changes; any other change writes them too.
PROGRESS = ("nodes_done", "outputs")
_not_progress = attrgetter(*(name for name in DURABLE if name not in PROGRESS))
# Every field, in the constructor's order: Job(*_fields(job)) is a shallow copy in 0.7 us
# where dataclasses.replace takes 3.6; every submission copies twice.
_fields = attrgetter(*(f.name for f in dataclasses.fields(Job)))
_IN_COMFY = frozenset({JobStatus.SUBMITTING, JobStatus.QUEUED, JobStatus.RUNNING})
# Locks a job's writes are serialised by (a job's is picked by its id's hash): enough that
# unrelated jobs rarely share one, as many as the threads that write (waitress's 16,
# the trackers, the senders) would ever need.
STRIPES = 64
# The node a store is when none is named (tests, tools): on one host every row is its own.
LOCAL_NODE = "local"
INSERT_TRIES = 3  # a row that keeps vanishing and coming back under an id: JobIdTaken then


def _copy(job: Job) -> Job:
    """A shallow copy of a job (what dataclasses.replace gives, faster)."""
    return Job(*_fields(job))


class JobStore:
    """Every job Cylindria accepted. Public methods take the lock, but for the reads that
    must never wait behind a write or a slow read (get, workflow; page only to copy).

    Records are copy-on-write snapshots: change() edits a copy and publishes it in place
    of the old record, which is never modified again, so a record handed out stays a
    consistent picture without copying it on every read (callers must not modify one).
    A change to a durable field is committed to the database before the new record is
    published, so nothing a client was told can be lost by a crash; a write that fails
    (storage.StorageUnavailable) publishes nothing, and the caller is told by the exception.

    The database round trip of a write is made under the job's own lock (one of STRIPES),
    not the store's: the store's lock is held only to read and to publish, microseconds. So
    changes of different jobs go to the database side by side (PostgreSQL's pool), and a
    burst of submissions never queues a GPU's tracking behind its writes; the changes of
    one job stay in order. New jobs are inserted one at a time (`_inserting`), so they are
    published in the order the database numbers them.

    In a fleet (several nodes on one PostgreSQL database) the store holds its node's jobs
    (`node`): those it loaded at its start and those it creates, and the shared queue: the
    held GpuId=auto jobs of no node, which every node holds (`take_in`, on each notice of
    the database) so that its dispatcher ranks them with its own. Claiming one makes it this
    node's, fenced by the row (`claim_held`: only while still held); a claim another node
    won drops it from memory, as does the notice of another node's claim (`forget_shared`).
    Another node's own job is never published here, so nothing on this node tracks or
    judges it; it is read from its row when a client asks (`lookup`), and a submission
    under its id is answered with it.

    Every write of a job names its row's fence (Job.fence), which only a takeover by another
    node raises (cylindria/fleet/takeover.py: this node's lease ended, paused or cut off from
    the database): a write that finds the fence raised writes nothing, and the job is dropped
    from memory, the disowned callbacks told (its prompt is to leave this node's ComfyUI).
    """

    def __init__(self, rows: JobRows, node: str = LOCAL_NODE):
        self._db = rows
        self.node = node
        self._recent = RecentRows()  # other nodes' jobs as lately read (lookup)
        self._lock = threading.Lock()
        self._stripes = [threading.Lock() for _ in range(STRIPES)]
        self._inserting = threading.Lock()
        self._settled = threading.Condition(self._lock)
        self._jobs: dict[str, Job] = {}
        self._peak = 0  # most jobs the dict has held since it was last rebuilt
        self._active: dict[str, str] = {}  # prompt_id -> job_id, unfinished jobs only
        # job id -> the prompt_id whose POST /prompt is under way. Keyed by prompt as well, so
        # the end of one submission's POST never clears the flag of a newer one under its id.
        self._in_flight: dict[str, str] = {}
        self._counts: Counter = Counter()  # (gpu_id, status) -> jobs, kept as jobs move
        # Counted as they happen, never taken back (the counters of /metrics): from the jobs
        # loaded and those retention removed before this start, then every acceptance (by
        # the GPU it was accepted for) and every end (a lost job later found completed ends
        # twice: lost when it was judged so, then its true end).
        self._ended: Counter = rows.retired()  # (gpu_id, status) -> jobs ended
        self._accepted: Counter = _by_gpu(self._ended)  # gpu_id -> jobs accepted
        self._observers: list[Callable[[Job | None, Job], None]] = []
        self._watchers: list[Callable[[str], None]] = []
        self._companions: list[Callable[[Job, Job], list[OutboxRow]]] = []
        self._keepers: list[Callable[[str, dict | None], None]] = []
        self._movers: list[Callable[[str], None]] = []  # told of shared jobs coming and going
        self._disowned: list[Callable[[Job], None]] = []  # told of jobs the fleet took over
        # Jobs whose progress in memory is newer than their rows, and who writes it there.
        self._behind: set[str] = set()
        self._write_progress: Callable[[str], None] | None = None
        self._shared: set[str] = set()  # the shared queue's jobs held here
        # Jobs created here with credentials kept in this node's memory only: only this node
        # can send them, so they never enter the shared queue.
        self._private: set[str] = set()
        adopted = rows.adopt(node)
        if adopted:
            logger.info("node %s adopted %d jobs (written before nodes existed, or under "
                        "another name in this host's own file)", node, adopted)
        for job in rows.load(node):
            if not self._in_queue(job):
                job.node = node  # of no node, written since the adoption: ours from its next write
            self._publish(job)

    def get(self, job_id: str) -> Job | None:
        """The job, or None. Without the lock: records are never modified once published and
        a dict lookup is atomic, so a status read never waits behind a write (which may wait
        for the database: SQLite's write lock, a PostgreSQL round trip)."""
        return self._jobs.get(job_id)

    def lookup(self, job_id: str) -> Job | None:
        """The job, held here or another node's (read from its row: a status at most
        FRESH_FOR seconds old), or None; never published here. A job held here is answered
        without the database; another's read while the database is down raises
        StorageUnavailable."""
        job = self._jobs.get(job_id)
        if job is not None or not self._db.shared:
            return job
        fresh, job = self._recent.get(job_id)
        if fresh:
            return job
        job = self._db.get(job_id)
        self._recent.put(job_id, job)
        return self._jobs.get(job_id) or job  # published meanwhile (inserted here): the record

    def active(self, gpu_id: int | None = None) -> list[Job]:
        """Unfinished jobs (of one GPU, or all), oldest first."""
        with self._lock:
            jobs = (self._jobs[j] for j in self._active.values())
            return sorted((j for j in jobs if gpu_id is None or j.gpu_id == gpu_id),
                          key=lambda j: j.seq)

    def settled_active(self, gpu_id: int) -> list[Job]:
        """Unfinished jobs of a GPU whose POST is not under way: the ones safe to judge."""
        with self._lock:
            jobs = (self._jobs[j] for j in self._active.values() if j not in self._in_flight)
            return sorted((j for j in jobs if j.gpu_id == gpu_id), key=lambda j: j.seq)

    def job_for_prompt(self, gpu_id: int, prompt_id: str) -> Job | None:
        """The unfinished job that owns this prompt on this GPU, or None."""
        with self._lock:
            job_id = self._active.get(prompt_id)
            job = self._jobs.get(job_id) if job_id else None
            return job if job and job.gpu_id == gpu_id else None

    def ahead_of(self, gpu_id: int) -> int:
        """Cylindria's prompts waiting or running on a GPU (O(1): from the status counts).

        ComfyUI numbers prompts in arrival order, so for a prompt just accepted these all
        run before it.
        """
        with self._lock:
            return self._counts[(gpu_id, JobStatus.QUEUED)] + self._counts[(gpu_id, JobStatus.RUNNING)]

    def in_flight(self, job_id: str) -> bool:
        """True while the job's POST /prompt is under way."""
        with self._lock:
            return job_id in self._in_flight

    def observe(self, observer: Callable[[Job | None, Job], None]) -> None:
        """Call `observer(old, new)` after every status change (old is None for a new job)."""
        self._observers.append(observer)

    def on_shared(self, mover: Callable[[str], None]) -> None:
        """Call `mover(job_id)` when a job of the shared queue enters this store or leaves it
        without a change of its own (another node's submission, or its claim): the
        dispatcher's queue follows. Called outside the store's lock."""
        self._movers.append(mover)

    def on_disowned(self, callback: Callable[[Job], None]) -> None:
        """Call `callback(job)` (the copy held here, outside the store's lock) when a write
        finds that another node took the job over: it is dropped from memory, and what it
        left in this node's ComfyUI is the callback's to remove."""
        self._disowned.append(callback)

    def watch(self, watcher: Callable[[str], None]) -> None:
        """Call `watcher(job_id)` after every change of a job, progress included (clients
        waiting on a job are woken by it); it must be cheap: it runs on every message."""
        self._watchers.append(watcher)

    def defer_progress(self, schedule: Callable[[str], None]) -> None:
        """Leave a running job's progress-only changes (PROGRESS) to `schedule(job_id)`, which
        is to call `write_progress(job_id)` soon, on its own thread: the websocket thread
        that made the change reads its next message meanwhile, and the changes of a burst of
        messages land in one write."""
        self._write_progress = schedule

    def write_progress(self, job_id: str) -> None:
        """Write a job's progress to its row if its row is behind (a write of any other change
        since wrote it too). A row taken over meanwhile drops the job, as any write does;
        StorageUnavailable leaves it behind, for the next call."""
        with self._stripe(job_id):
            if job_id not in self._behind:
                return
            job = self._jobs.get(job_id)
            if job is None or job.status.finished:
                self._behind.discard(job_id)
                return
            written = self._db.update(job)  # StorageUnavailable: still behind
            self._behind.discard(job_id)
            if not written:
                self._fenced_out(job)
                self._disown(job)

    def commit_with(self, companion: Callable[[Job, Job], list[OutboxRow]]) -> None:
        """At every status change, commit the outbox rows `companion(old, new)` gives in the
        same transaction as the change: a row a change causes (a webhook event) is never lost,
        nor written for a change that was not. Called under the lock: it must be quick."""
        self._companions.append(companion)

    def withhold(self, keeper: Callable[[str, dict | None], None]) -> None:
        """Call `keeper(job_id, credentials)` under the lock when a job is created with
        credentials that are never stored, and `keeper(job_id, None)` when a submission is
        discarded: a job's credentials are bound in the step that creates it, so a submission
        that lost the race for its id never lends the winner its own."""
        self._keepers.append(keeper)

    def events_for(self, old: Job, new: Job) -> list[OutboxRow]:
        """The outbox rows a status change causes (the companions'), for a change written
        elsewhere than through `change` (another node's job taken over)."""
        if new.status == old.status:
            return []
        return [row for companion in self._companions for row in companion(old, new)]

    def let_go(self, job_id: str, fence: int) -> Job | None:
        """The fleet took this job over (its row's fence is now `fence`): drop the copy held
        here if it is older (the disowned callbacks are not told: the caller acts); the
        dropped copy, or None (not held, or held as it is since)."""
        with self._stripe(job_id):
            with self._lock:
                current = self._jobs.get(job_id)
                if current is None or current.fence >= fence:
                    return None
                self._unpublish(current)
        self._moved(job_id)
        return current

    def counts(self) -> dict[tuple[int, JobStatus], int]:
        """How many jobs each GPU has in each status."""
        with self._lock:
            return {key: n for key, n in self._counts.items() if n}

    def totals(self) -> tuple[dict, dict]:
        """(gpu_id -> jobs accepted, (gpu_id, status) -> jobs ended): counts that only grow."""
        with self._lock:
            return dict(self._accepted), dict(self._ended)

    def reserve(self, job: Job, workflow: bytes, admit: Callable[[int], None] | None = None,
                withheld: dict | None = None) -> tuple[Job, bool]:
        """Record a new job with its workflow (durably), or return the one already under its id.

        A job given as HELD enters Cylindria's queue; any other is recorded as submitting,
        its POST under way. `admit(held_jobs)` runs under the same lock as the insert and
        may refuse a new job by raising (a full queue), so concurrent submissions never
        overshoot a limit; a retry of a known id is never refused. `withheld` (credentials
        kept in memory only) goes to the keepers only if this call creates the job.
        """
        with self._stripe(job.job_id), self._inserting:
            existing = self._jobs.get(job.job_id)
            if existing is not None:
                return existing, False
            if admit is not None:
                with self._lock:
                    admit(self._held())
            job = _copy(job)
            if job.status != JobStatus.HELD:
                job.status = JobStatus.SUBMITTING
            job.submitted_at = job.submitted_at or time.time()
            shared = self._db.shared and job.status == JobStatus.HELD and job.auto \
                and not withheld
            job.node = None if shared else (job.node or self.node)
            theirs = self._insert(job, workflow)  # raises: nothing published, a retry starts afresh
            if theirs is not None:
                self._recent.put(job.job_id, theirs)
                return theirs, False
            with self._lock:
                if job.status == JobStatus.SUBMITTING:
                    self._in_flight[job.job_id] = job.prompt_id
                for keeper in self._keepers if withheld else ():
                    keeper(job.job_id, withheld)
                if withheld and self._db.shared:
                    self._private.add(job.job_id)
                self._publish(job)
        self._notify(None, job)
        return job, True

    def workflow(self, job_id: str) -> bytes | None:
        """The workflow a job was submitted with, as received (credentials left out)."""
        return self._db.workflow(job_id)  # its own connection: a 32 MiB read holds no one

    def held(self) -> int:
        """Jobs in Cylindria's own queue (O(GPUs): from the status counts), the fleet's shared
        queue included: what this node sees of the fleet's queue."""
        with self._lock:
            return self._held()

    def held_here(self) -> tuple[int, int]:
        """(held jobs of this node's own, jobs of the shared queue): the fleet counts the
        shared queue once, not once per node."""
        with self._lock:
            return self._held() - len(self._shared), len(self._shared)

    def in_shared_queue(self, job_id: str) -> bool:
        """Whether this job is held here as one of the fleet's shared queue (any node may
        run it)."""
        return job_id in self._shared

    def take_in(self, job_id: str, row: Job | None = None) -> bool:
        """A job entered the shared queue (a notice of the database): publish it here as it
        reads now (`row`, or read), if it is still there; one no longer there is dropped if
        held here as shared. Never touches a job of this node's own. Whether it is held here now."""
        with self._stripe(job_id):
            current = self._jobs.get(job_id)
            if current is not None and not self._in_queue(current):
                return False  # this node's own: it knows better than any notice
            if current is not None and (row is None or (_durable(row) == _durable(current)
                                                        and row.fence == current.fence)):
                return True  # known as it is: nothing to publish
            row = row if row is not None else self._db.get(job_id)
            with self._lock:
                if row is not None and self._in_queue(row):
                    self._publish(row, previous=current, accepted=False)
                elif current is not None:
                    self._unpublish(current)
                else:
                    return False
        self._moved(job_id)
        return job_id in self._shared

    def forget_shared(self, job_id: str) -> bool:
        """Another node took this job from the shared queue (its notice): drop it from memory,
        if held here as a job of the shared queue (never one of this node's own; the database
        is not touched). Whether it was dropped."""
        with self._stripe(job_id):  # a claim of ours under way publishes the job as ours first
            with self._lock:
                current = self._jobs.get(job_id)
                if current is None or not self._in_queue(current):
                    return False
                self._unpublish(current)
        self._moved(job_id)
        return True

    def resync_shared(self) -> None:
        """Make the shared queue held here agree with the database (after notices may have been
        missed: at a (re)connection of the listener)."""
        rows = self._db.shared_held()
        for row in rows:
            self.take_in(row.job_id, row)
        with self._lock:
            stale = self._shared - {row.job_id for row in rows}
        for job_id in stale:  # read again: one inserted here after the read above stays
            self.take_in(job_id, self._db.get(job_id) or _GONE)

    def unfinished_per_gpu(self) -> Counter:
        """gpu_id -> Cylindria's prompts in that ComfyUI (submitting, queued or running)."""
        with self._lock:
            unfinished = Counter()
            for (gpu_id, status), n in self._counts.items():
                if n and gpu_id is not None and status in _IN_COMFY:
                    unfinished[gpu_id] += n
            return unfinished

    def page(self, statuses: set | None, gpu_id: int | None, limit: int,
             before: int | None, match: Callable[[Job], bool] | None = None,
             submitted_by: str | None = None) -> tuple[list[Job], int | None]:
        """Newest-first jobs matching the filters (and `match`, if given), older than `before`
        (a seq); and the next cursor. In a fleet every node's jobs, read from the database
        (see _fleet_page); on one host those in memory."""
        if self._db.shared:
            return self._fleet_page(statuses, gpu_id, limit, before, match, submitted_by)
        found: list[Job] = []
        with self._lock:  # one copy of the references in C; the walk and filters go outside
            jobs = list(self._jobs.values())
        # The dict is in seq order (jobs are published in the order the database numbers them):
        # a cursor starts where its page left off instead of skipping every newer job.
        end = bisect_left(jobs, before, key=attrgetter("seq")) if before is not None else len(jobs)
        for index in range(end - 1, -1, -1):
            job = jobs[index]
            if not _listed(job, statuses, gpu_id, match, submitted_by):
                continue
            if len(found) == limit:
                return found, found[-1].seq
            found.append(job)
        return found, None

    def _fleet_page(self, statuses: set | None, gpu_id: int | None, limit: int,
                    before: int | None, match: Callable[[Job], bool] | None,
                    submitted_by: str | None) -> tuple[list[Job], int | None]:
        """`page` over every node's rows (the database is the truth of each job's durable
        fields), the filters in SQL. This node's own jobs are shown as held in memory (their
        progress may be fresher than their rows) and filtered again as such. Rows are read in
        batches one more than the page, until the page and one job after it are found."""
        found: list[Job] = []
        values = None if not statuses else sorted(status.value for status in statuses)
        batch = limit + 1
        while True:
            rows = self._db.page(values, gpu_id, batch, before, submitted_by)
            for row in rows:
                job = self._jobs.get(row.job_id) or row
                if not _listed(job, statuses, gpu_id, match, submitted_by):
                    continue
                if len(found) == limit:
                    return found, found[-1].seq
                found.append(job)
            if len(rows) < batch:
                return found, None
            before = rows[-1].seq

    def request_cancel(self, job_id: str) -> tuple[bool, Job | None]:
        """Ask the node holding another node's job to cancel it (the flag in its row, and a
        notice on PostgreSQL): (asked, the job as its row reads now, or None: gone)."""
        asked = self._db.request_cancel(job_id)
        job = self._db.get(job_id)
        self._recent.put(job_id, job)
        return asked, job

    def cancels_requested(self) -> list[str]:
        """This node's unfinished jobs whose cancel another node asked for (in their rows)."""
        return self._db.cancels_requested(self.node)

    def wait_settled(self, job_id: str, timeout: float) -> Job | None:
        """Wait until nobody is submitting this job any more; the job then, or None if dropped."""
        with self._settled:
            self._settled.wait_for(lambda: job_id not in self._in_flight, timeout)
            return self._jobs.get(job_id)

    def release(self, job_id: str, prompt_id: str) -> None:
        """The POST of this submission (job id and prompt) is over, whatever its outcome."""
        with self._settled:
            if self._in_flight.get(job_id) == prompt_id:
                del self._in_flight[job_id]
                self._settled.notify_all()

    def discard(self, job_id: str, prompt_id: str) -> bool:
        """Forget a submission ComfyUI never got, so the client's retry goes through.

        Only the exact submission that was judged (its prompt_id) is forgotten, and only
        while it is still `submitting`: by the time a slow judgment lands, the id may belong
        to a newer submission whose POST is under way, and that one must live on.
        """
        with self._stripe(job_id):
            job = self._jobs.get(job_id)
            if job is None or job.prompt_id != prompt_id or job.status != JobStatus.SUBMITTING:
                return False
            if not self._db.delete(job):
                self._disown(job)
                return False
            with self._settled:
                del self._jobs[job_id]
                self._active.pop(job.prompt_id, None)
                self._counts[(job.gpu_id, job.status)] -= 1
                if self._in_flight.get(job_id) == prompt_id:
                    del self._in_flight[job_id]
                for keeper in self._keepers:
                    keeper(job_id, None)
                self._settled.notify_all()
            return True

    def change(self, job_id: str, edit: Callable[[Job], None],
               allow_finished: bool = False, prompt_id: str | None = None,
               sending: bool = False) -> Job | None:
        """Apply `edit` to a copy of the job and publish it if it is a legal move.

        A finished job is left alone (late messages must not touch it) unless
        `allow_finished`; a status change that would move backwards is refused whole.
        With `prompt_id`, only that submission is changed (None if the id now holds another):
        what was learnt about one prompt never lands on a newer submission under the same id.
        With `sending`, an edit that starts a new submission (submitting, with a new
        prompt_id) marks its POST as under way in the same step, so no poll judges it.
        """
        with self._stripe(job_id):
            current = self._jobs.get(job_id)
            if current is None or (prompt_id is not None and current.prompt_id != prompt_id):
                return None
            if current.status.finished and not allow_finished:
                return current
            new = _copy(current)
            edit(new)
            if new.status != current.status and not may_move(current.status, new.status):
                return current
            self._place(current, new)
            if not self._persist(current, new):
                self._disown(current)  # claimed or taken over by another node: its job now
                return None
            with self._lock:
                if self._jobs.get(job_id) is not current:
                    return None  # forgotten meanwhile by retention (finished, row deleted)
                self._publish(new, previous=current)
                if sending and new.status == JobStatus.SUBMITTING \
                        and new.prompt_id != current.prompt_id:
                    self._in_flight[job_id] = new.prompt_id
        if new.status != current.status:
            self._notify(current, new)
        for watcher in self._watchers:
            watcher(job_id)
        return new

    def change_by_prompt(self, gpu_id: int, prompt_id: str,
                         edit: Callable[[Job], None]) -> Job | None:
        """`change` for the unfinished job that owns this prompt on this GPU; None if not ours."""
        with self._lock:
            job_id = self._active.get(prompt_id)
            if job_id is None or self._jobs[job_id].gpu_id != gpu_id:
                return None
        return self.change(job_id, edit, prompt_id=prompt_id)

    def finished_before(self, cutoff: float) -> list[str]:
        """The ids of the jobs held here that ended before `cutoff` (the lock held only to
        copy the references; the walk goes outside, as in `page`)."""
        with self._lock:
            jobs = list(self._jobs.values())
        return [job.job_id for job in jobs if job.status.finished
                and job.finished_at is not None and job.finished_at < cutoff]

    def forget_finished(self, job_ids: Iterable[str], cutoff: float) -> int:
        """Drop from memory those of these jobs that ended before `cutoff` (the retention
        sweep's step; a sweep deletes their rows, this node's or another's). Unfinished
        jobs are never dropped."""
        forgotten = 0
        with self._lock:
            for job_id in job_ids:
                job = self._jobs.get(job_id)
                if job is None or not job.status.finished or job.finished_at is None \
                        or job.finished_at >= cutoff:
                    continue
                del self._jobs[job_id]
                self._counts[(job.gpu_id, job.status)] -= 1
                forgotten += 1
            if forgotten and len(self._jobs) < self._peak // 4:
                # A dict never shrinks by deletion: rebuilt once it is mostly empty, so a
                # store that once held a million jobs does not keep their table for ever.
                self._jobs = dict(self._jobs)
                self._peak = len(self._jobs)
        return forgotten

    def jobs(self, newest_first: bool = True) -> Iterable[Job]:
        """A snapshot of every job, newest first by default."""
        with self._lock:
            jobs = list(self._jobs.values())
        return jobs[::-1] if newest_first else jobs

    def _place(self, current: Job, new: Job) -> None:
        """The node a changed job belongs to: a job leaving the shared queue is this node's
        (its claim, or its cancel), a GpuId=auto job put back in the queue on the fleet's
        database goes to the shared queue (unless only this node holds its credentials)."""
        if self._in_queue(current) and new.status != JobStatus.HELD:
            new.node = self.node
        elif self._db.shared and new.auto and new.status == JobStatus.HELD \
                and current.status != JobStatus.HELD and new.job_id not in self._private:
            new.node = None
        if new.status.finished:
            self._private.discard(new.job_id)

    def _persist(self, current: Job, new: Job) -> bool:
        """Commit a change of durable fields, before anyone can see it (caller holds the
        job's stripe, not the store's lock). False: a job of the shared queue that another
        node claimed (nothing written)."""
        before, after = _durable(current), _durable(new)
        if after == before:
            return True
        if self._write_progress is not None and new.status == current.status == JobStatus.RUNNING \
                and _not_progress(new) == _not_progress(current):
            self._behind.add(new.job_id)
            self._write_progress(new.job_id)
            return True
        events = [row for companion in self._companions for row in companion(current, new)] \
            if self._companions and new.status != current.status else ()
        if self._in_queue(current):
            # Fenced by the row: written only while it is still in the queue, and not while
            # another node is claiming it.
            if not self._db.claim_held(new, events):
                logger.debug("job %s: taken by another node", new.job_id)
                return False
        elif current.status != JobStatus.HELD or new.status != JobStatus.SUBMITTING:
            if not self._db.update(new, events):
                return self._fenced_out(new)
        elif not self._db.claim_held(new, events):
            # This node writes every row of its own, so a held job whose row is not held any
            # more (and still of this fence) was claimed by a write whose acknowledgement was
            # lost (the database went away as it committed; nothing was sent): this claim
            # replaces it.
            if not self._db.update(new, events):
                return self._fenced_out(new)
            logger.warning("job %s: its row was claimed by an unacknowledged write", new.job_id)
        self._behind.discard(new.job_id)  # the row has the progress too now
        if new.status != current.status:
            # Acceptance is already the access log's `PUT /startjob/<id> 201` line: at INFO it
            # would double the log's volume under a burst of submissions (and its cost).
            level = logging.DEBUG if new.status == JobStatus.QUEUED else logging.INFO
            where = "held" if new.gpu_id is None else f"on GPU {new.gpu_id}"
            logger.log(level, "job %s %s: %s -> %s", new.job_id, where,
                       current.status.value, new.status.value)
        return True

    def _fenced_out(self, job: Job) -> bool:
        """A write found the job's fence raised: another node took it over (False)."""
        logger.warning("job %s: its row is no longer this node's (taken over by another node "
                       "while this node's lease had ended, or removed); let go", job.job_id)
        return False

    def _disown(self, current: Job) -> None:
        """Drop a job another node claimed or took over from memory (caller holds its stripe),
        and tell the movers and, for a job of this node's own, the disowned callbacks."""
        with self._lock:
            dropped = self._jobs.get(current.job_id) is current
            if dropped:
                self._unpublish(current)
        self._moved(current.job_id)
        if dropped and not self._in_queue(current):
            for callback in self._disowned:
                try:
                    callback(current)
                except Exception:
                    logger.exception("disowned job callback failed")

    def _insert(self, job: Job, workflow: bytes) -> Job | None:
        """Insert a new job's row and set its seq (caller holds its stripe and `_inserting`);
        None, or the job of another node found under its id.

        A live row under the id that this store does not hold is either this node's, left
        by a write whose acknowledgement was lost (the database went away as it committed,
        the client was told 503: nobody was told of it, so it gives way to this
        submission), or another node's job (or one of no node): never touched, it is the
        job under this id, answered as a retry would be."""
        for _ in range(INSERT_TRIES):
            try:
                job.seq = self._db.insert(job, workflow)
                return None
            except JobIdTaken:
                row = self._db.get(job.job_id)
            if row is not None and row.node != self.node:
                return row
            if row is not None:
                logger.warning("job %s: replacing a row left by an unacknowledged write",
                               job.job_id)
                self._db.delete(row)  # fenced: a row taken over meanwhile stays
            # else gone between the two reads (a discarded submission): inserted again
        raise JobIdTaken(job.job_id)

    def _stripe(self, job_id: str) -> threading.Lock:
        """The lock a job's writes hold (taken before `_inserting` and the store's lock)."""
        return self._stripes[hash(job_id) % STRIPES]

    def _in_queue(self, job: Job) -> bool:
        """Whether a job is in the fleet's shared queue (held, GpuId=auto, of no node)."""
        return job.node is None and job.auto and job.status == JobStatus.HELD \
            and self._db.shared

    def _moved(self, job_id: str) -> None:
        """Tell the movers a shared job came or went; never let one break the store."""
        for mover in self._movers:
            try:
                mover(job_id)
            except Exception:
                logger.exception("shared queue observer failed")

    def _unpublish(self, job: Job) -> None:
        """Drop a job from memory, not from the database (caller holds the lock)."""
        del self._jobs[job.job_id]
        self._counts[(job.gpu_id, job.status)] -= 1
        self._shared.discard(job.job_id)
        if job.prompt_id is not None:
            self._active.pop(job.prompt_id, None)

    def _held(self) -> int:
        """Held jobs (caller holds the lock)."""
        return sum(n for (_, status), n in self._counts.items() if status == JobStatus.HELD)

    def _notify(self, old: Job | None, new: Job) -> None:
        """Tell the observers (metrics) about a status change; never let one break the store."""
        for observer in self._observers:
            try:
                observer(old, new)
            except Exception:
                logger.exception("job observer failed")

    def _publish(self, job: Job, previous: Job | None = None, accepted: bool = True) -> None:
        """Make `job` the current record and keep the prompt index to unfinished jobs (and
        the set of the shared queue's). `accepted`: a new job counts as accepted here (not
        one taken in from the shared queue)."""
        self._jobs[job.job_id] = job
        self._peak = max(self._peak, len(self._jobs))
        if self._in_queue(job):
            self._shared.add(job.job_id)
        else:
            self._shared.discard(job.job_id)
        if previous is not None:
            self._counts[(previous.gpu_id, previous.status)] -= 1
        elif accepted:
            self._accepted[job.gpu_id] += 1
        self._counts[(job.gpu_id, job.status)] += 1
        if job.status.finished and (previous is None or previous.status != job.status):
            self._ended[(job.gpu_id, job.status)] += 1
        if previous is not None and previous.prompt_id != job.prompt_id:
            self._active.pop(previous.prompt_id, None)
        if job.prompt_id is None:
            return  # held: no ComfyUI has it, so no message or poll can be about it
        if job.status.finished:
            self._active.pop(job.prompt_id, None)
        else:
            self._active[job.prompt_id] = job.job_id


# What resync_shared reads of a job whose row is gone: nothing in the queue.
_GONE = Job(job_id="", gpu_id=None, prompt_id=None, fingerprint="", status=JobStatus.CANCELLED)


def _listed(job: Job, statuses: set | None, gpu_id: int | None,
            match: Callable[[Job], bool] | None, submitted_by: str | None) -> bool:
    """Whether a job passes a job list's filters."""
    return not ((statuses and job.status not in statuses)
                or (gpu_id is not None and job.gpu_id != gpu_id)
                or (submitted_by is not None and job.submitted_by != submitted_by)
                or (match is not None and not match(job)))


def _by_gpu(counts: Counter) -> Counter:
    """(gpu_id, status) -> n summed per GPU."""
    per_gpu: Counter = Counter()
    for (gpu_id, _), n in counts.items():
        per_gpu[gpu_id] += n
    return per_gpu
