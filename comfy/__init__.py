"""Cylindria's core, with no HTTP of its own: each ComfyUI (client, websocket listener, poller,
reconciliation), the job store and its database, submitting exactly once and cancelling,
Cylindria's own queue (dispatcher), the assets placed in ComfyUI, and retention."""
