"""Where a PUT /startjob's time goes, against the real-cost fake (issue 13).

python -m bench.profile                      # every part, core workflow
python -m bench.profile --workflow chain60   # the 60-node workflow
python -m bench.profile --part served --top 40

One GPU whose fake ComfyUI costs what ComfyUI costs (timings-real.json) and is held (prompts
queue, none runs), as in the bench's proxy group; one client, one request at a time.

- `phases` (in this process, no profiler): CPU per request of Cylindria's WSGI app with
  ComfyUI's answer canned (a client that answers at once), then with one piece after another
  taken away (the access log, the app's hooks, SQLite's two transactions, the parse); the
  same for the stack floor's app (bench.minimal); and the CPU of one POST /prompt to the fake through
  Cylindria's client and through the floor's `session.post(json=...)`. Time taken away
  from an app that still answers 201 is what that piece costs.
- `threads` (served, no profiler): CPU per request of every thread of a running Cylindria
  and of the floor (bench.serve / bench.minimal --name-threads, /proc/<pid>/task), and the
  client's p50 of each.
- `served` (cProfile inside a running Cylindria, bench.serve --profile): the request's
  steps, inclusive, in microseconds per request, and the functions that take the most time
  themselves. cProfile's own cost inflates Python-heavy steps (about 2x): read it for where,
  not for how much.
- `status` (in this process): the same for GET /jobstatus, the hot read path (the bench's
  jobstatus_throughput): CPU per request of Cylindria's WSGI app over a store of finished
  jobs, logging at INFO as served, then with one piece after another taken away (the access
  log, the app's hooks), and of bench.minimal's constant answer; then the request's steps
  under cProfile, inclusive, and the functions that take the most time themselves.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import pstats
import re
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from unittest import mock

import requests
from requests.models import complexjson

import bench.minimal
from cylindria.web import routes as web_routes
from bench import procs
from bench.core import JSON_HEADERS, step, wait_websockets
from bench.fakes import close_all, start_fakes
from bench.procs import LoadClient, key_headers
from bench.stats import median, percentile
from bench.store import fill, job_id
from comfy.comfyui.client import ComfyClient
from comfy.encoding import to_json
from comfy.inputs.workflow import parse_workflow
from cylindria.config.options import load_config
from cylindria.service.core import build_core
from cylindria.storage.sqlite import SqliteJobRows
from cylindria.service.logs import AccessLog, setup_logging
from tests import workflows
from tests.fake_comfy.costs import real_costs
from tests.helpers import API_KEY
from cylindria.web.app import create_app

WORKFLOWS = {"core": workflows.core, "chain60": lambda: workflows.chain(60)}
WARMUP = 100


# -- phases: in-process CPU, piece by piece -------------------------------------------------------

class CannedClient:
    """ComfyUI's answer to POST /prompt, at once (the payload is still encoded, as sent)."""

    def submit(self, payload: dict) -> dict:
        to_json(payload)
        return {"prompt_id": payload["prompt_id"], "number": 1, "node_errors": {}}


class StubSession:
    """The floor's requests.Session with an instant answer (json= is still encoded)."""

    content = b'{"prompt_id": "p", "number": 1, "node_errors": {}}'
    ok = True

    def post(self, url, json=None, timeout=None):
        complexjson.dumps(json).encode("utf-8")  # what requests does with json=
        return self


