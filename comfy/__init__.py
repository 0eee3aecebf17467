"""Everything that talks to or tracks ComfyUI, in folders named for what they hold:
- comfyui/: one ComfyUI as Cylindria talks to it: HTTP, websocket, its /queue, /object_info, model files, outputs;
- jobs/: the job record and its store, watchers, retention, the contract's view of a job;
- tracking/: keeping each job's status true: websocket events, /queue polls, reconciliation, outcomes;
- dispatch/: Cylindria's own queue (held jobs) and sending jobs to a GPU or cancelling them;
- inputs/: what a workflow brings: the workflow, its assets and file inputs, and their placing on a GPU;
- encoding.py: JSON on the hot paths (orjson); private.py: the data dir and the files written private to the service's user.
"""
