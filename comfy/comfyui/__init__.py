"""One ComfyUI as Cylindria talks to it: HTTP, websocket, its /queue, /object_info, model files, outputs."""
