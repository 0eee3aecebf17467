"""Everything that talks to or tracks ComfyUI: HTTP client, websocket listener, poller, job store."""
