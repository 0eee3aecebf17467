"""The state one Cylindria app shares between requests and threads."""
from __future__ import annotations

from dataclasses import dataclass, field

from flask import current_app

from comfy.inputs.assets import AssetStore
from comfy.dispatch.dispatcher import Dispatcher
from comfy.comfyui.gpu import Gpu
from comfy.comfyui.models import ModelCatalogue
from comfy.comfyui.outputs import OutputSizes
from comfy.jobs.retention import RetentionSweep
from comfy.jobs.store import JobStore
from comfy.tracking.tracker import Tracker
from comfy.jobs.watch import JobWatch
from comfy.jobs.withheld import WithheldSecrets
from cylindria.config.options import Config
from cylindria.storage import Storage
from cylindria.web.auth import KeySetup
from cylindria.web.errors import error_response
from cylindria.webhooks.wiring import Webhooks


@dataclass
class Context:
    """Hangs off `app.extensions["cylindria"]`; never a module global."""

    config: Config
    store: JobStore
    gpus: list[Gpu]
    tracker: Tracker
    keys: KeySetup
    retention: RetentionSweep
    dispatcher: Dispatcher
    watch: JobWatch
    streams: "StreamSlots"
    assets: AssetStore
    secrets: WithheldSecrets
    webhooks: Webhooks
    models: ModelCatalogue
    output_sizes: OutputSizes = field(default_factory=OutputSizes)
    storage: Storage | None = None  # the store of record the stores above write to

    def close(self) -> None:
        """Stop dispatching, tracking and the retention sweep, then close the storage."""
        self.watch.close()
        self.dispatcher.stop()
        self.tracker.stop()
        self.retention.stop()
        self.webhooks.close()
        if self.storage is not None:
            self.storage.close()


def ctx() -> Context:
    """The current app's shared state (inside a request)."""
    return current_app.extensions["cylindria"]


START_WAIT = 30.0  # seconds a job request waits for start-up reconciliation before a 503


def wait_until_reconciled():
    """Blueprint hook: job state is answered only once it has been reconciled with ComfyUI."""
    if not ctx().tracker.wait_reconciled(START_WAIT):
        return error_response(503, "starting",
                              "Cylindria is reconciling its jobs with ComfyUI after a start; "
                              "try again shortly", headers={"Retry-After": "5"})
    return None
