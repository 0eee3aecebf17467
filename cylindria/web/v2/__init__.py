"""The Comfy API v2 (`/api/v2`): the contract of Comfy Cloud and comfy-api-proxy, spoken by
the official comfy-sdk, as a thin translation over Cylindria's own core: a v2 job is a
GpuId=auto job of the same store and dispatcher, a v2 asset one of the same asset store.

- jobs.py: submit (Idempotency-Key), list, get, workflow, cancel, events (SSE)
- assets.py: upload, from-hash, by-hash, get, content (Range), delete; outputs as assets
- shapes.py: Cylindria's records in v2's shapes (statuses mapped there)
- errors.py: v2's error envelope and codes
"""
from __future__ import annotations

from flask import Flask, jsonify

from cylindria.web.errors import register_shape
from cylindria.web.v2 import assets, jobs
from cylindria.web.v2.errors import envelope
from cylindria.web.v2.shapes import PREFIX


def health():
    """GET /api/v2/health: the process answers (no key; ComfyUI is not asked)."""
    return jsonify({"status": "ok"})


def init_app(app: Flask) -> None:
    """Mount the v2 surface under /api/v2, its errors in v2's envelope."""
    register_shape(PREFIX, envelope)
    app.url_map.converters.update(assets.CONVERTERS)
    app.register_blueprint(jobs.bp, url_prefix=PREFIX)
    app.register_blueprint(assets.bp, url_prefix=PREFIX)
    app.add_url_rule(f"{PREFIX}/health", "v2_health", health)
