"""Baselines served by the contract's own stack (Flask under waitress, requests to ComfyUI).

python -m bench.minimal --port P --threads 16 [--comfy http://127.0.0.1:8188]

- GET /jobstatus/<id>: a constant 300-byte JSON; the /jobstatus throughput baseline.
- PUT /startjob/<id>?GpuId=n and GET /serverstatus?GpuId=n (with --comfy): a pass-through
  proxy doing nothing but forwarding (no auth, no store, no tracking, no logging): the
  "stack floor", what Flask + waitress + requests cost by themselves in front of ComfyUI.
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from urllib.parse import urlsplit, urlunsplit

import requests
from flask import Flask, Response, request
from waitress import serve

SIZE = 300


def constant_body(size: int = SIZE) -> bytes:
    """A JSON object of exactly `size` bytes, shaped like a small job status."""
    base = {"job_id": "job", "status": "completed", "padding": ""}
    pad = size - len(json.dumps(base, separators=(",", ":")))
    base["padding"] = "x" * pad
    body = json.dumps(base, separators=(",", ":")).encode("ascii")
    assert len(body) == size
    return body


class Forwarder:
    """requests to GPU n's ComfyUI, one Session per thread, as Cylindria's client does."""

    def __init__(self, base_url: str):
        self.base = urlsplit(base_url)
        self.local = threading.local()
        self.stats: dict[int, tuple[float, bytes]] = {}
        self.stats_lock = threading.Lock()

    def url(self, gpu: int, path: str) -> str:
        netloc = f"{self.base.hostname}:{self.base.port + gpu}"
        return urlunsplit((self.base.scheme, netloc, path, "", ""))

    def session(self) -> requests.Session:
        session = getattr(self.local, "session", None)
        if session is None:
            session = self.local.session = requests.Session()
            session.trust_env = False
        return session

    def system_stats(self, gpu: int) -> bytes:
        """At most once a second per GPU, as the contract asks of Cylindria."""
        with self.stats_lock:
            at, body = self.stats.get(gpu, (float("-inf"), b"null"))
            if time.monotonic() - at >= 1.0:
                body = self.session().get(self.url(gpu, "/system_stats"), timeout=(2, 10)).content
                self.stats[gpu] = (time.monotonic(), body)
            return body


def create_app(comfy_url: str | None = None) -> Flask:
    """The constant /jobstatus, /health, and the pass-through routes when comfy_url is given."""
    app = Flask("minimal")
    body = constant_body()

    @app.get("/jobstatus/<job_id>")
    def jobstatus(job_id):
        return Response(body, mimetype="application/json")

    @app.get("/health")
    def health():
        return Response(b'{"status":"ok"}', mimetype="application/json")

    if comfy_url:
        forward = Forwarder(comfy_url)

        @app.put("/startjob/<job_id>")
        def startjob(job_id):
            gpu = int(request.args.get("GpuId", 0))
            payload = {"prompt": json.loads(request.get_data()), "client_id": "floor"}
            answer = forward.session().post(forward.url(gpu, "/prompt"), json=payload,
                                            timeout=(2, 60))
            return Response(answer.content, status=201 if answer.ok else 502,
                            mimetype="application/json")

        @app.get("/serverstatus")
        def serverstatus():
            gpu = int(request.args.get("GpuId", 0))
            queue = forward.session().get(forward.url(gpu, "/queue"), timeout=(2, 2)).content
            stats = forward.system_stats(gpu)
            return Response(b'{"queue":' + queue + b',"system":' + stats + b"}",
                            mimetype="application/json")

    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.minimal")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--comfy", default=None,
                        help="GPU 0's ComfyUI, for the pass-through routes")
    parser.add_argument("--name-threads", action="store_true",
                        help="OS thread names for per-thread CPU (bench.profile threads)")
    args = parser.parse_args(argv)
    if args.name_threads:
        from bench.threadnames import name_threads
        name_threads()
    serve(create_app(args.comfy), host="127.0.0.1", port=args.port, threads=args.threads,
          ident="minimal")
    return 0


if __name__ == "__main__":
    sys.exit(main())
