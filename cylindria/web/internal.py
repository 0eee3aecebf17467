"""The endpoints the nodes of a fleet call on each other, with the fleet credential only
(cylindria/web/auth.py's FLEET_ENDPOINTS: an API key is refused there, and the credential
opens nothing else). Not part of the public API: absent from /openapi.json."""
from __future__ import annotations

from flask import Blueprint, request

from cylindria.fleet.peers import OUTPUTS_PATH
from cylindria.web.context import wait_until_reconciled
from cylindria.web.lookup import known_job
from cylindria.web.results import local_output, output_index

bp = Blueprint("internal", __name__)
bp.before_request(wait_until_reconciled)


@bp.get(f"{OUTPUTS_PATH}/<job_id>/<index>")
def fleet_output(job_id: str, index: str):
    """One output of a job this node holds, as /jobresult/<id>/<n> sends it (the same bytes,
    status and headers, Range included); another node's job is 404 here. Whether the job must
    have completed is the asking node's rule (/jobresult: yes; v2: an output once written)."""
    job = known_job(job_id)
    return local_output(job, output_index(job, index), request.headers.get("Range"))
