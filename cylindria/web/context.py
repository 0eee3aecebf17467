"""The state one Cylindria app shares between requests and threads."""
from __future__ import annotations

from dataclasses import dataclass

from flask import current_app

from cylindria.config.options import Config, ConfigError, stream_limit, stream_share
from cylindria.web import auth
from cylindria.web.errors import error_response


@dataclass
class WebState:
    """The web layer's own state: the API keys, the event-stream slots."""

    keys: auth.KeySetup
    streams: "StreamSlots"  # noqa: F821 (cylindria/web/streams.py, which imports this module)


def build_web_state(config: Config) -> WebState:
    """The web layer's state from the settings; a bad key entry raises ConfigError."""
    from cylindria.web.streams import StreamSlots

    try:
        keys = auth.resolve_keys(config.api_keys, config.no_auth, config.data_dir)
    except auth.BadKeyEntry as exc:
        raise ConfigError(f"API keys: {exc}") from None
    return WebState(keys, StreamSlots(stream_limit(config), stream_share(config)))


class Context:
    """Hangs off `app.extensions["cylindria"]` (never a module global): the core
    (cylindria/service/core.py's Core: store, GPUs, tracker, dispatcher...) and the web
    layer's state beside it. The core's parts read as the context's own (`ctx().store`)."""

    def __init__(self, core, web: WebState):
        object.__setattr__(self, "core", core)
        object.__setattr__(self, "web", web)

    def __getattr__(self, name: str):
        if name in ("core", "web"):  # not set yet
            raise AttributeError(name)
        web = self.web
        if name in WebState.__dataclass_fields__:
            return getattr(web, name)
        return getattr(self.core, name)

    def __setattr__(self, name: str, value) -> None:
        """A part set on the context is set where it lives (tests replace parts)."""
        owner = self.web if name in WebState.__dataclass_fields__ else self.core
        setattr(owner, name, value)

    def close(self) -> None:
        """Close the core (its threads, then the storage)."""
        self.core.close()


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