def phases(workflow: dict, calls: int, repeats: int) -> str:
    """The in-process table (module doc)."""
    body = json.dumps(workflow).encode()
    headers = {**key_headers(), **JSON_HEADERS}
    pipeline = setup_logging("INFO", console=False)  # records are made, queued and dropped

    def cylindria(access_log=True, hooks=True):
        config = load_config(["--comfy-base-url", "http://127.0.0.1:1", "--api-key", API_KEY,
                              "--data-dir", tempfile.mkdtemp()])
        app = create_app(build_core(config))
        app.extensions["cylindria"].gpus[0].client = CannedClient()
        if not hooks:
            app.before_request_funcs[None] = []  # the API key check
            app.after_request_funcs[None] = []  # the metrics
        return AccessLog(app) if access_log else app

    def cpu(make, request_headers=headers) -> float:
        return median([_cpu_per_request(make(), body, request_headers, calls)
                       for _ in range(repeats)])

    rows = [("Cylindria's app (access log, Flask, hooks, view, store)", cpu(cylindria))]
    rows.append(("  without the access log", cpu(lambda: cylindria(access_log=False))))
    rows.append(("  ... and without the app's hooks (API key, metrics)",
                 cpu(lambda: cylindria(access_log=False, hooks=False))))
    with mock.patch.object(SqliteJobRows, "insert", lambda self, job, wf: 1), \
            mock.patch.object(SqliteJobRows, "update", lambda self, job, events=(): True):
        rows.append(("  ... and without SQLite (insert + commit, update + commit)",
                     cpu(lambda: cylindria(access_log=False, hooks=False))))
        parsed = parse_workflow(body)
        with mock.patch.object(web_routes, "parse_workflow", lambda raw: parsed):
            rows.append(("  ... and without parse_workflow", cpu(
                lambda: cylindria(access_log=False, hooks=False))))
    with mock.patch.object(bench.minimal.Forwarder, "session", lambda self: StubSession()):
        rows.append(("the floor's app (Flask, json.loads, json= encoding)",
                     cpu(lambda: bench.minimal.create_app("http://127.0.0.1:1"), JSON_HEADERS)))
    pipeline.stop()
    rows += _client_cpu(workflow, calls)
    lines = [f"in-process CPU per request (median of {repeats} runs of {calls}; ComfyUI's answer "
             "canned in the apps)", "", f"{'':66} {'us':>6}"]
    lines += [f"{label:66} {seconds * 1e6:6.0f}" for label, seconds in rows]
    return "\n".join(lines)


def _cpu_per_request(app, body: bytes, headers: dict, calls: int) -> float:
    """Process CPU per PUT /startjob through a WSGI app, less building the environ."""
    from werkzeug.test import EnvironBuilder

    def environ():
        return EnvironBuilder(f"/startjob/{uuid.uuid4().hex}", method="PUT",
                              query_string="GpuId=0", headers=headers, data=body).get_environ()

    def call():
        answer = []
        chunks = app(environ(), lambda status, h, exc_info=None: answer.append(status))
        b"".join(chunks)
        getattr(chunks, "close", lambda: None)()
        if answer[0][:3] != "201":
            raise RuntimeError(f"the app answered {answer[0]}")

    for _ in range(min(calls, 200)):
        call()
    began = time.process_time()
    for _ in range(calls):
        call()
    spent = time.process_time() - began
    began = time.process_time()
    for _ in range(calls):
        environ()
    return (spent - (time.process_time() - began)) / calls


def _client_cpu(workflow: dict, calls: int) -> list[tuple[str, float]]:
    """This thread's CPU per POST /prompt to an instant fake: Cylindria's client, the floor's."""
    fake = start_fakes(1)[0]
    fake.hold = True
    try:
        client = ComfyClient(fake.url)
        session = requests.Session()
        session.trust_env = False

        def payload() -> dict:
            return {"prompt": workflow, "client_id": "c", "prompt_id": str(uuid.uuid4()),
                    "extra_data": {}}

        def ours():
            client.submit(payload())

        def floors():
            session.post(fake.url + "/prompt", json=payload(), timeout=(2, 60)).content

        rows = []
        for label, call in (("POST /prompt through Cylindria's client (thread CPU)", ours),
                            ("POST /prompt through the floor's session.post(json=)", floors)):
            for _ in range(min(calls, 200)):
                call()
            began = time.thread_time()
            for _ in range(calls):
                call()
            rows.append((label, (time.thread_time() - began) / calls))
        return rows
    finally:
        close_all([fake])


# -- threads: served CPU per thread ---------------------------------------------------------------

