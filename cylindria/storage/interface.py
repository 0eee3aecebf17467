"""What Cylindria asks of its store of record, whichever database holds it.

One `Protocol` per kind of record, named after what the job store, the asset store, the
webhook outbox and the retention sweep need, not after SQL; `Storage` holds one of each.
A backend (cylindria/storage/sqlite.py, cylindria/storage/postgres.py) implements them all, owns its schema,
its migrations and the clean-up of dependent rows, and names each of its SQL statements in
one table. Nothing outside a backend writes SQL.

Every method may raise `StorageUnavailable`: the database cannot be reached now (PostgreSQL
down or restarting, SQLite locked past its wait or its disk failing). Nothing the call was
to write is written; a later call may succeed (the backend reconnects by itself).

The fleet (several hosts, one PostgreSQL database; the next issue) takes the held queue's
claim into the database through `JobRows.claim_held`, already the only way a held job is
sent on both backends: a node's dispatcher ranks the held jobs it may run (the shared queue,
kept current by LISTEN/NOTIFY) as the single host ranks its in-memory queue, then claims
them one at a time. On PostgreSQL the claim locks the job's row `FOR UPDATE SKIP LOCKED` and
writes the submission only while the row is still held, in one transaction: a row another
node is claiming is skipped at once (False), never waited for, and a job is claimed by one
node only. A webhook event is claimed the same way before each try (`OutboxRows.claim`: its
`claimed_by`/`claimed_until`, by the database's clock, ended by the try's outcome or by
time if its node dies mid-try), and one retention sweep runs at a time (`JobRows.sweep_turn`,
an advisory lock).

Failover: a node whose lease has ended (`NodeRows`, by the database's clock) still holding
unfinished jobs is `stranded`; a live node `take_over`s its jobs in one transaction that
re-checks the lease under the node's row lock (a renewal racing it either comes first, and
nothing is taken, or waits and then learns it was taken over). Every job row carries a fence
(Job.fence), raised by each takeover: every write of a job's owner names the fence it read,
so a node that lost a job to the fleet (paused, cut off from the database) writes nothing
more about it, and learns so from the write's answer (False).
"""
from __future__ import annotations

import functools
import logging
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, ContextManager, Iterable, Iterator, Protocol

if TYPE_CHECKING:
    from comfy.inputs.assets import Asset
    from comfy.jobs.job import Job

logger = logging.getLogger(__name__)


class StorageUnavailable(Exception):
    """The database cannot be reached now; nothing asked for was written."""


class SchemaTooNew(Exception):
    """The database was written by a newer Cylindria (its schema version is unknown here)."""


class JobIdTaken(Exception):
    """A live row already holds this job id (one the caller does not know of)."""


@dataclass(frozen=True)
class OutboxRow:
    """One webhook event: written with the status change that causes it, tried until settled."""

    id: str  # the webhook-id: the same on every try of this event
    job_id: str
    url: str
    event: str
    body: bytes  # the bytes signed and sent, as of the change
    created_at: float
    attempts: int = 0
    due_at: float | None = None  # the next try; None once delivered or given up
    client: str = ""  # who submitted the job ('' for an unnamed key)
    last_error: str | None = None
    delivered_at: float | None = None
    given_up_at: float | None = None


@dataclass(frozen=True)
class Taken:
    """A job the fleet took from a node whose lease had ended (JobRows.take_over): what that
    node, back, drops from its memory (its copy's fence is below `fence`) and from its
    ComfyUI (`prompt_id` on GPU `gpu_id`, if the job had been sent)."""

    job_id: str
    fence: int  # the row's fence after the takeover
    gpu_id: int | None
    prompt_id: str | None


# JobRows.take_over's judge: (a stranded node's unfinished job as its row reads under lock,
# seconds since that node's lease ended) -> the job as it is to be written and the events
# the change causes, or None to leave it as it is.
Rework = Callable[["Job", float], "tuple[Job, list[OutboxRow]] | None"]


