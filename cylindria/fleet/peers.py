"""Calls from this node to the other nodes of the fleet, at their advertise URLs, with the
fleet credential (never a client's key): today one call, an output of a job another node
holds, asked of that node's internal endpoint and read as it arrives."""
from __future__ import annotations

import logging
import threading
from typing import Iterator
from urllib.parse import quote

import requests

from cylindria.fleet.credential import FleetCredential
from cylindria.storage import NodeRows

logger = logging.getLogger(__name__)

OUTPUTS_PATH = "/fleet/outputs"  # the internal endpoint: OUTPUTS_PATH/<job id>/<index>
CONNECT_TIMEOUT = 3.0  # seconds to reach a node (its host is on the fleet's network)
READ_TIMEOUT = 60.0  # seconds without a byte: the node spools the file from its ComfyUI first
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

    def output(self, node: str, job_id: str, index: int, byte_range: str | None) -> requests.Response:
        """The node's answer for one output of its job (headers read, body not yet), or
        NodeUnreachable. `byte_range`: a Range header Cylindria built, never a client's."""
        url = f"{self.advertise_url(node)}{OUTPUTS_PATH}/{quote(job_id, safe='')}/{index}"
        headers = self.credential.headers()
        if byte_range:
            headers["Range"] = byte_range
        try:
            return self._session().get(url, headers=headers, stream=True, allow_redirects=False,
                                       timeout=(CONNECT_TIMEOUT, READ_TIMEOUT))
        except requests.RequestException as exc:
            raise NodeUnreachable(node, exc.__class__.__name__) from None

    def advertise_url(self, node: str) -> str:
        """Where a live node is reached; NodeUnreachable when its lease has run out (or the
        database never heard of it). StorageUnavailable when the database cannot be read."""
        row = next((row for row in self.nodes.all() if row.name == node), None)
        if row is None:
            raise NodeUnreachable(node, "the fleet has no such node")
        if not row.live:
            raise NodeUnreachable(node, f"its lease has ended (last renewed {row.lease_age:.0f} s ago)")
        return row.advertise_url.rstrip("/")

    def _session(self) -> requests.Session:
        """The calling thread's own session (requests.Session is not thread-safe)."""
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            # Straight to the node: a proxy set in the environment for the internet must
            # not see the fleet credential.
            session.trust_env = False
        return session


def body_chunks(node: str, response: requests.Response) -> Iterator[bytes]:
    """A node's answer body in chunks; a break (the node died mid-answer, a short body) is
    NodeUnreachable. The connection is closed however it ends."""
    try:
        yield from response.iter_content(CHUNK)
    except requests.RequestException as exc:
        raise NodeUnreachable(node, f"its answer broke off ({exc.__class__.__name__})") from None
    finally:
        response.close()
