"""Cylindria's core, built from its settings: the job store, the GPUs, the assets, the
webhooks, and the threads that dispatch, track and sweep (none started yet)."""
from __future__ import annotations

import secrets

from comfy.inputs.assets import AssetStore
from comfy.dispatch.dispatcher import Dispatcher
from comfy.comfyui.gpu import build_gpus
from comfy.comfyui.models import ModelCatalogue
from comfy.jobs.retention import RetentionSweep
from comfy.jobs.store import JobStore
from comfy.tracking.tracker import Tracker
from comfy.jobs.watch import JobWatch
from comfy.jobs.withheld import WithheldSecrets
from cylindria.config.options import Config, ConfigError, stream_limit, stream_share
from cylindria.storage import SchemaTooNew, StorageUnavailable, open_storage
from cylindria.web import auth
from cylindria.web.context import Context
from cylindria.web.streams import StreamSlots
from cylindria.web.views import job_view
from cylindria.webhooks.secret import BadSecret
from cylindria.webhooks.wiring import Webhooks

ASSETS_DIR = "assets"
MIB = 1024 * 1024


def build_context(config: Config) -> Context:
    """Everything the HTTP surface and the threads share; starts no thread and opens no
    socket. A setting that cannot be used raises ConfigError with nothing left open."""
    try:  # first: a bad key entry stops the start before anything is opened
        keys = auth.resolve_keys(config.api_keys, config.no_auth, config.data_dir)
    except auth.BadKeyEntry as exc:
        raise ConfigError(f"API keys: {exc}") from None
    try:
        storage = open_storage(config)
    except (SchemaTooNew, StorageUnavailable) as exc:
        raise ConfigError(str(exc)) from None
    try:
        store = JobStore(storage.jobs)
        instance_id = storage.meta.get("instance_id", secrets.token_hex(4))
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
                            delays=config.webhook_delays, give_up_after=config.webhook_give_up)
    except BadSecret as exc:
        storage.close()
        raise ConfigError(str(exc)) from None
    dispatcher = Dispatcher(gpus, store, depth=config.gpu_queue_depth,
                            requeue_wait=config.requeue_wait, tick=config.poll_interval,
                            assets=assets, secrets=withheld, max_attempts=config.max_attempts)
    tracker = Tracker(gpus, store, config.poll_interval, websocket=config.websocket,
                      max_attempts=config.max_attempts, after_check=dispatcher.wake)
    dispatcher.ready = tracker.reconciled
    retention = RetentionSweep(store, storage.jobs, config.retention, assets=assets)
    return Context(config, store, gpus, tracker, keys, retention, dispatcher, JobWatch(store),
                   StreamSlots(stream_limit(config), stream_share(config)), assets, withheld,
                   webhooks, ModelCatalogue(gpus), storage=storage)