def threads(workflow: dict, requests: int) -> str:
    """CPU per request of each thread of a served Cylindria and of the floor (module doc)."""
    fake = start_fakes(1, costs=real_costs())[0]
    fake.hold = True
    work = Path(tempfile.mkdtemp(prefix="cylindria-threads-"))
    lines = [f"served, {requests} requests, one client: CPU per request by thread "
             "(/proc/<pid>/task)"]
    try:
        with LoadClient() as load:
            for name, server, headers in (
                    ("Cylindria", procs.cylindria(fake.url, work / "data",
                                                  serve_flags=("--name-threads",)),
                     {**key_headers(), **JSON_HEADERS}),
                    ("floor", procs.minimal_app(work, comfy_url=fake.url, name_threads=True),
                     JSON_HEADERS)):
                with server:
                    if name == "Cylindria":
                        wait_websockets(server)
                    job = _startjob_job(server.port, headers, workflow, requests)
                    load.run({**job, "count": WARMUP})
                    before = _thread_cpu(server.pid)
                    result = load.run(job)
                    after = _thread_cpu(server.pid)
                spent = {key: (after[key] - before.get(key, 0.0)) / requests for key in after}
                lines += ["", f"{name}: client p50 {percentile(result['latencies'], 50) * 1e3:.2f}"
                          f" ms, {sum(spent.values()) * 1e6:.0f} us of CPU per request"]
                lines += [f"  {key:26} {value * 1e6:6.0f} us" for key, value in
                          sorted(spent.items(), key=lambda item: -item[1]) if value > 0]
    finally:
        close_all([fake])
    return "\n".join(lines)


def _thread_cpu(pid: int) -> Counter:
    """Seconds of CPU (user + system) per thread name (numbered names pooled: waitress-N)."""
    tick = os.sysconf("SC_CLK_TCK")
    spent: Counter = Counter()
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{task}/stat").read_text()
        except OSError:
            continue  # ended meanwhile
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        name = "main (waitress's loop)" if int(task) == pid else re.sub(r"[-_]?\d+$", "-N", name)
        fields = stat[stat.rindex(")") + 2:].split()
        spent[name] += (int(fields[11]) + int(fields[12])) / tick
    return spent


def _startjob_job(port: int, headers: dict, workflow: dict, count: int) -> dict:
    """One client PUTting new jobs one at a time (a load-generator job)."""
    return {"threads": 1, "warmup": 0, "count": count, "duration": None, "choices": [],
            "templates": [[step("PUT", port, "/startjob/{uid}?GpuId=0", headers, workflow,
                                ok=(201,))]]}


# -- served: cProfile inside the server -----------------------------------------------------------

# The steps of a PUT /startjob, outermost first: (label, file suffix, function name, depth).
STEPS = (
    ("waitress: the request's work on its thread", "waitress/task.py", "service", 0),
    ("access log (wrapper; the line's record)", "cylindria/service/logs.py", "__call__", 1),
    ("Flask: wsgi_app (routing, hooks, view, answer)", "flask/app.py", "wsgi_app", 2),
    ("before_request: wait_until_reconciled", "cylindria/web/context.py", "wait_until_reconciled", 3),
    ("before_request: API key", "cylindria/web/auth.py", "require_key", 3),
    ("view: startjob", "cylindria/web/routes.py", "startjob", 3),
    ("parse_workflow (JSON, checks, fingerprint)", "comfy/inputs/workflow.py", "parse_workflow", 4),
    ("submit_job", "comfy/dispatch/submit.py", "submit_job", 4),
    ("store.reserve (SQLite: job + workflow)", "comfy/jobs/store.py", "reserve", 5),
    ("ComfyClient.submit (POST /prompt)", "comfy/comfyui/client.py", "submit", 5),
    ("of which waiting for the fake's answer", "~",
     "<method 'recv_into' of '_socket.socket' objects>", 6),
    ("accept (store.change: SQLite update)", "comfy/dispatch/submit.py", "accept", 5),
    ("accepted_view + jsonify", "flask/json/__init__.py", "jsonify", 4),
    ("after_request: metrics", "cylindria/web/metrics.py", "count", 3),
)


# -- status: GET /jobstatus, in-process -----------------------------------------------------------

STATUS_JOBS = 100  # finished jobs in the store; the request asks for each in turn

