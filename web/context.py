"""The state one Cylindria app shares between requests and threads."""
from __future__ import annotations

from dataclasses import dataclass

from flask import current_app

from comfy.gpu import Gpu
from comfy.store import JobStore
from comfy.tracker import Tracker
from web.auth import KeySetup
from web.config import Config


@dataclass
class Context:
    """Hangs off `app.extensions["cylindria"]`; never a module global."""

    config: Config
    store: JobStore
    gpus: list[Gpu]
    tracker: Tracker
    keys: KeySetup

    def close(self) -> None:
        """Stop tracking and close the store."""
        self.tracker.stop()
        self.store.close()


def ctx() -> Context:
    """The current app's shared state (inside a request)."""
    return current_app.extensions["cylindria"]
