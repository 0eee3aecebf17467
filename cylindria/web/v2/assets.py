"""Comfy API v2 assets: the assets of Cylindria's asset store (one per client and content
hash; an own key sees only its own), and a job's outputs read as assets (their ids are
`<job id>~<index>`, their bytes ComfyUI's, asked of the node holding the job)."""
from __future__ import annotations

from flask import Blueprint, Response, jsonify, request
from werkzeug.routing import BaseConverter

from comfy.inputs.assets import Asset
from comfy.tracking.gone import gpu_at
from comfy.inputs.workflow import WorkflowError, load_json
from cylindria.web.assets import asset_file, receive, remove, viewer
from cylindria.web.context import ctx
from cylindria.web.errors import ApiError
from cylindria.web.lookup import held_elsewhere, visible
from cylindria.web.params import JOB_ID
from cylindria.web.results import job_output
from cylindria.web.v2.errors import invalid_request, not_found
from cylindria.web.v2.headers import idempotency_key
from cylindria.web.v2.shapes import parse_output_id, shapes_now

bp = Blueprint("v2_assets", __name__)


class AssetIdConverter(BaseConverter):
    """An asset id in a path: any one segment but the names of the fixed asset operations,
    so /assets/from-hash is only the POST it is (its Allow header says so), never a GET of an
    asset called "from-hash"."""
    regex = r"(?!from-hash$|by-hash$)[^/]+"


CONVERTERS = {"asset_id": AssetIdConverter}


@bp.post("/assets")
def upload():
    """POST /assets: multipart with the bytes in `file`, the name in `file_path`, and
    optionally `expected_hash` (409 hash_mismatch when the bytes hash otherwise). 201 for new
    bytes, 200 with the stored asset for bytes Cylindria already holds. An Idempotency-Key
    is checked and needs nothing more: assets are content-addressed, a retry stores nothing."""
    idempotency_key()
    asset, created = receive(name_field="file_path", hash_field="expected_hash")
    return jsonify(shapes_now().asset(asset, created)), 201 if created else 200


@bp.post("/assets/from-hash")
def from_hash():
    """POST /assets/from-hash {"hash"}: the client's asset holding these bytes (200), or 404
    blob_not_found (also when only another own key has them: no record is minted for it)."""
    try:
        document = load_json(request.get_data(cache=False))
    except WorkflowError as exc:
        raise invalid_request(exc.message) from None
    if not isinstance(document, dict) or not isinstance(document.get("hash"), str):
        raise invalid_request("send {\"hash\": \"blake3:<hex>\"}", "hash")
    asset = ctx().assets.by_hash(document["hash"], viewer())
    if asset is None:
        raise ApiError(404, "blob_not_found", "Cylindria holds no bytes with this hash")
    return jsonify(shapes_now().asset(asset, False))


@bp.route("/assets/by-hash/<path:hash>", methods=["HEAD"])
def by_hash(hash: str):
    """HEAD /assets/by-hash/{hash}: 200 when Cylindria holds these bytes, else 404."""
    if ctx().assets.by_hash(hash, viewer()) is None:
        raise not_found("asset")
    return Response(status=200)


@bp.get("/assets/<asset_id:asset_id>")
def get_asset(asset_id: str):
    """GET /assets/{id}: an uploaded asset, or a job's output."""
    output = _output(asset_id)
    if output is not None:
        job, index = output
        return jsonify(shapes_now().output_asset(job, index))
    return jsonify(shapes_now().asset(_uploaded(asset_id)))


@bp.get("/assets/<asset_id:asset_id>/content")
def content(asset_id: str):
    """GET /assets/{id}/content: the bytes, streamed; `Range: bytes=...` answered with 206."""
    output = _output(asset_id)
    if output is None:
        return asset_file(_uploaded(asset_id))
    job, index = output
    return job_output(job, index, request.headers.get("Range"))


@bp.delete("/assets/<asset_id:asset_id>")
def delete(asset_id: str):
    """DELETE /assets/{id}: 204; 409 asset_in_use while an unfinished job needs it. A job's
    outputs are not deleted one by one: they leave with their job (retention)."""
    if _output(asset_id) is not None:
        raise ApiError(403, "forbidden", "a job's outputs leave with the job (--retention); "
                       "they cannot be deleted one by one")
    remove(_uploaded(asset_id))
    return Response(status=204)


def _uploaded(asset_id: str) -> Asset:
    """The uploaded asset under this id, or 404 not_found (also for another own key's)."""
    asset = ctx().assets.get(asset_id, viewer())
    if asset is None:
        raise not_found("asset")
    return asset


def _output(asset_id: str):
    """(job, index) when the id names an output of a job of the fleet; None when the id is
    not an output's; 404 when it is one of no output the fleet holds."""
    parsed = parse_output_id(asset_id)
    if parsed is None:
        return None
    job_id, index = parsed
    job = ctx().store.lookup(job_id) if JOB_ID.fullmatch(job_id) else None
    if job is None or not visible(job) or index >= len(job.outputs) or job.gpu_id is None:
        raise not_found("output")
    if not held_elsewhere(job) and gpu_at(ctx().gpus, job.gpu_id) is None:  # its GPU is gone
        raise not_found("output")
    return job, index
