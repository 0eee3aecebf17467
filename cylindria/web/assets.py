"""Asset endpoints: upload (multipart or raw), look up by hash, metadata, content, delete.

A key limited to its own jobs (`:own`) sees only its own assets: another's are answered as
if they did not exist. Any other key sees every asset, and uploads the shared one."""
from __future__ import annotations

from flask import Blueprint, jsonify, request

from comfy.inputs.assetfiles import AssetUnavailable
from comfy.inputs.assets import SHARED, Asset, AssetTooLarge, EmptyUpload, HashMismatch, UploadCut
from comfy.comfyui.status import iso_time
from cylindria.web import downloads
from cylindria.web.auth import current_client
from cylindria.web.context import ctx
from cylindria.web.errors import ApiError
from cylindria.web.lookup import visible

bp = Blueprint("assets", __name__)

MULTIPART_MARGIN = 64 * 1024  # bytes of multipart framing allowed on top of the asset itself


def asset_view(asset: Asset, created: bool | None = None) -> dict:
    """An asset as the API shows it."""
    view = {"id": asset.id, "hash": asset.hash, "name": asset.name,
            "size_bytes": asset.size_bytes, "content_type": asset.content_type,
            "created_at": iso_time(asset.created_at)}
    if created is not None:
        view["created_new"] = created
    return view


def viewer() -> str | None:
    """Whose assets the client may see and use: an own key's name, or None for every asset."""
    client = current_client()
    return client.name if client is not None and client.own else None


def too_large(limit: int) -> ApiError:
    """413 asset_too_large."""
    return ApiError(413, "asset_too_large", f"an asset may be at most {limit // (1024 * 1024)} MiB",
                    {"limit_bytes": limit})


@bp.post("/assets")
def upload():
    """Store a file: multipart/form-data with a `file` part, or a raw body with ?name=."""
    asset, created = receive()
    return jsonify(asset_view(asset, created)), 201 if created else 200


def receive(name_field: str | None = None, hash_field: str | None = None) -> tuple[Asset, bool]:
    """Take the request's upload into the asset store: (asset, created). Its name is the
    form field `name_field` if given (else the part's file name, or ?name= for a raw body);
    with `hash_field`, a form field holding the hash the bytes must have (409 hash_mismatch).
    The asset is the client's own (an own key's), else the shared one."""
    store = ctx().assets
    limit = store.max_bytes
    length = request.content_length
    multipart = request.mimetype == "multipart/form-data"
    if length is not None and length > limit + (MULTIPART_MARGIN if multipart else 0):
        raise too_large(limit)  # from Content-Length, before a byte of the body is read
    request.max_content_length = limit + MULTIPART_MARGIN
    owner = viewer() or SHARED
    try:
        if multipart:
            part = request.files.get("file")
            if part is None:
                raise ApiError(400, "invalid_asset", "send the file as a multipart part named 'file'")
            name = single_field(name_field)
            expected = single_field(hash_field)
            asset, created = store.add(part.stream, name or part.filename, None, expected, owner)
        else:
            if not length and request.headers.get("Transfer-Encoding", "").lower() != "chunked":
                raise ApiError(400, "invalid_asset", "the request body is empty: send the file")
            asset, created = store.add(request.stream, request.args.get("name"), length,
                                       owner=owner)
    except AssetTooLarge:
        raise too_large(limit) from None
    except (UploadCut, EmptyUpload) as exc:
        raise ApiError(400, "invalid_asset", str(exc)) from None
    except HashMismatch as exc:
        raise ApiError(409, "hash_mismatch", str(exc),
                       {"expected": exc.expected[:80], "actual": exc.actual}) from None
    return asset, created


def single_field(name: str | None) -> str | None:
    """A multipart text field given at most once (None: absent, or no such field asked for);
    given twice, it is refused (400 invalid_asset): which one was meant cannot be told."""
    if name is None:
        return None
    values = request.form.getlist(name)
    if len(values) > 1:
        raise ApiError(400, "invalid_asset", f"the form field '{name}' is given more than once",
                       {"field": name})
    return values[0] if values else None


@bp.get("/assets/by-hash/<anypath:hash>")
def by_hash(hash: str):
    """200 (with the asset) if Cylindria holds these bytes, else 404 (HEAD too: Flask answers
    HEAD for every GET): a client skips a re-upload."""
    asset = ctx().assets.by_hash(hash, viewer())
    if asset is None:
        raise ApiError(404, "asset_not_found", "asset not found")
    return jsonify(asset_view(asset))


@bp.get("/assets/<asset_id>")
def metadata(asset_id: str):
    """An asset's metadata."""
    return jsonify(asset_view(known_asset(asset_id)))


@bp.get("/assets/<asset_id>/content")
def content(asset_id: str):
    """An asset's bytes, streamed (Range supported)."""
    return asset_file(known_asset(asset_id))


def asset_file(asset: Asset):
    """The response carrying an asset's bytes (Range and conditional requests answered),
    sent by waitress's loop (cylindria/web/downloads.py) from this node's file, fetched from
    the database first if another node uploaded it; 409 asset_on_other_node if it cannot be."""
    try:
        path = ctx().assets.local(asset)
    except AssetUnavailable as exc:
        raise ApiError(409, "asset_on_other_node", str(exc)) from None
    return downloads.send_file(path, mimetype=asset.content_type,
                               download_name=asset.comfy_name, conditional=True,
                               etag=asset.hash[7:])


@bp.delete("/assets/<asset_id>")
def delete(asset_id: str):
    """Remove an asset; 409 asset_in_use while an unfinished job needs it."""
    return jsonify(asset_view(remove(known_asset(asset_id))))


def remove(asset: Asset) -> Asset:
    """Delete an asset, unless an unfinished job needs it (409 asset_in_use)."""
    context = ctx()
    users = context.assets.delete(asset, context.store)
    if users:  # a key limited to its own jobs is not told the ids of others'
        shown = [job_id for job_id in users if _visible_id(job_id)]
        raise ApiError(409, "asset_in_use", "an unfinished job needs this asset",
                       {"job_ids": shown[:20]})
    return asset


def _visible_id(job_id: str) -> bool:
    job = ctx().store.get(job_id)
    return job is not None and visible(job)


def known_asset(asset_id: str) -> Asset:
    """The asset under this id, or 404 (also for another own key's)."""
    asset = ctx().assets.get(asset_id, viewer())
    if asset is None:
        raise ApiError(404, "asset_not_found", "asset not found")
    return asset