class JobRows(Protocol):
    """The jobs, their workflows and the retention counters.

    In a fleet (several nodes on one PostgreSQL database) every row names the node that
    holds the job; a node loads, tracks and judges only its own (and adopts some at its
    start: see `adopt`). `shared` says whether other nodes may write this store
    (PostgreSQL): only then can a job missing from a node's memory be another node's, to be
    read with `get`. SQLite is one host's: what it holds is in memory."""

    shared: bool

    def adopt(self, node: str) -> int:
        """Make the rows this node is to hold its own, in one statement (so two nodes starting
        at once never both take one); how many. On the fleet's database those of no node
        (written before nodes existed); in one host's file every row not yet this node's (the
        host's jobs under an earlier name, or copied in): a renamed host keeps its jobs."""

    def load(self, node: str) -> list[Job]:
        """The jobs of this node, and those of no node, still within retention, oldest first
        (expired rows await the sweep)."""

    def get(self, job_id: str) -> Job | None:
        """The job under this id, whichever node holds it, if still within retention."""

    def insert(self, job: Job, workflow: bytes) -> int:
        """Add a job and its workflow in one transaction; its sequence number. An expired
        row under its id gives way (deleted and counted in the same transaction); a live
        one raises JobIdTaken."""

    def update(self, job: Job, events: Iterable[OutboxRow] = ()) -> bool:
        """Write the job's durable fields, and the events its change causes, in one
        transaction: both or neither. Fenced: written only while the row's fence is the
        job's; False (nothing written) once it is not (taken over, or its row removed)."""

    def claim_held(self, job: Job, events: Iterable[OutboxRow] = ()) -> bool:
        """`update`, only while the job's row is still held and no one else is claiming it;
        False (nothing written) if another claimer took it or is taking it."""

    def delete(self, job: Job) -> bool:
        """Remove a job and what depends on it (a submission ComfyUI never got), fenced as
        `update` is; whether it was removed."""

    def shared_held(self) -> list[Job]:
        """The shared queue: held GpuId=auto jobs of no node, oldest first (empty on one
        host's file). Inserting one, or putting one back (`update`), notifies every node; a
        claim of one (`claim_held` naming a node) notifies that it was taken."""

    def workflow(self, job_id: str) -> bytes | None:
        """The workflow a job was submitted with, as received (credentials left out)."""

    def expired(self, cutoff: float, limit: int) -> list[tuple[int, str]]:
        """(seq, job_id) of up to `limit` finished jobs that ended before `cutoff`, oldest first."""

    def delete_expired(self, seqs: list[int], cutoff: float) -> Counter:
        """Delete these rows, with their workflows and settled events, if they are still
        finished before `cutoff`, and count them as retired; (gpu, status) -> deleted."""

    def retired(self) -> Counter:
        """(gpu, status) -> jobs removed by retention, over every life of this store (in a
        fleet: of every node's jobs, each counted once by the sweep that deleted it)."""

    def sweep_turn(self) -> ContextManager[bool]:
        """`with rows.sweep_turn() as ours:` True if this node may sweep now, held until the
        block ends; False at once (never waited for) while another node sweeps."""

    def page(self, statuses: Iterable[str] | None, gpu_id: int | None, limit: int,
             before: int | None, submitted_by: str | None = None) -> list[Job]:
        """Up to `limit` jobs of every node, newest first (by seq), older than `before` (a
        seq), within retention, with one of these status values, on this GPU, submitted by
        this name (None: any)."""

    def request_cancel(self, job_id: str) -> bool:
        """Ask the node holding an unfinished job to cancel it: its `cancel_requested` set
        (nothing else written) and, on PostgreSQL, `NOTIFY cylindria_cancel, '<job_id>'`
        in the same transaction; False if no unfinished job has this id."""

    def cancels_requested(self, node: str) -> list[str]:
        """The ids of this node's unfinished jobs whose cancel was asked for, oldest first
        (what a node missed while it was not listening)."""

    def stranded(self) -> list[str]:
        """The nodes whose lease has ended (by the database's clock) and that still hold
        unfinished jobs, by name."""

    def take_over(self, node: str, rework: Rework) -> list[tuple[Job, Job]]:
        """If `node`'s lease has still ended (re-checked under its row's lock; skipped at once
        if another node is taking it over or it is renewing), judge each of its unfinished
        jobs with `rework` and write what it decides, in one transaction: the row with its
        fence raised, the events, the job recorded as taken from `node` (`taken_from`), and a
        job put in the shared queue notified. (before, after) of every job changed."""

    def taken_from(self, node: str) -> list[Taken]:
        """The jobs taken from this node (oldest first) that it has yet to let go of."""

    def forget_taken(self, node: str, job_ids: Iterable[str]) -> None:
        """This node has let these jobs go (dropped from memory, out of its ComfyUI)."""


