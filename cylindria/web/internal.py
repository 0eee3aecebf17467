"""The endpoints the nodes of a fleet call on each other, with the fleet credential only
(cylindria/web/auth.py's FLEET_ENDPOINTS: an API key is refused there, and the credential
opens nothing else). Not part of the public API: absent from /openapi.json."""
from __future__ import annotations

from flask import Blueprint, g, request

from cylindria.fleet.peers import JOBS_PATH, OUTPUTS_PATH, client_of
from cylindria.web.auth import CLIENT_RECORD, Client
from cylindria.web.context import ctx, wait_until_reconciled
from cylindria.web.lookup import known_job
from cylindria.web.params import gpu_id_param, job_id_param, raw_gpu_param
from cylindria.web.results import local_output, output_index
from cylindria.web.routes import start_job

bp = Blueprint("internal", __name__)
bp.before_request(wait_until_reconciled)


@bp.get(f"{OUTPUTS_PATH}/<job_id>/<index>")
def fleet_output(job_id: str, index: str):
    """One output of a job this node holds, as /jobresult/<id>/<n> sends it (the same bytes,
    status and headers, Range included); another node's job is 404 here. Whether the job must
    have completed is the asking node's rule (/jobresult: yes; v2: an output once written)."""
    job = known_job(job_id)
    return local_output(job, output_index(job, index), request.headers.get("Range"))


@bp.put(f"{JOBS_PATH}/<job_id>")
def fleet_submit(job_id: str):
    """A submission another node received pinned to this node's GPU n (GpuId=<node>:<n>):
    run as this node's own PUT /startjob/<id>?GpuId=n, for the client that node authenticated
    (its name and whether its key sees only its own jobs; never its key), and answered the
    same (201, 200 for a retry, 409, comfy_rejected ...)."""
    client = client_of(request.headers)
    # Who the job is for: the same as a key of this node would have made it (submitted_by,
    # what an own key may see), for every check the submission makes.
    g.setdefault(CLIENT_RECORD, None if client is None else Client(*client))
    context = ctx()
    gpu_id = gpu_id_param(len(context.gpus), raw_gpu_param())
    return start_job(context, job_id_param(job_id), gpu_id)
