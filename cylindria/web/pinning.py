"""A submission pinned to another node's GPU (GpuId=<node>:<n>): checked against that node's
row (in the fleet, live, and with that GPU), then sent to it with the fleet credential and the
client as this node authenticated it, never the client's key (cylindria/fleet/peers.py). The
owner runs it as its own GpuId=n submission (cylindria/web/internal.py), so its answer (201,
200 for a retry, 409, comfy_rejected ...) is passed back as it came."""
from __future__ import annotations

from flask import Response, request

from cylindria.fleet.peers import live_url
from cylindria.fleet.view import said
from cylindria.storage import NodeRow
from cylindria.web.auth import current_client
from cylindria.web.errors import ApiError
from cylindria.web.params import GPU_PARAM_NAMES
from cylindria.web.remote import owner_error
from cylindria.web.submission import request_body

PASSED_HEADERS = ("Location", "Retry-After")


def forward_pinned(context, job_id: str, node: str, gpu: str) -> Response:
    """The owner's answer to the request's submission, pinned to its GPU `gpu` (a digit)."""
    row = pinned_row(context, node, gpu)
    client = current_client()
    upstream = context.peers.submit(row, job_id, forwarded_params(gpu), request_body(),
                                    None if client is None else (client.name, client.own))
    if upstream.status_code not in (200, 201):
        raise owner_error(node, upstream)
    headers = {name: upstream.headers[name] for name in PASSED_HEADERS if name in upstream.headers}
    return Response(upstream.content, upstream.status_code, headers,
                    content_type=upstream.headers.get("Content-Type", "application/json"))


def pinned_row(context, node: str, gpu: str) -> NodeRow:
    """The row of the node a job is pinned to: 400 invalid_gpu_id for a node the fleet does
    not have (on SQLite: any but this one) or a GPU it does not have, NodeUnreachable for a
    node whose lease has ended (its GPUs are then unknown: it may come back with others)."""
    asked = f"{node}:{gpu}"
    row = context.peers.row(node) if context.storage.jobs.shared else None
    if row is None:
        raise ApiError(400, "invalid_gpu_id", f"GpuId={asked}: the fleet has no node {node} "
                       f"(this node is {context.config.node})", {"gpu_id": asked, "node": node})
    live_url(row)
    gpus = said(row).get("gpus")
    count = len(gpus) if isinstance(gpus, list) else 0
    if int(gpu) >= count:
        has = f"GPUs 0 to {count - 1}" if count else "no GPU it has told the fleet of"
        raise ApiError(400, "invalid_gpu_id", f"GpuId={asked}: node {node} has {has}",
                       {"gpu_id": asked, "node": node, "number_of_gpus": count})
    return row


def forwarded_params(gpu: str) -> list[tuple[str, str]]:
    """The request's query for the owner: every parameter as given (priority, webhook ...),
    with GpuId the owner's own index."""
    kept = [(name, value) for name, value in request.args.items(multi=True)
            if name.lower() not in GPU_PARAM_NAMES]
    return kept + [("GpuId", gpu)]
