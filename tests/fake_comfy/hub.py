"""The /ws side: the sockets table, targeting rules, the publish queue and binary frames."""

from __future__ import annotations

import asyncio
import json
import logging
import struct
import uuid
from dataclasses import dataclass
from typing import Any

from aiohttp import WSMsgType, web

from .knobs import Knobs

logger = logging.getLogger(__name__)

PREVIEW_IMAGE = 1
PREVIEW_IMAGE_WITH_METADATA = 4
SERVER_FEATURES = {"supports_preview_metadata": True, "max_upload_size": 104857600}


def preview_frame(jpeg: bytes) -> bytes:
    """Payload of a type-1 frame: image type 1 (JPEG) + the image."""
    return struct.pack(">I", 1) + jpeg


def preview_with_metadata_frame(jpeg: bytes, metadata: dict) -> bytes:
    """Payload of a type-4 frame: JSON length + JSON metadata + the image."""
    meta = json.dumps(metadata).encode("utf-8")
    return struct.pack(">I", len(meta)) + meta + jpeg


@dataclass
class Connection:
    """One open socket (a replaced one stays open but is no longer in the table)."""

    sid: str
    ws: web.WebSocketResponse
    transport: asyncio.BaseTransport | None


class Hub:
    """Delivers messages in one FIFO, as ComfyUI's publish loop does, with its targeting."""

    def __init__(self, knobs: Knobs) -> None:
        self.knobs = knobs
        self.sockets: dict[str, web.WebSocketResponse] = {}
        self.flags: dict[str, dict] = {}
        self.connections: list[Connection] = []
        self.client_id: str | None = None  # client of the running prompt (reconnect replay)
        self.last_node_id: str | None = None
        self._outbox: asyncio.Queue = asyncio.Queue()
        self.status_source = lambda: 0  # queue_remaining, set by the instance

    def status_data(self) -> dict:
        """The `status` payload."""
        return {"status": {"exec_info": {"queue_remaining": self.status_source()}}}

    def emit(self, event: str | int, data: Any, sid: str | None = None) -> None:
        """Queue a message: sid None broadcasts, a sid not in the table drops it."""
        if not self.knobs.ws_silent:  # decided now, so a later un-silencing sends no backlog
            self._outbox.put_nowait((event, data, sid))

    def emit_status(self) -> None:
        """Broadcast `status` (ComfyUI's queue_updated)."""
        self.emit("status", self.status_data())

    def supports_preview_metadata(self, sid: str | None) -> bool:
        """Whether that client negotiated supports_preview_metadata (never for sid None)."""
        return bool(sid is not None and self.flags.get(sid, {}).get("supports_preview_metadata"))

    async def publish_forever(self) -> None:
        """Send queued messages in order, forever."""
        while True:
            event, data, sid = await self._outbox.get()
            await self._deliver(event, data, sid)

    async def _deliver(self, event: str | int, data: Any, sid: str | None) -> None:
        """Send one message to its targets."""
        if sid is None:
            targets = list(self.sockets.values())
        else:
            targets = [self.sockets[sid]] if sid in self.sockets else []
        for ws in targets:
            await self._send(ws, event, data)

    async def _send_direct(self, ws: web.WebSocketResponse, event: str, data: Any) -> None:
        """Greeting and feature_flags go straight to the socket, as in ComfyUI."""
        if not self.knobs.ws_silent:
            await self._send(ws, event, data)

    async def _send(self, ws: web.WebSocketResponse, event: str | int, data: Any) -> None:
        """One frame; a dead socket is only logged, like send_socket_catch_exception."""
        try:
            if isinstance(event, int):
                await ws.send_bytes(struct.pack(">I", event) + data)
            else:
                await ws.send_str(json.dumps({"type": event, "data": data}))
        except Exception as err:  # noqa: BLE001 - any send failure just drops the frame
            logger.debug("send error: %s", err)

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        """GET /ws: register, greet with status, negotiate feature flags, read until closed."""
        ws = web.WebSocketResponse()
        try:
            await ws.prepare(request)
        except ConnectionResetError:  # the client went during the handshake: nobody to serve
            logger.debug("websocket client gone during the handshake")
            return ws
        sid = request.query.get("clientId", "") or uuid.uuid4().hex
        self.sockets[sid] = ws  # a second socket with the same clientId replaces the first
        self.flags[sid] = {}
        connection = Connection(sid, ws, request.transport)
        self.connections.append(connection)
        try:
            await self._greet(ws, sid)
            await self._read(ws, sid)
        finally:
            # ComfyUI pops by sid, so an old socket closing also unregisters its replacement.
            self.sockets.pop(sid, None)
            self.flags.pop(sid, None)
            self.connections.remove(connection)
        return ws

    async def _greet(self, ws: web.WebSocketResponse, sid: str) -> None:
        """The status with sid, and `executing` when this client's prompt is running."""
        await self._send_direct(ws, "status", {**self.status_data(), "sid": sid})
        if self.client_id == sid and self.last_node_id is not None:
            await self._send_direct(ws, "executing", {"node": self.last_node_id})

    async def _read(self, ws: web.WebSocketResponse, sid: str) -> None:
        """Only a first text frame of type feature_flags means anything."""
        first = True
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            try:
                data = json.loads(msg.data)
                if first and data.get("type") == "feature_flags":
                    self.flags[sid] = data.get("data", {})
                    await self._send_direct(ws, "feature_flags", dict(SERVER_FEATURES))
                first = False
            except Exception as err:  # noqa: BLE001 - bad client frames are ignored
                logger.debug("ignored client frame from %s: %s", sid, err)

    def abort_all(self) -> None:
        """Drop every socket without a close frame, like a killed process."""
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.transport.abort()
