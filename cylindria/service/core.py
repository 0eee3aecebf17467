"""Cylindria's core, built from its settings: the job store, the GPUs, the assets, the
webhooks, and the threads that dispatch, track and sweep (none started yet). It knows
nothing of HTTP: the web layer (cylindria/web/) is built over it."""
from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from comfy.comfyui.gpu import Gpu, build_gpus
from comfy.comfyui.models import ModelCatalogue
from comfy.comfyui.outputs import OutputSizes
from comfy.dispatch.dispatcher import Dispatcher
from comfy.inputs.assets import AssetStore
from comfy.jobs.progress import ProgressWriter
from comfy.jobs.retention import RetentionSweep
from comfy.jobs.store import JobStore
from comfy.jobs.view import job_view
from comfy.jobs.watch import JobWatch
from comfy.jobs.withheld import WithheldSecrets
from comfy.tracking.tracker import Tracker
from cylindria.config.options import Config, ConfigError, advertise_url
from cylindria.fleet.credential import load_credential
from cylindria.fleet.membership import Membership
from cylindria.fleet.notices import CancelNotices
from cylindria.fleet.peers import Peers
from cylindria.fleet.takeover import Takeover
from cylindria.storage import ASSETS_DIR, SchemaTooNew, Storage, StorageUnavailable, open_storage
from cylindria.webhooks.secret import BadSecret
from cylindria.webhooks.wiring import Webhooks

MIB = 1024 * 1024


@dataclass
class Core:
    """What the HTTP surface and the threads share; the web layer keeps its own state beside it."""

    config: Config
    store: JobStore
    gpus: list[Gpu]
    tracker: Tracker
    retention: RetentionSweep
    dispatcher: Dispatcher
    watch: JobWatch
    assets: AssetStore
    secrets: WithheldSecrets
    webhooks: Webhooks
    models: ModelCatalogue
    output_sizes: OutputSizes = field(default_factory=OutputSizes)
    storage: Storage | None = None  # the store of record the stores above write to
    membership: Membership | None = None  # this node's lease in the fleet
    cancels: CancelNotices | None = None  # cancels other nodes ask of this one (PostgreSQL)
    peers: Peers | None = None  # the other nodes, called with the fleet credential
    takeover: Takeover | None = None  # failover: stranded nodes' jobs, this one's (PostgreSQL)
    progress: ProgressWriter | None = None  # running jobs' progress to their rows

    def start_threads(self) -> None:
        """Start writing progress, tracking, dispatching, sweeping and sending webhooks."""
        if self.progress is not None:
            self.progress.start()
        self.tracker.start()
        self.dispatcher.start()
        self.retention.start()
        self.webhooks.start()

    def start_fleet(self, keys_hash: str) -> None:
        """Take part in the fleet: the lease, the cancels asked by other nodes, failover."""
        self.membership.start(keys_hash)
        if self.cancels is not None:
            self.cancels.start()
        if self.takeover is not None:
            self.takeover.start()

    def stop_fleet(self, timeout: float) -> None:
        """Leave the fleet: stop hearing cancels and taking over, end the lease (before the
        storage closes)."""
        if self.cancels is not None:
            self.cancels.stop(timeout)
        if self.takeover is not None:
            self.takeover.stop(timeout)
        if self.membership is not None:
            self.membership.stop(timeout)

    def close(self) -> None:
        """Stop dispatching, tracking, the retention sweep and the lease, then close the storage."""
        self.watch.close()
        self.dispatcher.stop()
        self.tracker.stop()
        if self.progress is not None:  # after the tracker: no progress comes any more
            self.progress.stop()
        self.retention.stop()
        self.webhooks.close()
        self.stop_fleet(0.1)
        if self.storage is not None:
            self.storage.close()


def build_core(config: Config) -> Core:
    """The core; starts no thread and opens no socket. A setting that cannot be used raises
    ConfigError with nothing left open."""
    try:
        storage = open_storage(config)
    except (SchemaTooNew, StorageUnavailable) as exc:
        raise ConfigError(str(exc)) from None
    try:
        store = JobStore(storage.jobs, config.node)
        instance_id = storage.meta.get("instance_id", secrets.token_hex(4))
        peers = Peers(storage.nodes, load_credential(storage.meta))
    except StorageUnavailable as exc:
        storage.close()
        raise ConfigError(str(exc)) from None
    gpus = build_gpus(config.comfy_base_url, config.gpus, instance_id)
    assets = AssetStore(config.data_dir / ASSETS_DIR, storage.assets, config.max_asset_mb * MIB)
    withheld = WithheldSecrets(store)
    try:
        webhooks = Webhooks(store, storage.outbox, job_view,
                            data_dir=config.data_dir, secret_file=config.webhook_secret_file,
                            comfy_base_url=config.comfy_base_url, gpus=config.gpus,
                            allow_private=config.webhook_allow_private,
                            delays=config.webhook_delays, give_up_after=config.webhook_give_up,
                            fleet=storage.meta if storage.jobs.shared else None)
    except (BadSecret, StorageUnavailable) as exc:
        storage.close()
        raise ConfigError(str(exc)) from None
    dispatcher = Dispatcher(gpus, store, depth=config.gpu_queue_depth,
                            requeue_wait=config.requeue_wait, tick=config.poll_interval,
                            assets=assets, secrets=withheld, max_attempts=config.max_attempts)
    tracker = Tracker(gpus, store, config.poll_interval, websocket=config.websocket,
                      max_attempts=config.max_attempts, after_check=dispatcher.wake,
                      on_room=dispatcher.wake)
    dispatcher.ready = tracker.reconciled
    retention = RetentionSweep(store, storage.jobs, config.retention, assets=assets)
    # Failover on the fleet's database only: one host's file has no other node to take over.
    takeover = Takeover(storage.jobs, store, gpus, requeue_wait=config.requeue_wait,
                        max_attempts=config.max_attempts, wake_sender=webhooks.outbox.wake.set) \
        if storage.jobs.shared else None
    membership = Membership(storage.nodes, config.node, advertise_url(config), config.node_lease,
                            gpus, store, on_taken_over=takeover and takeover.taken_over)
    listener = storage.cancel_listener(config.node)
    cancels = CancelNotices(listener, store, gpus) if listener is not None else None
    return Core(config, store, gpus, tracker, retention, dispatcher, JobWatch(store), assets,
                withheld, webhooks, ModelCatalogue(gpus), storage=storage, membership=membership,
                cancels=cancels, peers=peers, takeover=takeover, progress=ProgressWriter(store))