# The steps of a GET /jobstatus, outermost first (as STEPS).
STATUS_STEPS = (
    ("access log (wrapper)", "cylindria/service/logs.py", "__call__", 0),
    ("Flask: wsgi_app (routing, hooks, view, answer)", "flask/app.py", "wsgi_app", 1),
    ("request context (environ, URL adapter, match)", "flask/ctx.py", "push", 2),
    ("of which the URL adapter (host, bind)", "flask/app.py", "create_url_adapter", 3),
    ("of which matching the rule", "werkzeug/routing/map.py", "match", 3),
    ("before_request hooks (all)", "flask/app.py", "preprocess_request", 2),
    ("before_request: wait_until_reconciled", "cylindria/web/context.py", "wait_until_reconciled", 3),
    ("before_request: API key", "cylindria/web/auth.py", "require_key", 3),
    ("view: jobstatus", "cylindria/web/routes.py", "jobstatus", 2),
    ("wait_param", "cylindria/web/streams.py", "wait_param", 3),
    ("known_job (id check, store, visible)", "cylindria/web/lookup.py", "known_job", 3),
    ("job_view", "cylindria/web/views.py", "job_view", 3),
    ("after_request hooks (all)", "flask/app.py", "process_response", 2),
    ("after_request: metrics", "cylindria/web/metrics.py", "count", 3),
    ("the answer to WSGI (headers, start_response)", "werkzeug/wrappers/response.py",
     "__call__", 2),
    ("request context pop", "flask/ctx.py", "pop", 2),
)


def status(calls: int, repeats: int, top: int) -> str:
    """The GET /jobstatus table and profile (module doc)."""
    data = fill(Path(tempfile.mkdtemp(prefix="cylindria-status-")) / "data", STATUS_JOBS)
    pipeline = setup_logging("INFO", console=False)  # as served: the access log is on
    built = []

    def cylindria(access_log=True, hooks=True):
        config = load_config(["--comfy-base-url", "http://127.0.0.1:1", "--api-key", API_KEY,
                              "--data-dir", str(data)])
        app = create_app(build_core(config))
        built.append(app.extensions["cylindria"])
        if not hooks:
            app.before_request_funcs.clear()  # the API key check, wait_until_reconciled
            app.after_request_funcs.clear()  # the metrics
        return AccessLog(app) if access_log else app

    def cpu(make, headers=key_headers()) -> float:
        return median([_status_cpu(make(), headers, calls) for _ in range(repeats)])

    try:
        rows = [("Cylindria's app (access log, Flask, hooks, view)", cpu(cylindria)),
                ("  without the access log", cpu(lambda: cylindria(access_log=False))),
                ("  ... and without the app's hooks (API key, reconciled, metrics)",
                 cpu(lambda: cylindria(access_log=False, hooks=False))),
                ("bench.minimal's app (a constant 300-byte answer)",
                 cpu(bench.minimal.create_app, {}))]
        lines = [f"GET /jobstatus, in-process CPU per request (median of {repeats} runs of "
                 f"{calls}; {STATUS_JOBS} finished jobs)", "", f"{'':66} {'us':>6}"]
        lines += [f"{label:66} {seconds * 1e6:6.0f}" for label, seconds in rows]
        lines += ["", _status_profile(cylindria(), calls, top)]
    finally:
        for context in built:
            context.close()
        pipeline.stop()
    return "\n".join(lines)


def _status_environ(path: str, headers: dict) -> dict:
    """A GET's WSGI environ as waitress builds it (werkzeug's EnvironBuilder costs more than
    the request)."""
    environ = {"REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "PATH_INFO": path, "QUERY_STRING": "",
               "SERVER_NAME": procs.HOST, "SERVER_PORT": "8000", "SERVER_PROTOCOL": "HTTP/1.1",
               "REMOTE_ADDR": procs.HOST, "REMOTE_PORT": "50000", "HTTP_HOST": f"{procs.HOST}:8000",
               "wsgi.version": (1, 0), "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(),
               "wsgi.errors": sys.stderr, "wsgi.multithread": True, "wsgi.multiprocess": False,
               "wsgi.run_once": False}
    environ.update(("HTTP_" + name.upper().replace("-", "_"), value)
                   for name, value in headers.items())
    return environ


def _status_calls(app, headers: dict, calls: int):
    """A function making `calls` GET /jobstatus through `app`, as a server would."""
    paths = [f"/jobstatus/{job_id(n % STATUS_JOBS)}" for n in range(calls)]

    def run():
        for path in paths:
            answer = []
            chunks = app(_status_environ(path, headers),
                         lambda status, h, exc_info=None: answer.append(status))
            b"".join(chunks)
            getattr(chunks, "close", lambda: None)()
            if answer[0][:3] != "200":
                raise RuntimeError(f"the app answered {answer[0]}")
    return run


