"""The OpenAPI 3 document of every endpoint, served at /openapi.json."""
from __future__ import annotations

from flask import Blueprint, Flask, jsonify

from comfy.jobs.job import JobStatus
from cylindria.web.context import ctx
from cylindria.web.openapi_headers import limit_headers
from cylindria.web.v2 import openapi as v2_openapi

bp = Blueprint("openapi", __name__)

NULLABLE_STR = {"type": "string", "nullable": True}
ERROR_CODES = ["invalid_gpu_id", "invalid_job_id", "invalid_json", "invalid_workflow",
               "ui_format_workflow", "comfy_rejected", "unauthorized", "job_not_found",
               "job_id_conflict", "job_finished", "job_not_finished", "payload_too_large",
               "too_many_requests", "comfy_bad_response", "comfy_unreachable", "invalid_parameter",
               "output_not_found", "not_found", "method_not_allowed", "bad_request",
               "headers_too_large", "internal_error", "starting", "queue_full",
               "too_many_streams", "too_many_downloads", "asset_not_found", "asset_in_use",
               "asset_too_large", "invalid_asset", "invalid_webhook", "folder_not_found",
               "file_not_allowed", "database_unavailable", "node_unreachable",
               "asset_on_other_node"]
ERROR_TEXT = {400: "Bad request", 401: "Missing or wrong API key", 404: "Not found",
              405: "Method not allowed", 409: "Conflict with the job's state",
              413: "Body too large",
              429: "too_many_requests: --rate-limit spent, or too many failed authentications; "
                   "too_many_downloads: this client's --max-downloads-per-client in flight",
              502: "ComfyUI answered something unusable",
              503: "ComfyUI cannot be reached (comfy_unreachable), Cylindria's database cannot "
                   "be reached (database_unavailable: nothing was accepted), the fleet node "
                   "holding a job's outputs, or the GPU a job is pinned to, cannot be reached "
                   "(node_unreachable), or Cylindria "
                   "is still reconciling after a start (starting)"}
