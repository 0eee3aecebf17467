"""Calls from this node to the other nodes of the fleet, at their advertise URLs, with the
fleet credential (never a client's key): an output of a job another node holds, asked of
that node's internal endpoint and read as it arrives; and a submission pinned to another
node's GPU (GpuId=<node>:<n>), with the client as the asking node authenticated it."""
from __future__ import annotations

import logging
import threading
from typing import Iterator
from urllib.parse import quote, unquote

import requests

from cylindria.fleet.credential import FleetCredential
from cylindria.storage import NodeRow, NodeRows

logger = logging.getLogger(__name__)

OUTPUTS_PATH = "/fleet/outputs"  # the internal endpoint: OUTPUTS_PATH/<job id>/<index>
JOBS_PATH = "/fleet/jobs"  # the internal endpoint: PUT JOBS_PATH/<job id>?GpuId=<n>
# The client of a forwarded submission, by name (percent-encoded: a JWT's subject may hold
# anything) and whether its key sees only its own jobs; absent: no client (--no-auth).
CLIENT_HEADER = "X-Cylindria-Client"
OWN_HEADER = "X-Cylindria-Client-Own"
CONNECT_TIMEOUT = 3.0  # seconds to reach a node (its host is on the fleet's network)
READ_TIMEOUT = 60.0  # seconds without a byte: the node spools the file from its ComfyUI first
# A pinned submission's answer: the owner may wait up to its SETTLE_WAIT (90 s) for an
# earlier submission of the id, then POST to its ComfyUI.
SUBMIT_TIMEOUT = 150.0
CHUNK = 64 * 1024


class NodeUnreachable(Exception):
    """The node holding a job cannot be asked now: its lease ran out, it refused the
    connection, it did not answer in time, or its answer broke off."""

    def __init__(self, node: str, reason: str):
        super().__init__(f"node {node} cannot be reached: {reason}")
        self.node, self.reason = node, reason


class Peers:
    """The other nodes, as this node calls them; one requests.Session per calling thread."""

    def __init__(self, nodes: NodeRows, credential: FleetCredential):
        self.nodes, self.credential = nodes, credential
        self._local = threading.local()

    def output(self, node: str, job_id: str, index: int, byte_range: str | None,
               read_timeout: float = READ_TIMEOUT) -> requests.Response:
        """The node's answer for one output of its job (headers read, body not yet), or
        NodeUnreachable. `byte_range`: a Range header Cylindria built, never a client's."""
        url = f"{self.advertise_url(node)}{OUTPUTS_PATH}/{path_part(job_id)}/{index}"
        headers = self.credential.headers()
        if byte_range:
            headers["Range"] = byte_range
        try:
            return self._session().get(url, headers=headers, stream=True, allow_redirects=False,
                                       timeout=(CONNECT_TIMEOUT, read_timeout))
        except requests.RequestException as exc:
            raise NodeUnreachable(node, exc.__class__.__name__) from None

    def submit(self, row: NodeRow, job_id: str, params: list[tuple[str, str]], body: bytes,
               client: tuple[str, bool] | None) -> requests.Response:
        """The node's answer (read whole) to a submission pinned to one of its GPUs: the
        workflow as the client sent it, `params` the query (its GpuId the node's own index),
        `client` (name, own) as this node authenticated it. NodeUnreachable if it cannot be
        asked, or its answer does not come (it may then have taken the job: a retry of
        the id is answered with it)."""
        url = f"{live_url(row)}{JOBS_PATH}/{path_part(job_id)}"
        headers = {**self.credential.headers(), **client_headers(client),
                   "Content-Type": "application/json"}
        try:
            return self._session().put(url, params=params, data=body, headers=headers,
                                       allow_redirects=False,
                                       timeout=(CONNECT_TIMEOUT, SUBMIT_TIMEOUT))
        except requests.RequestException as exc:
            raise NodeUnreachable(row.name, exc.__class__.__name__) from None

    def advertise_url(self, node: str) -> str:
        """Where a live node is reached; NodeUnreachable when its lease has run out (or the
        database never heard of it). StorageUnavailable when the database cannot be read."""
        row = self.row(node)
        if row is None:
            raise NodeUnreachable(node, "the fleet has no such node")
        return live_url(row)

    def row(self, node: str) -> NodeRow | None:
        """The node's row as the database has it now, live or not; None for no such node."""
        return next((row for row in self.nodes.all() if row.name == node), None)

    def _session(self) -> requests.Session:
        """The calling thread's own session (requests.Session is not thread-safe)."""
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            # Straight to the node: a proxy set in the environment for the internet must
            # not see the fleet credential.
            session.trust_env = False
        return session


def live_url(row: NodeRow) -> str:
    """Where a node is reached; NodeUnreachable when its lease has run out."""
    if not row.live:
        raise NodeUnreachable(row.name, f"its lease has ended (last renewed "
                                        f"{row.lease_age:.0f} s ago)")
    return row.advertise_url.rstrip("/")


def path_part(job_id: str) -> str:
    """A job id as one path segment: dots encoded too, so that an id "." or ".." is never
    taken for a dot segment and resolved away on the way."""
    return quote(job_id, safe="").replace(".", "%2E")


def client_headers(client: tuple[str, bool] | None) -> dict[str, str]:
    """Who a forwarded request is for, as headers (never the client's key)."""
    if client is None:
        return {}
    name, own = client
    return {CLIENT_HEADER: quote(name, safe=""), OWN_HEADER: "1" if own else "0"}


def client_of(headers) -> tuple[str, bool] | None:
    """(name, own) from a forwarded request's headers; None: no client."""
    name = headers.get(CLIENT_HEADER)
    if name is None:
        return None
    return unquote(name), headers.get(OWN_HEADER) == "1"


def body_chunks(node: str, response: requests.Response) -> Iterator[bytes]:
    """A node's answer body in chunks; a break (the node died mid-answer, a short body) is
    NodeUnreachable. The connection is closed however it ends."""
    try:
        yield from response.iter_content(CHUNK)
    except requests.RequestException as exc:
        raise NodeUnreachable(node, f"its answer broke off ({exc.__class__.__name__})") from None
    finally:
        response.close()