class CancelListener(Protocol):
    """A connection of its own that listens for `request_cancel`'s notices (PostgreSQL)."""

    def listen(self) -> None:
        """(Re)connect and start listening; StorageUnavailable if the database cannot be reached."""

    def wait(self, timeout: float) -> list[tuple[str, str]]:
        """The (channel, job id) notices since the last call, waiting up to `timeout` seconds
        for one (an empty list then): cancels asked, jobs entering and leaving the shared
        queue; StorageUnavailable once the connection is lost (listen again)."""

    def close(self) -> None:
        """Close the connection (listen opens a new one)."""


class AssetRows(Protocol):
    """The assets' rows and their files' bytes. On PostgreSQL the database holds the bytes
    (`holds_bytes`), a file's in rows of records.CHUNK_BYTES written in the transaction that
    records it, so any node of a fleet reads any upload, and each node's asset folder is a
    cache of them; on SQLite (one host) the asset folder in the data dir is their store."""

    holds_bytes: bool

    def find(self, *, asset_id: str | None = None, hash_text: str | None = None,
             owner: str | None = None) -> Asset | None:
        """The asset with this id or hash (of `owner`, unless None: then the shared one
        first, else the oldest), or None."""

    def add_file(self, hash_text: str, size_bytes: int, content_type: str,
                 content: Path | None = None) -> None:
        """Record a file by its hash, with its bytes where the database holds them (read from
        the complete file `content` a chunk at a time, in the same transaction). Once: a second
        time changes nothing, except that a recorded file whose bytes the database lacks
        (recorded by a version that left them on its node's disk) gains them. SQLite records
        the row: the bytes are the asset folder's file, which the asset store keeps."""

    def read_file(self, hash_text: str) -> Iterator[bytes]:
        """A recorded file's bytes in order, at most records.CHUNK_BYTES at a time (never whole
        in memory); FileNotFoundError, once iterated, if the store has none. SQLite reads the
        file in its asset folder."""

    def stored(self, hashes: list[str]) -> dict[str, bool]:
        """The recorded files among these hashes, each with whether `read_file` has its bytes
        (a hash no file row names is left out)."""

    def add(self, asset: Asset) -> None:
        """Record an asset over a recorded file."""

    def remove(self, asset_id: str) -> None:
        """Remove an asset and its uses."""

    def file_held(self, hash_text: str) -> bool:
        """Whether any asset holds the file with this hash."""

    def remove_file(self, hash_text: str) -> None:
        """Forget a file, with its bytes where the database holds them (its file in the asset
        folder unlinked already)."""

    def files_unheld(self, limit: int) -> list[str]:
        """Hashes of up to `limit` recorded files no asset holds."""

    def touch(self, asset_id: str, when: float) -> None:
        """A job needed the asset at `when`: retention counts from then."""

    def add_use(self, asset_id: str, job_id: str, fingerprint: str) -> None:
        """A submission (job id and workflow fingerprint) refers to the asset."""

    def uses_of(self, asset_id: str) -> list[tuple[str, str]]:
        """(job_id, fingerprint) of every recorded use of the asset."""

    def fingerprints_of(self, job_id: str) -> list[str]:
        """The fingerprints of a job id's recorded uses."""

    def remove_uses(self, job_id: str, fingerprint: str) -> None:
        """Forget the uses of one submission."""

    def users_ever(self) -> list[str]:
        """The ids of every job with a recorded use."""

    def unused_since(self, cutoff: float, limit: int) -> list[Asset]:
        """Up to `limit` assets no job has needed since `cutoff`, oldest first."""