# Every 429 and 503 error says when to try again.


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(name: str, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": _ref(name)}}}


def _errors(*statuses: int, text: dict | None = None) -> dict:
    """The error responses an operation can give (every one has the Error shape); `text`
    replaces the usual description of some statuses."""
    responses = {}
    for status in statuses + (401, 429):
        responses[str(status)] = _json("Error", {**ERROR_TEXT, **(text or {})}[status])
        if status in (429, 503):
            responses[str(status)]["headers"] = limit_headers(status)
    return responses


JOB_ID = {"name": "job_id", "in": "path", "required": True,
          "schema": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,128}$"}}


def _gpu_param(word: str, gpus: int, meaning: str, pinned: str = "") -> dict:
    """GpuId: one of this host's GPU indexes, or the word (any case); with `pinned` (what it
    means), also <node>:<n>, a GPU of a node of the fleet."""
    any_case = "".join(f"[{c.upper()}{c}]" for c in word)
    node = "|[A-Za-z0-9._-]{1,63}:[0-9]" if pinned else ""
    return {"name": "GpuId", "in": "query", "required": False,
            "description": f"GPU index 0..{gpus - 1} (default 0), or {word} (any case): "
                           f"{meaning}{pinned}; also spelled gpuid / gpu_id",
            "schema": {"type": "string", "pattern": f"^([0-{gpus - 1}]|{any_case}{node})$"}}


WEBHOOK_URL = {"type": "string", "maxLength": 2048, "pattern": "^https?://[^\\s]+$",
               "description": "http(s) URL told when the job starts and ends (Standard Webhooks, "
                              "signed); refused (400 invalid_webhook) for loopback, private and "
                              "link-local addresses unless --webhook-allow-private, and always "
                              "for ComfyUI's own ports"}
WEBHOOK = {"name": "webhook", "in": "query", "required": False,
           "schema": {"$ref": "#/components/schemas/WebhookUrl"}}
PRIORITY = {"name": "priority", "in": "query", "required": False,
            "description": "Order in Cylindria's own queue: higher is sent first, equal "
                           "priorities keep arrival order. A pinned job keeps it too: it orders "
                           "the job if its ComfyUI dies and it waits to be sent again. "
                           "Given twice, or not an integer -100..100: 400 invalid_parameter",
            "schema": {"type": "integer", "minimum": -100, "maximum": 100, "default": 0}}


ASSET_ID = {"name": "asset_id", "in": "path", "required": True, "schema": {"type": "string"}}
ASSET_HASH = {"name": "hash", "in": "path", "required": True,
              "schema": {"type": "string", "description": "blake3:<64 hex>"}}
WAIT = {"name": "wait", "in": "query", "required": False,
        "description": "Seconds (0..60) to wait for the job to end: the answer comes as soon as "
                       "it has ended, or after this long with the job as it stands. A wait holds "
                       "a stream slot (--max-streams): beyond, 429 too_many_streams",
        "schema": {"type": "number", "minimum": 0, "maximum": 60, "default": 0}}
STREAMS_429 = {429: "too_many_requests (--rate-limit, or failed authentications), or --max-streams "
                    "event streams and long-polls open (too_many_streams)"}


PUBLIC_STATUSES = [s.value for s in JobStatus if s != JobStatus.HELD]  # held reads as queued
STATUS_LIST = "(" + "|".join(PUBLIC_STATUSES) + ")"


MODEL_FOLDER = {"name": "folder", "in": "path", "required": True, "schema": {"type": "string"},
                "description": "a model folder as ComfyUI names it (checkpoints, loras, vae, ...; "
                               "case-sensitive)"}
MODELS_NOTE = ("As last read from each GPU's ComfyUI (when its websocket connects): a GPU that "
               "cannot be reached keeps its last known files, one never reached has none. "
               "Never waits for ComfyUI.")

SCHEMAS = {
    "Model": {"type": "object", "required": ["name", "gpus"], "properties": {
        "name": {"type": "string", "description": "the file's name relative to its folder, as "
                 "ComfyUI gives it (subfolders included, e.g. sdxl/base.safetensors; backslashes "
                 "on Windows hosts): what a loader input of a workflow takes"},
        "gpus": {"type": "array", "minItems": 1, "items": {"type": "integer", "minimum": 0},
                 "description": "the GPUs whose ComfyUI has this file, ascending"}}},
    "ModelFolders": {"type": "object", "required": ["folders"], "properties": {
        "folders": {"type": "object", "additionalProperties": {"type": "array", "items": _ref("Model")},
                    "description": "every model folder any GPU's ComfyUI has (empty ones too; "
                                   "not custom_nodes), its files sorted by name"}}},
    "ModelFolder": {"type": "object", "required": ["folder", "models"], "properties": {
        "folder": {"type": "string"}, "models": {"type": "array", "items": _ref("Model")}}},
    "Error": {"type": "object", "required": ["error", "code"], "properties": {
        "error": {"type": "string"}, "code": {"type": "string", "enum": ERROR_CODES},
        "details": {"description": "Only where it says more, by code: invalid_workflow a "
                                   "WorkflowProblem; comfy_rejected a ComfyRejection; "
                                   "queue_full {max_queued}; invalid_parameter {parameter}; "
                                   "invalid_gpu_id {gpu_id, number_of_gpus, node (GpuId="
                                   "<node>:<n>)}; node_unreachable {node}; invalid_job_id "
                                   "{job_id}; job_finished {status}; job_id_conflict {status, "
                                   "gpu_id}; payload_too_large {limit_bytes}"}}},
    "WorkflowProblem": {
        "type": "object", "required": ["node_id"], "description":
        "details of invalid_workflow: the node at fault (null when the workflow as a whole is), "
        "and for a GpuId=auto job checked against the node classes of the reachable GPUs, "
        "its class and why no GPU could run it",
        "properties": {
            "node_id": NULLABLE_STR, "class_type": NULLABLE_STR,
            "reason": {"type": "string", "enum": [
                "unknown_node_class", "no_gpu_has_every_class", "no_output_node",
                "missing_required_input"]},
            "inputs": {"type": "array", "items": {"type": "string"},
                       "description": "the required inputs missing (missing_required_input)"}}},
    "ComfyRejection": {
        "type": "object", "required": ["error", "node_errors"],
        "description": "ComfyUI's own answer to a prompt it refused",
        "properties": {"error": {"description": "ComfyUI's error: usually {type, message, details}"},
                       "node_errors": {"type": "object", "description": "per node id"}}},
    "Progress": {"type": "object", "required": ["value", "max", "node", "nodes_done",
                                                "nodes_total", "percent"], "properties": {
        "value": {"type": "number"}, "max": {"type": "number"}, "node": NULLABLE_STR,
        "nodes_done": {"type": "integer"}, "nodes_total": {"type": "integer"},
        "percent": {"type": "number", "minimum": 0, "maximum": 100}}},
    "JobError": {"type": "object", "nullable": True, "required": ["type", "message"], "properties": {
        "type": {"type": "string", "description": "ComfyUI's exception type for a failed run; "
                 "comfy_rejected (refused when Cylindria's queue sent it), lost, internal"},
        "message": {"type": "string"}, "node_id": NULLABLE_STR, "node_type": NULLABLE_STR,
        "details": _ref("ComfyRejection")}},
    "Output": {"type": "object", "required": ["node_id", "filename", "subfolder", "type"],
               "properties": {"node_id": {"type": "string"}, "filename": {"type": "string"},
                              "subfolder": {"type": "string"}, "type": {"type": "string"}}},
    "Job": {"type": "object", "required": [
        "job_id", "gpu_id", "prompt_id", "status", "queue_position", "progress", "submitted_at",
        "started_at", "finished_at", "error", "outputs", "cancel_requested", "priority",
        "attempts"], "properties": {
        "job_id": {"type": "string"},
        "gpu_id": {"type": "integer", "minimum": 0, "nullable": True,
                   "description": "the GPU the job was sent to, or is pinned to; null while a "
                                  "GpuId=auto job waits in Cylindria's queue"},
        "prompt_id": {"type": "string", "nullable": True,
                      "description": "the prompt's id in ComfyUI; each attempt has its own; "
                                     "null while the job waits in Cylindria's queue"},
        "status": {"type": "string", "enum": PUBLIC_STATUSES,
                   "description": "queued: in a ComfyUI's queue, or in Cylindria's own"},
        "queue_position": {"type": "integer", "nullable": True, "minimum": 0,
                           "description": "queued in a ComfyUI: prompts that run there before "
                                          "it; in Cylindria's queue: held jobs sent before it"},
        "progress": _ref("Progress"), "submitted_at": {"type": "string", "format": "date-time"},
        "started_at": {"type": "string", "format": "date-time", "nullable": True},
        "finished_at": {"type": "string", "format": "date-time", "nullable": True},
        "error": _ref("JobError"), "outputs": {"type": "array", "items": _ref("Output")},
        "cancel_requested": {"type": "boolean"},
        "priority": {"type": "integer", "minimum": -100, "maximum": 100,
                     "description": "order in Cylindria's queue (a pinned job's counts if it "
                                    "waits there for its GPU)"},
        "attempts": {"type": "integer", "minimum": 0,
                     "description": "times sent to a ComfyUI"},
        "warnings": {"type": "object", "description": "ComfyUI's node_errors for a partly refused prompt"},
        "webhook": _ref("WebhookState"),
        "submitted_by": {"type": "string", "description": "the name of the key (or the JWT "
                                                          "subject) that submitted it"}}},
    "WebhookUrl": WEBHOOK_URL,
    "WebhookState": {
        "type": "object", "required": ["url"], "description": "a job with a webhook only: its "
        "deliveries (job.started, and job.completed, job.failed, job.cancelled or job.lost)",
        "properties": {
            "url": {"type": "string", "description": "the URL, without its query string"},
            "events": {"type": "integer", "minimum": 0, "description": "events so far"},
            "delivered": {"type": "boolean", "description": "every event so far delivered"},
            "attempts": {"type": "integer", "minimum": 0, "description": "tries, all events"},
            "given_up": {"type": "boolean", "description": "an event was given up after 24 h"},
            "last_error": {"type": "string", "nullable": True,
                           "description": "why the last failed try of an undelivered event failed"}}},
    "Accepted": {"allOf": [_ref("Job"), {"type": "object", "required": ["accepted", "detail"],
                                         "properties": {"accepted": {"type": "boolean"},
                                                        "detail": {"type": "string"}}}]},
    "JobList": {"type": "object", "required": ["jobs", "next_before"], "properties": {
        "jobs": {"type": "array", "items": _ref("Job")}, "next_before": NULLABLE_STR}},
    "ResultList": {"type": "object", "required": ["job_id", "outputs"], "properties": {
        "job_id": {"type": "string"}, "outputs": {"type": "array", "items": {"allOf": [
            _ref("Output"), {"type": "object", "required": ["index", "url"], "properties": {
                "index": {"type": "integer"}, "url": {"type": "string"}}}]}}}},
    "GpuStatus": {"type": "object", "required": [
        "gpu_id", "comfy_url", "reachable", "status", "websocket", "queue", "running_job_id",
        "system", "checked_at"], "properties": {
        "gpu_id": {"type": "integer"}, "comfy_url": {"type": "string"},
        "reachable": {"type": "boolean"}, "status": {"type": "string", "enum": ["ok", "unreachable"]},
        "websocket": {"type": "string", "enum": ["connected", "disconnected"]},
        "queue": {"type": "object", "required": ["running", "pending"], "properties": {
            "running": {"type": "integer"}, "pending": {"type": "integer"}}},
        "running_job_id": NULLABLE_STR,
        "system": {"type": "object", "nullable": True, "description": "ComfyUI's /system_stats"},
        "checked_at": {"type": "string", "format": "date-time"}}},
    "GpuStatusOneOrAll": {"oneOf": [_ref("GpuStatus"), {
        "type": "object", "required": ["gpus"],
        "properties": {"gpus": {"type": "array", "items": _ref("GpuStatus")}}}]},
    "Ready": {"type": "object", "required": ["ready", "reconciling", "gpus", "queue"], "properties": {
        "ready": {"type": "boolean"}, "reconciling": {"type": "boolean"}, "gpus": {"type": "array", "items": {
            "type": "object", "required": ["gpu_id", "reachable", "websocket"], "properties": {
                "gpu_id": {"type": "integer"}, "reachable": {"type": "boolean"},
                "websocket": {"type": "string", "enum": ["connected", "disconnected"]}}}},
        "queue": {"type": "object", "required": ["held", "max_queued", "full"],
                  "description": "Cylindria's own queue; full: /ready answers 503",
                  "properties": {"held": {"type": "integer", "minimum": 0},
                                 "max_queued": {"type": "integer", "minimum": 1},
                                 "full": {"type": "boolean"}}},
        "database": {"type": "string", "enum": ["ok", "unavailable"],
                     "description": "whether the store of record answers; unavailable: 503"}}},
    "Asset": {"type": "object", "required": ["id", "hash", "name", "size_bytes", "content_type",
                                             "created_at"], "properties": {
        "id": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
        "hash": {"type": "string", "pattern": "^blake3:[0-9a-f]{64}$"},
        "name": {"type": "string", "description": "the uploaded file's name (metadata only)"},
        "size_bytes": {"type": "integer", "minimum": 1},
        "content_type": {"type": "string", "description": "sniffed from the bytes"},
        "created_at": {"type": "string", "format": "date-time"},
        "created_new": {"type": "boolean", "description": "upload answers only: false when "
                                                          "these bytes were already held"}}},
    "Health": {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}},
    "FleetGpu": {"type": "object", "required": ["gpu_id", "reachable", "websocket", "running",
                                                "queue_length"], "properties": {
        "gpu_id": {"type": "integer", "minimum": 0}, "reachable": {"type": "boolean"},
        "websocket": {"type": "string", "enum": ["connected", "disconnected"]},
        "running": {"type": "integer", "minimum": 0,
                    "description": "Cylindria's jobs running on this GPU"},
        "queue_length": {"type": "integer", "minimum": 0,
                         "description": "Cylindria's jobs sent to this GPU, not yet running"}}},
    "FleetNode": {"type": "object", "required": [
        "node", "advertise_url", "live", "lease_age_seconds", "lease_seconds", "started_at",
        "gpus", "held_jobs"], "properties": {
        "node": {"type": "string"}, "advertise_url": {"type": "string"},
        "live": {"type": "boolean", "description": "its lease holds (renewed within "
                                                   "lease_seconds); false once it stopped or died"},
        "lease_age_seconds": {"type": "number", "minimum": 0,
                              "description": "since its last renewal, by the database's clock"},
        "lease_seconds": {"type": "number", "description": "--node-lease of that node"},
        "started_at": {"type": "string", "format": "date-time"},
        "gpus": {"type": "array", "items": _ref("FleetGpu"),
                 "description": "as of its last renewal (every 2 s)"},
        "held_jobs": {"type": "integer", "minimum": 0,
                      "description": "jobs held in its Cylindria queue at its last renewal"}}},
    "Fleet": {"type": "object", "required": ["node", "nodes"], "properties": {
        "node": {"type": "string", "description": "the node that answered"},
        "nodes": {"type": "array", "items": _ref("FleetNode"),
                  "description": "every node that shares this database, live or not, by name"}}},
    "Workflow": {"type": "object", "minProperties": 1, "description":
                 "API-format nodes {id: {class_type, inputs}}, or {prompt: nodes, extra_data, "
                 "webhook}",
                 "additionalProperties": True},
}

