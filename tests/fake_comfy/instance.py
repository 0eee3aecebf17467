"""One fake "ComfyUI process": its queue, worker, sockets and listening socket."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from .catalogue import Catalogue
from .executor import Executor
from .files import FileStore
from .hub import Hub
from .knobs import Knobs, Recorder
from .prompt_queue import PromptQueue
from .server import create_app

logger = logging.getLogger(__name__)


class Instance:
    """Lives on the fake's event loop from start() until kill(); never reused after that."""

    def __init__(self, knobs: Knobs, recorder: Recorder, files: FileStore, catalogue: Catalogue,
                 history: dict | None = None, number: int = 0) -> None:
        self.knobs, self.recorder, self.files, self.catalogue = knobs, recorder, files, catalogue
        self.hub = Hub(knobs)
        self.queue = PromptQueue(self.hub.emit_status, history)
        self.hub.status_source = self.queue.remaining
        self.executor = Executor(self.queue, self.hub, files, knobs, catalogue, recorder)
        self.number = number
        self.port = 0
        # ComfyUI answers HTTP on one event loop: with knobs.costs set, costed requests take
        # this lock for their handler + cost, so one instance serves one at a time (server.py).
        self.http_lock = asyncio.Lock()
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._tasks: list[asyncio.Task] = []

    async def start(self, host: str, port: int) -> int:
        """Listen (port 0 picks one), start the publisher and the worker; return the port."""
        # handler_cancellation: a handler whose connection we abort must not finish its work.
        self._runner = web.AppRunner(create_app(self), handle_signals=False, access_log=None,
                                     handler_cancellation=True, shutdown_timeout=0.5)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, host, port)
        try:
            await self._site.start()
        except OSError:
            await self._runner.cleanup()  # e.g. port taken: leave nothing behind
            raise
        self.port = self._site.port
        self._tasks = [asyncio.create_task(self.hub.publish_forever(), name="fake-comfy-publish"),
                       asyncio.create_task(self.executor.loop(), name="fake-comfy-worker")]
        return self.port

    async def kill(self) -> None:
        """Like SIGKILL: stop listening, drop every connection without a close frame."""
        for task in self._tasks:
            task.cancel()
        if self._site is not None and self._site in self._runner.sites:
            await self._site.stop()
        if self._runner is not None and self._runner.server is not None:
            for handler in self._runner.server.connections:
                if handler.transport is not None:
                    handler.transport.abort()
        self.hub.abort_all()
        if self._tasks:
            _, stuck = await asyncio.wait(self._tasks, timeout=2.0)
            for task in stuck:
                logger.error("fake ComfyUI task %s ignored cancellation", task.get_name())
        if self._runner is not None:
            await self._runner.cleanup()