class OutboxRows(Protocol):
    """The webhook events (written by JobRows.update with the change that causes them)."""

    def due(self, now: float, limit: int, *, skip: Iterable[str] = (),
            after: tuple | None = None, jobs: Iterable[str] = (), urls: Iterable[str] = (),
            clients: Iterable[str] = ()) -> list[OutboxRow]:
        """Up to `limit` events due by `now`, in due order, but those in `skip`, those of
        the `jobs`, to the `urls` or of the `clients` given, and those another claim holds;
        `after`: the (due_at, id) of the last event of the page before."""

    def next_due(self) -> float | None:
        """When the earliest undelivered event no other node is trying is due, or None."""

    def claim(self, event_id: str, node: str, now: float, seconds: float) -> bool:
        """Take the event for one try by `node` for `seconds` (by the database's clock), if it
        is still due by `now` and no one else's claim holds it; False at once otherwise.
        `delivered`, `retry` and `give_up` end the claim; a claim whose node died lapses,
        and another node sends the event (at least once)."""

    def delivered(self, event_id: str, now: float) -> None:
        """The receiver took it (a try counted)."""

    def retry(self, event_id: str, error: str, due_at: float) -> None:
        """This try failed; the next at `due_at` (a try counted)."""

    def give_up(self, event_id: str, error: str, now: float) -> None:
        """No more tries (a try counted)."""

    def depth(self) -> int:
        """Events neither delivered nor given up."""

    def of_job(self, job_id: str, url: str) -> list[OutboxRow]:
        """A job's events to this URL, oldest first."""


@dataclass(frozen=True)
class Contents:
    """What a whole store holds: rows of each kind (a target of `db copy` must hold none)."""

    jobs: int = 0
    held: int = 0  # of the jobs, those in Cylindria's queue
    workflows: int = 0
    asset_files: int = 0
    asset_bytes: int = 0  # the asset files' sizes, summed
    assets: int = 0
    asset_uses: int = 0
    events: int = 0
    pending_events: int = 0  # of the events, those neither delivered nor given up
    retired: int = 0  # retention's (gpu, status) counters


@dataclass(frozen=True)
class NodeRow:
    """One node of the fleet as the database knows it: its lease, and what it last said of itself."""

    name: str
    advertise_url: str
    started_at: float  # epoch seconds: when this node last started
    renewed_at: float  # epoch seconds, by the database's clock: the last renewal
    lease_seconds: float  # how long a renewal holds
    keys_hash: str  # a hash over its API keys' hashes (never the keys)
    status: str  # JSON: its GPUs and held jobs, as of the last renewal
    lease_age: float  # seconds since the last renewal, by the same clock as renewed_at

    @property
    def live(self) -> bool:
        """Whether its lease still holds."""
        return self.lease_age <= self.lease_seconds