def _paths(gpus: int) -> dict:
    """Every operation, with the parameters this host accepts."""
    return {
        "/serverstatus": {"get": {
            "summary": "Live status of a GPU's ComfyUI (GpuId=all: every GPU)",
            "parameters": [_gpu_param("all", gpus, "every GPU, asked in parallel")],
            "responses": {"200": _json("GpuStatusOneOrAll", "Status"), **_errors(400)}}},
        "/startjob/{job_id}": {"put": {
            "summary": "Submit a workflow to a GPU, or to Cylindria's own queue (GpuId=auto), "
                       "exactly once per job id",
            "description": "A pinned job (GpuId=n, or none: GPU 0) is POSTed to that GPU's "
                           "ComfyUI before the answer. A GpuId=auto job is checked against the "
                           "node classes of the reachable GPUs, held in Cylindria's durable "
                           "queue and answered at once (status queued, gpu_id and prompt_id "
                           "null); it is sent to a GPU when one is ready for it.",
            "parameters": [JOB_ID, _gpu_param("auto", gpus, "held in Cylindria's own queue "
                                              "and sent to the first GPU ready for it",
                                              "; or <node>:<n>, GPU n of that node of the fleet "
                                              "(submitted by that node: its answer is this one; "
                                              "this node's own name: GpuId=n)"),
                           PRIORITY, WEBHOOK],
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("Workflow")}}},
            "responses": {"201": _json("Accepted", "Accepted: sent to ComfyUI, or held in "
                                                   "Cylindria's queue (GpuId=auto)"),
                          "200": _json("Accepted", "The same job id and workflow again: the existing job"),
                          **_errors(400, 409, 413, 502, 503, text={
                              400: "Bad request: invalid_job_id, invalid_gpu_id, "
                                   "invalid_parameter (priority), invalid_webhook, invalid_json, "
                                   "ui_format_workflow, invalid_workflow (details: a "
                                   "WorkflowProblem), file_not_allowed (an input names a "
                                   "file the client may not read; details: node_id, input), "
                                   "comfy_rejected (pinned job; details: a ComfyRejection)",
                              409: "job_id_conflict: the id is taken by another workflow; "
                                   "asset_on_other_node: an asset whose file only the disk of "
                                   "the node it was uploaded to holds (kept there before the "
                                   "fleet's database held asset files, until that node's next "
                                   "start)",
                              429: "too_many_requests (--rate-limit, or failed authentications), or "
                                   "queue_full: Cylindria's queue holds --max-queued jobs"})}}},
        "/jobstatus/{job_id}": {"get": {
            "summary": "Where a job stands (with wait: once it has ended)",
            "parameters": [JOB_ID, WAIT],
            "responses": {"200": _json("Job", "The job"),
                          **_errors(400, 404, 503, text=STREAMS_429)}}},
        "/jobevents/{job_id}": {"get": {
            "summary": "Server-Sent Events: `event: status` with the job (as /jobstatus) at once "
                       "and at every status change, `event: progress` with its progress "
                       "object (at most 4 a second), a comment line every 15 s; the stream "
                       "ends after the final status, or at shutdown",
            "parameters": [JOB_ID],
            "responses": {"200": {"description": "The event stream", "content": {
                "text/event-stream": {"schema": {
                    "description": "One event: its name, and its data (one line of JSON: a Job "
                                   "for status, a Progress for progress)",
                    "type": "object", "required": ["event", "data"], "properties": {
                        "event": {"type": "string", "enum": ["status", "progress"]},
                        "data": {"type": "string"}}}}}},
                **_errors(400, 404, 503, text=STREAMS_429)}}},
        "/job/{job_id}": {"delete": {
            "summary": "Cancel a job", "parameters": [JOB_ID],
            "responses": {"200": _json("Job", "Cancelled (it was waiting in a ComfyUI's "
                                              "queue, or in Cylindria's: then it never reaches "
                                              "ComfyUI)"),
                          "202": _json("Job", "Running: interrupt sent, cancel_requested true"),
                          **_errors(400, 404, 409, 502, 503)}}},
        "/jobresult/{job_id}": {"get": {
            "summary": "A completed job's output files", "parameters": [JOB_ID],
            "responses": {"200": _json("ResultList", "Outputs"), **_errors(400, 404, 409, 503)}}},
        "/jobresult/{job_id}/{index}": {"get": {
            "summary": "Download one output file (streamed from ComfyUI)",
            "parameters": [JOB_ID, {"name": "index", "in": "path", "required": True,
                                    "schema": {"type": "integer", "minimum": 0}}],
            "responses": {"200": {"description": "The file", "content": {
                "*/*": {"schema": {"type": "string", "format": "binary"}}}},
                **_errors(400, 404, 409, 502, 503)}}},
        "/jobs": {"get": {
            "summary": "Jobs, newest first",
            "parameters": [
                {"name": "status", "in": "query", "description": "comma-separated statuses; "
                 "queued includes the jobs held in Cylindria's own queue",
                 "schema": {"type": "string", "pattern": f"^{STATUS_LIST}(,{STATUS_LIST})*$"}},
                {"name": "gpu", "in": "query",
                 "schema": {"type": "integer", "minimum": 0, "maximum": gpus - 1}},
                {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
                {"name": "before", "in": "query", "description": "next_before of the previous page",
                 "schema": {"type": "string", "pattern": "^[1-9][0-9]{0,18}$"}},
                {"name": "submitted_by", "in": "query", "description": "the jobs of this key "
                 "name (or JWT subject); a key limited to its own jobs lists only its own",
                 "schema": {"type": "string"}}],
            "responses": {"200": _json("JobList", "A page of jobs"), **_errors(400, 503)}}},
        "/models": {"get": {
            "summary": "The model files the GPUs' ComfyUIs can load, per folder, each with the "
                       "GPUs that have it",
            "description": MODELS_NOTE,
            "responses": {"200": _json("ModelFolders", "Every folder"), **_errors()}}},
        "/models/{folder}": {"get": {
            "summary": "One model folder's files, each with the GPUs that have it",
            "description": MODELS_NOTE, "parameters": [MODEL_FOLDER],
            "responses": {"200": _json("ModelFolder", "The folder"),
                          **_errors(404, text={404: "No GPU's ComfyUI has this folder "
                                                    "(folder_not_found)"})}}},
        "/assets": {"post": {
            "summary": "Upload an input file for workflows (refer to it as {\"__type\": "
                       "\"core/ASSET\", \"info\": {\"id\": ...}} in any input)",
            "parameters": [{"name": "name", "in": "query", "required": False,
                            "description": "the file's name, for a raw body (metadata only)",
                            "schema": {"type": "string"}}],
            "requestBody": {"required": True, "content": {
                "multipart/form-data": {"schema": {"type": "object", "required": ["file"],
                                                   "properties": {"file": {
                                                       "type": "string", "format": "binary",
                                                       "minLength": 1}}}},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary",
                                                        "minLength": 1}}}},
            "responses": {"201": _json("Asset", "Stored"),
                          "200": _json("Asset", "These bytes were already held"),
                          **_errors(400, 413, text={413: "Over --max-asset-mb (asset_too_large)"})}}},
        "/assets/by-hash/{hash}": {"get": {
            "summary": "Whether Cylindria holds these bytes (HEAD too): skip a re-upload",
            "parameters": [ASSET_HASH],
            "responses": {"200": _json("Asset", "Held"), **_errors(404)}}},
        "/assets/{asset_id}": {
            "get": {"summary": "An asset's metadata", "parameters": [ASSET_ID],
                    "responses": {"200": _json("Asset", "The asset"), **_errors(404)}},
            "delete": {"summary": "Remove an asset", "parameters": [ASSET_ID],
                       "responses": {"200": _json("Asset", "Removed"),
                                     **_errors(404, 409, text={409: "An unfinished job needs "
                                                                    "it (asset_in_use)"})}}},
        "/assets/{asset_id}/content": {"get": {
            "summary": "An asset's bytes (Range supported)", "parameters": [ASSET_ID],
            "responses": {"200": {"description": "The file", "content": {
                "*/*": {"schema": {"type": "string", "format": "binary"}}}},
                "206": {"description": "Part of the file", "content": {
                    "*/*": {"schema": {"type": "string", "format": "binary"}}}},
                "304": {"description": "Not modified"},
                "416": {"description": "Range not satisfiable"},
                **_errors(404, 409, 503, text={
                    409: "asset_on_other_node: its file is only on the disk of the node it "
                         "was uploaded to (see startjob)",
                    503: "database_unavailable: the file is not on this node, and the "
                         "database it is fetched from cannot be reached"})}}},
        "/fleet": {"get": {
            "summary": "Every node of the fleet (the Cylindrias sharing this database; on "
                       "SQLite, this one) with its lease, GPUs and held jobs",
            "description": "Read from the database: what each node said of itself at its last "
                           "lease renewal (every 2 s). /serverstatus stays about this node.",
            "responses": {"200": _json("Fleet", "The fleet"), **_errors(503)}}},
        "/health": {"get": {"summary": "The process is alive", "security": [],
                            "responses": {"200": _json("Health", "Alive")}}},
        "/ready": {"get": {"summary": "Reconciled, at least one GPU reachable, room in "
                                      "Cylindria's queue, and its database answering",
                           "security": [],
                           "responses": {"200": _json("Ready", "Ready"),
                                         "503": _json("Ready", "Still reconciling, no GPU "
                                                      "reachable, Cylindria's queue full, or "
                                                      "its database unreachable")}}},
        "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {
            "200": {"description": "Text format", "content": {"text/plain": {"schema": {"type": "string"}}}},
            **_errors()}}},
        "/docs": {"get": {
            "summary": "Swagger UI over this document, every file from Cylindria itself "
                       "(--docs-public: no key needed for it, its files and this document)",
            "responses": {"200": {"description": "The page", "content": {
                "text/html": {"schema": {"type": "string"}}}}, **_errors()}}},
        "/docs/static/{filename}": {"get": {
            "summary": "The Swagger UI files the page loads",
            "parameters": [{"name": "filename", "in": "path", "required": True,
                            "schema": {"type": "string"}}],
            "responses": {"200": {"description": "The file", "content": {
                "*/*": {"schema": {"type": "string", "format": "binary"}}}},
                **_errors(404)}}},
        "/openapi.json": {"get": {"summary": "This document", "responses": {
            "200": {"description": "OpenAPI 3", "content": {"application/json": {"schema": {"type": "object"}}}},
            **_errors()}}},
    }


def document(gpus: int) -> dict:
    """The whole OpenAPI document, for a host with `gpus` GPUs."""
    return {"openapi": "3.0.3",
            "info": {"title": "Cylindria", "version": "0.1.0",
                     "description": "Authenticated REST API in front of a GPU host's ComfyUI instances"},
            "security": [{"ApiKey": []}, {"Bearer": []}],
            "components": {"securitySchemes": {
                "ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "Bearer": {"type": "http", "scheme": "bearer", "description": "an API key, "
                           "or (with --jwt-*) a JWT signed by a key of the configured JWKS"}},
                "schemas": {**SCHEMAS, **v2_openapi.SCHEMAS}},
            "paths": {**_paths(gpus), **v2_openapi.paths()}}


@bp.get("/openapi.json")
def openapi_json():
    """Serve the document."""
    return jsonify(document(ctx().config.gpus))


def init_app(app: Flask) -> None:
    """Serve /openapi.json."""
    app.register_blueprint(bp)