def _status_cpu(app, headers: dict, calls: int) -> float:
    """Process CPU per GET /jobstatus through a WSGI app, less building the environ."""
    _status_calls(app, headers, min(calls, 200))()
    run = _status_calls(app, headers, calls)
    began = time.process_time()
    run()
    spent = time.process_time() - began
    began = time.process_time()
    for n in range(calls):
        _status_environ(f"/jobstatus/{job_id(n % STATUS_JOBS)}", headers)
    return (spent - (time.process_time() - began)) / calls


def _status_profile(app, calls: int, top: int) -> str:
    """The steps of `calls` GET /jobstatus under cProfile, and the costliest functions."""
    import cProfile
    run = _status_calls(app, key_headers(), calls)
    run()  # warm: the first calls build caches
    profiler = cProfile.Profile()
    profiler.runcall(run)
    return _steps_report(pstats.Stats(profiler), STATUS_STEPS, calls, top,
                         f"profiled (cProfile, in-process): {calls} requests; cProfile inflates "
                         "Python-heavy steps (about 2x)")


def served(workflow: dict, requests: int, out: Path, top: int) -> str:
    """Profile a served Cylindria under one client; the report as text."""
    fake = start_fakes(1, costs=real_costs())[0]
    fake.hold = True
    work = Path(tempfile.mkdtemp(prefix="cylindria-profile-"))
    server = procs.cylindria(fake.url, work / "data", serve_flags=("--profile", str(out)))
    try:
        with LoadClient() as load, server:
            wait_websockets(server)
            job = _startjob_job(server.port, {**key_headers(), **JSON_HEADERS}, workflow,
                                requests)
            load.run({**job, "count": WARMUP})
            result = load.run(job)
    finally:
        close_all([fake])  # the server stopped first (SIGTERM): its profile is written
    calls = requests + WARMUP
    return _steps_report(pstats.Stats(str(out)), STEPS, calls, top,
                         f"served, profiled (cProfile): {calls} requests, client p50 "
                         f"{percentile(result['latencies'], 50) * 1000:.2f} ms under the profiler")


def _steps_report(stats: pstats.Stats, steps: tuple, calls: int, top: int, title: str) -> str:
    """The steps' inclusive time per request, then the functions that take the most time
    themselves."""
    lines = [title, "", f"{'step (inclusive)':58} {'us/request':>10}"]
    for label, path, name, depth in steps:
        seconds = _inclusive(stats, path, name)
        if seconds is not None:
            lines.append(f"{'  ' * depth + label:58} {seconds / calls * 1e6:10.0f}")
    text = io.StringIO()
    stats.stream = text
    stats.sort_stats("tottime").print_stats(top)
    return "\n".join(lines) + "\n\nmost time in the function itself:\n" + _trim(text.getvalue())


def _inclusive(stats: pstats.Stats, path: str, name: str) -> float | None:
    """Cumulative seconds of the functions named `name` in files ending with `path`."""
    found = [ct for (file, _, func), (_, _, _, ct, _) in stats.stats.items()
             if func == name and file.endswith(path)]
    return sum(found) if found else None


def _trim(report: str) -> str:
    """pstats' table without its preamble, paths from site-packages or the repo shortened."""
    body = report[report.find("   ncalls"):]
    body = body.replace(str(procs.ROOT) + "/", "")
    return re.sub(r"/\S*/site-packages/|/\S*/lib/python3\.\d+/", "", body)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workflow", choices=sorted(WORKFLOWS), default="core")
    parser.add_argument("--part", choices=("phases", "threads", "served", "status", "all"),
                        default="all")
    parser.add_argument("--requests", type=int, default=2000, help="requests (threads, served)")
    parser.add_argument("--calls", type=int, default=2000, help="calls per run (phases)")
    parser.add_argument("--repeats", type=int, default=5, help="runs per row (phases)")
    parser.add_argument("--top", type=int, default=25, help="functions listed (served)")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) /
                        "cylindria-startjob.prof", help="the served profile (pstats)")
    args = parser.parse_args(argv)
    workflow = WORKFLOWS[args.workflow]()
    if args.part in ("phases", "all"):
        print(phases(workflow, args.calls, args.repeats), end="\n\n", flush=True)
    if args.part in ("threads", "all"):
        print(threads(workflow, args.requests), end="\n\n", flush=True)
    if args.part in ("served", "all"):
        print(served(workflow, args.requests, args.out, args.top))
        print(f"profile written to {args.out} (python -m pstats {args.out})")
    if args.part in ("status", "all"):
        print("\n" + status(args.calls, args.repeats, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
