"""Webhooks as one part of a running Cylindria: the outbox fed by the job store, its sender,
the signing secret, and the address check a submission's webhook must pass."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from comfy.jobs.job import Job
from comfy.jobs.store import JobStore
from cylindria.storage import Meta, OutboxRows
from cylindria.webhooks.address import Target, check_webhook, comfy_endpoints
from cylindria.webhooks.host import HostAddresses
from cylindria.webhooks.outbox import Outbox
from cylindria.webhooks.secret import WebhookSecret, load_secret
from cylindria.webhooks.sender import WebhookSender


class Webhooks:
    """What the app holds: built with the store (before any job changes), started with the
    server, stopped before the store closes."""

    def __init__(self, store: JobStore, rows: OutboxRows, render: Callable[[Job], dict], *,
                 data_dir: Path, secret_file: Path | None, comfy_base_url: str, gpus: int,
                 allow_private: bool, delays: tuple, give_up_after: float,
                 fleet: Meta | None = None):
        self.secret: WebhookSecret = load_secret(data_dir, secret_file, fleet)
        self.allow_private = allow_private
        self.comfy = comfy_endpoints(comfy_base_url, gpus)
        self.host = HostAddresses()  # read at the first check, not at start
        self.outbox = Outbox(rows, render, node=store.node)
        store.commit_with(self.outbox.rows_for)
        store.observe(self.outbox.observed)
        self.sender = WebhookSender(self.outbox, self.secret.secret, allow_private=allow_private,
                                    comfy=self.comfy, local=self.host.current, delays=delays,
                                    give_up_after=give_up_after)

    def check(self, url: str) -> Target:
        """A submission's webhook, checked (InvalidWebhook if Cylindria will not call it)."""
        return check_webhook(url, allow_private=self.allow_private, comfy=self.comfy,
                             local=self.host.current(), resolve=self.sender.resolve)

    def resolve_with(self, resolve) -> None:
        """Resolve host names with `resolve(host, port) -> [ip]` (tests: never a DNS query)."""
        self.sender.resolve = resolve

    def start(self) -> None:
        self.sender.start()

    def stop(self, timeout: float = 1.0) -> None:
        self.sender.stop(timeout)

    def close(self) -> None:
        """Stop sending (the outbox's rows close with the storage)."""
        self.sender.stop(0.1)
