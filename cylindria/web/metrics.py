"""Prometheus metrics: jobs by GPU and status, durations, GPU health, HTTP traffic."""
from __future__ import annotations

import threading
import time
from collections import Counter as Tally, deque

from flask import Blueprint, Flask, Response, current_app, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from werkzeug.exceptions import NotFound

from comfy.jobs.job import FINISHED, Job, JobStatus
from cylindria.fleet.view import RecentNodes
from cylindria.storage import StorageUnavailable
from cylindria.storage.records import NO_GPU
from cylindria.web.auth import ENVIRON_CLIENT, current_client

bp = Blueprint("meta", __name__)

DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, float("inf"))
MAX_CLIENT_LABELS = 1000
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
HELD_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, float("inf"))
WEBHOOK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 60, 600, 3600, 86400,
                   float("inf"))
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, float("inf"))
COUNT_EVERY = 256  # answered requests noted before they are counted (and at every scrape)


class StateCollector:
    """Figures read from the live state at scrape time, so they cannot drift from it."""

    def __init__(self, context):
        self.context = context

    def collect(self):
        """Jobs per GPU and status, and GPU health. The totals are counted as jobs are accepted
        and end, so they never go down; at start they resume from the jobs kept and those the
        retention sweep removed."""
        counts, retired = self.context.retention.counts()
        accepted, ended = self.context.store.totals()
        submitted = CounterMetricFamily("cylindria_jobs_submitted", "Jobs accepted, by the GPU "
                                        "asked for (none: GpuId=auto)", labels=["gpu"])
        finished = CounterMetricFamily("cylindria_jobs_finished", "Job ends, by GPU and status "
                                       "(a lost job found completed later counts under both)",
                                       labels=["gpu", "status"])
        current = GaugeMetricFamily("cylindria_jobs", "Jobs now in each status", labels=["gpu", "status"])
        removed = CounterMetricFamily("cylindria_jobs_removed",
                                      "Finished jobs removed after --retention, by GPU and status",
                                      labels=["gpu", "status"])
        # GPU "none": GpuId=auto jobs that were never sent (held, or cancelled while held);
        # and any GPU a job names that this start no longer has (--numberOfGpus lowered).
        named = {gpu for gpu, _ in counts} | {gpu for gpu, _ in ended} | set(accepted)
        indexes = sorted(named - {None} | {gpu.index for gpu in self.context.gpus})
        for index in indexes + [None]:
            label = NO_GPU if index is None else str(index)
            submitted.add_metric([label], accepted.get(index, 0))
            for status in JobStatus:
                current.add_metric([label, status.value], counts.get((index, status), 0))
                if status in FINISHED:
                    finished.add_metric([label, status.value], ended.get((index, status), 0))
                    removed.add_metric([label, status.value], retired.get((index, status), 0))
        yield from (submitted, finished, current, removed)
        yield from self._queue_families(counts)
        yield from self._gpu_families()
        yield from self._webhook_families()

    def _webhook_families(self):
        """Webhook deliveries since the start, and the events waiting in the outbox."""
        sender = self.context.webhooks.sender
        for name, text in (("delivered", "Webhook events delivered (a 2xx answer)"),
                           ("failed_attempts", "Webhook tries that failed (tried again later)"),
                           ("given_up", "Webhook events given up after a day of tries")):
            family = CounterMetricFamily(f"cylindria_webhook_{name}", text)
            family.add_metric([], sender.counts[name])
            yield family
        try:
            waiting = self.context.webhooks.outbox.depth()
        except StorageUnavailable:  # a scrape during an outage: the gauge is left out
            return
        depth = GaugeMetricFamily("cylindria_webhook_outbox_depth",
                                  "Webhook events not yet delivered nor given up")
        depth.add_metric([], waiting)
        yield depth

    def _queue_families(self, counts):
        """Cylindria's own queue: jobs held now, and the dispatcher's model-file choices."""
        held = GaugeMetricFamily("cylindria_jobs_held", "Jobs held in Cylindria's own queue")
        held.add_metric([], sum(n for (_, status), n in counts.items() if status == JobStatus.HELD))
        affinity = CounterMetricFamily(
            "cylindria_model_affinity", "Held jobs with model files sent to a GPU whose last job "
            "used the same files (hit) or not (miss: a model load)", labels=["result"])
        for result in ("hit", "miss"):
            affinity.add_metric([result], self.context.dispatcher.affinity_counts[result])
        yield from (held, affinity)

    def _gpu_families(self):
        """Queue length, reachability, websocket state and reconnects per GPU."""
        queue = GaugeMetricFamily("cylindria_queue_length", "Prompts in ComfyUI's queue (last poll)",
                                  labels=["gpu", "state"])
        reachable = GaugeMetricFamily("cylindria_gpu_reachable", "1 if the GPU's ComfyUI answers",
                                      labels=["gpu"])
        socket = GaugeMetricFamily("cylindria_websocket_connected", "1 while the websocket is open",
                                   labels=["gpu"])
        reconnects = CounterMetricFamily("cylindria_websocket_reconnects",
                                         "Websocket connections after the first", labels=["gpu"])
        listeners = {listener.gpu.index: listener for listener in self.context.tracker.listeners}
        for gpu in self.context.gpus:
            label = str(gpu.index)
            queue.add_metric([label, "running"], gpu.running)
            queue.add_metric([label, "pending"], gpu.pending)
            reachable.add_metric([label], 1 if gpu.reachable else 0)
            socket.add_metric([label], 1 if gpu.websocket_connected else 0)
            listener = listeners.get(gpu.index)
            reconnects.add_metric([label], max(0, listener.connects - 1) if listener else 0)
        yield from (queue, reachable, socket, reconnects)