class NodeRows(Protocol):
    """The fleet's nodes and their leases. Every time is the database's (PostgreSQL's clock, or
    this host's for SQLite, a fleet of one): the hosts' clocks never decide who is live."""

    def renew(self, name: str, advertise_url: str, lease_seconds: float, keys_hash: str,
              status: str, first: bool = False) -> bool:
        """Write this node's row with its lease renewed now (added if new); `first`: the node
        has just started (its started_at is now). Whether another node took jobs from it
        (JobRows.take_over) since its last renewal: it then lets them go."""

    def all(self) -> list[NodeRow]:
        """Every node ever seen, by name, each with its lease age now."""

    def leave(self, name: str) -> None:
        """A clean stop: the node's lease ends now (its row stays, shown not live); its jobs
        are taken over only one lease later (JobRows.stranded): a restart finds them as it
        left them."""


class WholeRows(Protocol):
    """A whole store at once, for `cylindria db copy`: read kind by kind (the kinds of
    cylindria.storage.records.WHOLE, rows in their columns' order as records.portable gives them),
    written in one transaction."""

    def contents(self) -> Contents:
        """How many rows of each kind the store holds."""

    def read(self, kind: str, batch: int = 500) -> Iterator[list[tuple]]:
        """Every row of a kind (the meta rows without the schema version), in batches."""

    def write(self, batches: Iterable[tuple[str, list[tuple]]], merge: bool) -> None:
        """Write every batch of (kind, rows) in one transaction: all of them, or nothing if
        one fails or the iterable raises. Without `merge`, the jobs keep their seq (the held
        queue's order and the list cursors stay) and meta values replace the store's; with
        it, jobs are numbered after the store's own, in the order given, and meta keys the
        store has stay as they are. Files and uses already there are left as they are;
        retention counters are added to the store's."""


class Meta(Protocol):
    """Settings kept with the data."""

    def get(self, key: str, default: str) -> str:
        """The stored value, written with `default` the first time it is asked for (added
        only if absent: callers racing to be first all read the one value that was added)."""


class Storage(Protocol):
    """One store of record: open from `storage.open_storage`, closed once at the end."""

    jobs: JobRows
    assets: AssetRows
    outbox: OutboxRows
    meta: Meta
    whole: WholeRows
    nodes: NodeRows
    name: str  # what logs and errors call it (a URL without its password, or a path)

    def ping(self) -> bool:
        """Whether the database answers now (for /ready)."""

    def cancel_listener(self, name: str) -> CancelListener | None:
        """A listener for cancels other nodes ask of this one (`name`: this node, as the
        database's session list shows it); None where no other node writes (SQLite)."""

    def close(self) -> None:
        """Close every connection."""


class Health:
    """Whether a backend's last call reached its database: an outage is logged once when
    it starts and once when it ends, however many calls meet it (threads then go on quietly)."""

    def __init__(self, name: str):
        self.name = name
        self._lock = threading.Lock()
        self._down = False

    @property
    def down(self) -> bool:
        """Whether the last call failed to reach the database (an outage is under way)."""
        return self._down

    def failed(self, exc: BaseException) -> StorageUnavailable:
        """Note a failed call; the StorageUnavailable to raise from it."""
        with self._lock:
            first, self._down = not self._down, True
        if first:
            logger.warning("database %s unavailable: %s", self.name, _one_line(exc))
        return StorageUnavailable(f"database {self.name} unavailable: {_one_line(exc)}")

    def succeeded(self) -> None:
        """Note a call that reached the database."""
        if self._down:
            with self._lock:
                was, self._down = self._down, False
            if was:
                logger.warning("database %s reachable again", self.name)


def guarded_by(errors):
    """A decorator for a backend's methods: its driver's `errors` (a lost connection, a lock
    waited for too long) become StorageUnavailable, noted in the object's `_health`."""
    def decorate(method):
        @functools.wraps(method)
        def guarded(self, *args, **kwargs):
            try:
                result = method(self, *args, **kwargs)
            except errors as exc:
                raise self._health.failed(exc) from exc
            self._health.succeeded()
            return result
        return guarded
    return decorate


def _one_line(exc: BaseException) -> str:
    """An exception's message on one line."""
    return " ".join(str(exc).split()) or type(exc).__name__