class FleetCollector:
    """The fleet's live nodes and the jobs they hold, from the nodes' rows: read at a scrape,
    at most every CACHE_SECONDS however often the scrapes (cylindria/fleet/view.py)."""

    GAUGES = (("cylindria_fleet_live_nodes", "Nodes of the fleet whose lease holds (on SQLite: "
               "this one)"),
              ("cylindria_fleet_held_jobs", "Jobs held in Cylindria's queue, summed over the live "
               "nodes (as of their last lease renewal)"))

    def __init__(self, rows):
        self.nodes = RecentNodes(rows)

    def describe(self):
        """The gauges' names, without a read (the registry asks when the collector joins)."""
        return [GaugeMetricFamily(name, text) for name, text in self.GAUGES]

    def collect(self):
        """Both gauges; left out while the database cannot be read."""
        try:
            values = self.nodes.gauges()
        except StorageUnavailable:
            return
        for (name, text), value in zip(self.GAUGES, values):
            family = GaugeMetricFamily(name, text)
            family.add_metric([], value)
            yield family


class Metrics:
    """One registry per app (never the global one), with the event-driven metrics."""

    def __init__(self, context):
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(StateCollector(context))
        if context.storage is not None:
            self.registry.register(FleetCollector(context.storage.nodes))
        self.job_duration = Histogram(
            "cylindria_job_duration_seconds", "Submission to end of a job, by GPU and final status",
            ["gpu", "status"], buckets=DURATION_BUCKETS, registry=self.registry)
        self.requests = Counter("cylindria_http_requests", "HTTP requests by endpoint and status",
                                ["endpoint", "method", "status"], registry=self.registry)
        self.latency = Histogram("cylindria_http_request_duration_seconds",
                                 "Time to answer, by endpoint", ["endpoint"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.held_seconds = Histogram(
            "cylindria_job_held_seconds", "Time a job waited in Cylindria's own queue before "
            "each send", buckets=HELD_BUCKETS, registry=self.registry)
        self.sends = Counter("cylindria_job_sends", "Held jobs sent to a GPU", ["gpu"],
                             registry=self.registry)
        self.requeues = Counter("cylindria_job_requeues", "Jobs put back in Cylindria's queue "
                                "because their ComfyUI stopped under them", ["gpu"],
                                registry=self.registry)
        # Labelled with this node's name, so that a fleet-wide Prometheus shows how the shared
        # queue's jobs were spread over the nodes (their sum: the jobs the fleet took from it).
        self.claims = Counter("cylindria_fleet_claims", "Jobs of the fleet's shared queue this "
                              "node took for one of its GPUs (on SQLite: none)", ["node"],
                              registry=self.registry).labels(context.config.node)
        self._shared = context.storage is not None and context.storage.jobs.shared
        self.webhook_latency = Histogram(
            "cylindria_webhook_delivery_seconds", "From a job's status change to the delivery "
            "of its webhook event", buckets=WEBHOOK_BUCKETS,
            registry=self.registry)
        context.webhooks.sender.on_delivered = self.webhook_latency.observe
        self.by_client = Counter("cylindria_client_requests", "Authenticated requests by key "
                                 "name (or JWT subject); never the key", ["client"],
                                 registry=self.registry)
        self._clients: dict = {}  # name -> its counter child, at most MAX_CLIENT_LABELS
        context.store.observe(self.job_changed)
        self._children: dict = {}  # (rule, method, status) -> (counter, histogram): labels() once
        # Answered requests not yet counted: a deque append is all a request pays; the
        # counters' locks are taken once per COUNT_EVERY requests, by one thread.
        self._answered: deque = deque()
        self._counting = threading.Lock()

    def note_request(self, rule: str, method: str, status: int, seconds: float | None,
                     client: str | None) -> None:
        """Note one answered request; counted by count_noted() (every scrape runs it)."""
        answered = self._answered
        answered.append((rule, method, status, seconds, client))
        if len(answered) >= COUNT_EVERY and self._counting.acquire(blocking=False):
            try:
                self._count(COUNT_EVERY)
            finally:
                self._counting.release()

    def count_noted(self) -> None:
        """Count every request noted so far."""
        with self._counting:
            self._count(len(self._answered))

    def _count(self, noted: int) -> None:
        """Count `noted` requests from the oldest (the caller holds _counting)."""
        counts = Tally()  # counter child -> requests: one inc() each
        for _ in range(noted):
            rule, method, status, seconds, client = self._answered.popleft()
            if method not in KNOWN_METHODS:
                method = "other"  # a client can send any token as a method: keep labels bounded
            children = self._request_children(rule, method, status)
            counts[children[0]] += 1
            if seconds is not None:
                children[1].observe(seconds)
            if client is not None:
                counts[self._client_child(client)] += 1
        for child, count in counts.items():
            child.inc(count)

    def _request_children(self, rule: str, method: str, status: int) -> tuple:
        """The request counter's and latency histogram's children for these labels."""
        key = (rule, method, status)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (self.requests.labels(rule, method, str(status)),
                                               self.latency.labels(rule))
        return children

    def _client_child(self, name: str):
        """The client counter's child for this name (JWT subjects are unbounded: past
        MAX_CLIENT_LABELS names, the rest are counted as "other")."""
        child = self._clients.get(name)
        if child is None:
            if len(self._clients) >= MAX_CLIENT_LABELS:
                name = "other"
                child = self._clients.get(name)
            if child is None:
                child = self._clients[name] = self.by_client.labels(name)
        return child

    def job_changed(self, old: Job | None, new: Job) -> None:
        """Store observer: time every job that just ended; count sends and requeues."""
        if new.status.finished and (old is None or not old.status.finished) and new.finished_at:
            self.job_duration.labels(_gpu_label(new.gpu_id), new.status.value).observe(
                max(0.0, new.finished_at - new.submitted_at))
        if old is None:
            return
        if old.status == JobStatus.HELD and new.status == JobStatus.SUBMITTING:
            self.sends.labels(_gpu_label(new.gpu_id)).inc()
            if self._shared and old.node is None and old.auto:  # a claim of the shared queue
                self.claims.inc()
            if old.held_at is not None:
                self.held_seconds.observe(max(0.0, time.time() - old.held_at))
        elif new.status == JobStatus.HELD and new.attempts == old.attempts:
            self.requeues.labels(_gpu_label(old.gpu_id)).inc()  # sent, and its ComfyUI died


def _gpu_label(gpu_id: int | None) -> str:
    """A job's GPU as a label: "none" for a held job never sent."""
    return NO_GPU if gpu_id is None else str(gpu_id)


ARRIVED = "cylindria.arrived"  # WSGI environ key: when the request reached the app


class ArrivalClock:
    """WSGI wrapper noting when a request arrived (cheaper than a before_request hook, and it
    also times Flask's own work before the hooks)."""

    def __init__(self, wsgi_app):
        self.wsgi_app = wsgi_app

    def __call__(self, environ, start_response):
        environ[ARRIVED] = time.perf_counter()
        return self.wsgi_app(environ, start_response)


def init_app(app: Flask, context) -> Metrics:
    """Count every request and serve /metrics."""
    metrics = Metrics(context)
    app.extensions["cylindria_metrics"] = metrics
    app.wsgi_app = ArrivalClock(app.wsgi_app)

    @app.after_request
    def count(response):
        current = request._get_current_object()  # one proxy lookup instead of four
        url_rule, environ = current.url_rule, current.environ
        started = environ.get(ARRIVED)
        metrics.note_request(url_rule.rule if url_rule is not None else "unmatched",
                             current.method, response.status_code,
                             None if started is None else time.perf_counter() - started,
                             environ.get(ENVIRON_CLIENT))
        return response

    app.register_blueprint(bp)
    return metrics


@bp.get("/metrics")
def metrics():
    """The Prometheus text format; an endpoint that does not exist for a key limited to its
    own jobs (it names every client and counts their work)."""
    client = current_client()
    if client is not None and client.own:
        raise NotFound()
    counts = current_app.extensions["cylindria_metrics"]
    counts.count_noted()
    registry = counts.registry
    # content_type, not mimetype: Flask would append a second "; charset=utf-8" to it.
    return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
