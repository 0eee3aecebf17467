"""The Comfy API v2 operations in Cylindria's /openapi.json: v2's own schemas (as comfy-sdk
0.5.0's models and Comfy-Org's spec give them), under names starting with `V2`."""
from __future__ import annotations

from cylindria.web.openapi_headers import limit_headers

NULLABLE_STR = {"type": "string", "nullable": True}
TIME = {"type": "string", "format": "date-time"}
NULLABLE_TIME = {**TIME, "nullable": True}
STATUSES = ["queued", "running", "succeeded", "canceling", "canceled", "failed", "expired"]
STATUS_LIST = "^({0})(,({0}))*$".format("|".join(STATUSES))
# A value that is text on the wire (a multipart field, a query value): anything sent is text.
TEXT_FIELD = {"description": "text"}
BINARY = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(name: str, description: str, headers: dict | None = None) -> dict:
    answer = {"description": description, "content": {"application/json": {"schema": _ref(name)}}}
    if headers:
        answer["headers"] = headers
    return answer


ERROR_TEXT = {400: "invalid_request (a field or parameter of the wrong shape), invalid_cursor, "
                   "invalid_webhook",
              401: "unauthorized: missing or wrong key (Authorization: Bearer <key>)",
              403: "forbidden", 404: "not_found (blob_not_found for from-hash)",
              405: "method not allowed",
              409: "hash_mismatch, asset_in_use, or asset_on_other_node (an asset whose file "
                   "only the disk of the node it was uploaded to holds)",
              413: "payload_too_large, or asset_too_large",
              416: "range_not_satisfiable",
              422: "invalid_workflow, workflow_format_ui, missing_asset, file_not_allowed, "
                   "metadata_invalid, invalid_request (priority), idempotency_key_reuse",
              429: "too_many_requests (--rate-limit, or failed authentications), queue_full, "
                   "too_many_streams, or too_many_downloads",
              502: "upstream_error: ComfyUI answered something unusable",
              503: "upstream_unreachable: ComfyUI cannot be reached; or starting"}


def _errors(*statuses: int) -> dict:
    """v2 error answers (the envelope) for these statuses, plus 401 and 429."""
    answers = {}
    for status in statuses + (401, 429):
        answers[str(status)] = _json("V2ErrorEnvelope", ERROR_TEXT[status])
        if status in (429, 503):
            answers[str(status)]["headers"] = limit_headers(status)
    return answers


JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}
ASSET_ID = {"name": "asset_id", "in": "path", "required": True, "schema": {"type": "string"},
            "description": "an uploaded asset's id, or an output's (`<job id>~<index>`)"}
IDEMPOTENCY_KEY = {"name": "Idempotency-Key", "in": "header", "required": False,
                   "description": "Stripe semantics: a retry with the same key and body is "
                                  "answered with the same job (Idempotency-Replayed: true) and "
                                  "never runs twice; the same key with another body is 422 "
                                  "idempotency_key_reuse",
                   "schema": {"type": "string", "pattern": "^[!-~]{1,255}$"}}

UPLOAD_IDEMPOTENCY_KEY = {**IDEMPOTENCY_KEY, "description": "accepted for v2 clients; assets "
                          "are content-addressed, so a retried upload never stores twice"}

SCHEMAS = {
    "V2ErrorEnvelope": {"type": "object", "required": ["error"], "properties": {"error": {
        "type": "object", "required": ["code", "message", "details"], "properties": {
            "code": {"type": "string"}, "message": {"type": "string"},
            "details": {"type": "object", "nullable": True, "additionalProperties": True}}}}},
    "V2Progress": {"type": "object", "nullable": True,
                   "required": ["value", "nodes_done", "nodes_total"], "properties": {
        "value": {"type": "number", "minimum": 0, "maximum": 1},
        "nodes_done": {"type": "integer"}, "nodes_total": {"type": "integer"},
        "current_node": NULLABLE_STR, "current_node_class": NULLABLE_STR,
        "step": {"type": "integer", "nullable": True}, "steps": {"type": "integer", "nullable": True},
        "message": NULLABLE_STR}},
    "V2JobError": {"type": "object", "nullable": True, "required": ["code", "message"],
                   "description": "job_lost (its ComfyUI lost it: never a success), "
                                  "node_execution_error, invalid_workflow, missing_asset, "
                                  "partner_key_lost, internal_error, execution_failed",
                   "properties": {"code": {"type": "string"}, "message": {"type": "string"},
                                  "node_id": NULLABLE_STR, "class_type": NULLABLE_STR,
                                  "traceback": NULLABLE_STR}},
    "V2Output": {"type": "object", "required": [
        "node_id", "name", "type", "content_type", "size_bytes", "id", "hash", "url",
        "url_expires_at"], "properties": {
        "node_id": {"type": "string"}, "name": {"type": "string"},
        "type": {"type": "string", "enum": ["image", "video", "audio", "text", "file", "latent"]},
        "content_type": {"type": "string"}, "size_bytes": {"type": "integer", "minimum": 0},
        "id": {"type": "string"}, "hash": NULLABLE_STR, "url": {"type": "string", "format": "uri"},
        "url_expires_at": TIME, "job_id": NULLABLE_STR}},
    "V2JobUrls": {"type": "object", "required": ["self", "events", "cancel"], "properties": {
        "self": {"type": "string"}, "events": {"type": "string"}, "cancel": {"type": "string"}}},
    "V2JobSummary": {"type": "object", "required": [
        "id", "status", "created_at", "started_at", "completed_at", "create_time",
        "update_time", "queue_position", "error", "metadata", "priority", "urls"], "properties": {
        "id": {"type": "string"}, "status": {"type": "string", "enum": STATUSES},
        "created_at": TIME, "started_at": NULLABLE_TIME, "completed_at": NULLABLE_TIME,
        "create_time": TIME, "update_time": TIME,
        "queue_position": {"type": "integer", "nullable": True, "minimum": 0},
        "error": _ref("V2JobError"),
        "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
        "priority": {"type": "integer"}, "gpu_id": {"type": "integer", "nullable": True},
        "attempts": {"type": "integer"}, "urls": _ref("V2JobUrls")}},
    "V2Job": {"allOf": [_ref("V2JobSummary"), {
        "type": "object", "required": ["expires_at", "progress", "outputs"], "properties": {
            "expires_at": TIME, "progress": _ref("V2Progress"),
            "outputs": {"type": "array", "items": _ref("V2Output")},
            "metrics": {"type": "object", "additionalProperties": {
                "type": "integer", "nullable": True}}}}]},
    "V2JobList": {"type": "object", "required": ["jobs", "next_cursor"], "properties": {
        "jobs": {"type": "array", "items": _ref("V2JobSummary")}, "next_cursor": NULLABLE_STR}},
    "V2JobWorkflow": {"type": "object", "required": ["workflow", "format"], "properties": {
        "workflow": {"type": "object", "additionalProperties": True},
        "format": {"type": "string", "enum": ["api", "save"]}}},
    "V2Asset": {"type": "object", "required": [
        "id", "hash", "size_bytes", "content_type", "created_at", "url", "url_expires_at"],
        "properties": {
            "id": {"type": "string"}, "hash": NULLABLE_STR, "size_bytes": {"type": "integer"},
            "content_type": {"type": "string"}, "file_path": NULLABLE_STR,
            "created_new": {"type": "boolean"}, "created_at": TIME,
            "url": {"type": "string", "format": "uri"}, "url_expires_at": TIME,
            "expires_at": NULLABLE_TIME, "job_id": NULLABLE_STR}},
    "V2SubmitJob": {"type": "object", "required": ["workflow"], "properties": {
        "workflow": {"type": "object", "minProperties": 1, "additionalProperties": _ref("V2Node"),
                     "description": "API-format graph; an input may be a core/ASSET reference"},
        "extra_data": {"type": "object", "minProperties": 1, "additionalProperties": False,
                       "description": "credentials for partner nodes: sent to ComfyUI, never "
                                      "stored or logged",
                       "properties": {"api_key_comfy_org": {"type": "string", "minLength": 1},
                                      "auth_token_comfy_org": {"type": "string", "minLength": 1}}},
        "metadata": {"type": "object", "maxProperties": 16,
                     "additionalProperties": {"type": "string", "maxLength": 512}},
        "priority": {"type": "integer", "minimum": -100, "maximum": 100, "default": 0},
        "webhook_url": _ref("WebhookUrl")}},
    "V2Node": {"type": "object", "required": ["class_type", "inputs"], "properties": {
        "class_type": {"type": "string", "minLength": 1},
        "inputs": {"type": "object", "additionalProperties": True}}},
    "V2Health": {"type": "object", "required": ["status"], "properties": {
        "status": {"type": "string"}}},
}


def paths(prefix: str = "/api/v2") -> dict:
    """The v2 operations, under `prefix`."""
    return {
        f"{prefix}/jobs": {
            "post": {"summary": "v2: submit a workflow to Cylindria's queue (any free GPU)",
                     "tags": ["Comfy API v2"], "security": [{"Bearer": []}, {"ApiKey": []}],
                     "parameters": [IDEMPOTENCY_KEY],
                     "requestBody": {"required": True, "content": {
                         "application/json": {"schema": _ref("V2SubmitJob")}}},
                     "responses": {"201": _json("V2Job", "Queued (or, with a replayed "
                                                "Idempotency-Key, the job it names)", {
                         "Idempotency-Replayed": {"schema": {"type": "boolean"}}}),
                         **_errors(400, 413, 422, 503)}},
            "get": {"summary": "v2: jobs, newest first", "tags": ["Comfy API v2"],
                    "parameters": [
                        {"name": "limit", "in": "query",
                         "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 50}},
                        {"name": "cursor", "in": "query", "description": "next_cursor of the "
                         "previous page", "schema": {"type": "string", "pattern": "^[1-9][0-9]{0,18}$"}},
                        {"name": "status", "in": "query", "description": "comma-separated v2 "
                         "statuses", "schema": {"type": "string", "pattern": STATUS_LIST}},
                        {"name": "metadata", "in": "query", "style": "deepObject",
                         "explode": True, "description": "metadata[<key>]=<value>: labels "
                         "every job listed has (a key no job has matches none)",
                         "schema": {"type": "object", "additionalProperties": TEXT_FIELD}}],
                    "responses": {"200": _json("V2JobList", "A page"), **_errors(400, 503)}}},
        f"{prefix}/jobs/{{job_id}}": {"get": {
            "summary": "v2: a job", "tags": ["Comfy API v2"], "parameters": [JOB_ID],
            "responses": {"200": _json("V2Job", "The job"), **_errors(404, 503)}}},
        f"{prefix}/jobs/{{job_id}}/workflow": {"get": {
            "summary": "v2: the workflow a job was submitted with", "tags": ["Comfy API v2"],
            "parameters": [JOB_ID],
            "responses": {"200": _json("V2JobWorkflow", "The workflow"), **_errors(404, 503)}}},
        f"{prefix}/jobs/{{job_id}}/cancel": {"post": {
            "summary": "v2: cancel a job (idempotent)", "tags": ["Comfy API v2"],
            "parameters": [JOB_ID],
            "responses": {"200": _json("V2Job", "canceled, canceling, or as it ended"),
                          **_errors(404, 502, 503)}}},
        f"{prefix}/jobs/{{job_id}}/events": {"get": {
            "summary": "v2: Server-Sent Events (status, progress, output); ends after the "
                       "terminal status", "tags": ["Comfy API v2"], "parameters": [JOB_ID],
            "responses": {"200": {"description": "The stream", "content": {
                "text/event-stream": {"schema": {
                    "description": "One event: its name, and its data (one line of JSON: "
                                   "{status, queue_position} for status, a V2Progress for "
                                   "progress, a V2Output for output)",
                    "type": "object", "required": ["event", "data"], "properties": {
                        "event": {"type": "string", "enum": ["status", "progress", "output"]},
                        "data": {"type": "string"}}}}}}, **_errors(404, 503)}}},
        f"{prefix}/assets": {"post": {
            "summary": "v2: upload an asset", "tags": ["Comfy API v2"],
            "parameters": [UPLOAD_IDEMPOTENCY_KEY],
            "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                "type": "object", "required": ["file"], "properties": {
                    "file": {"type": "string", "format": "binary", "minLength": 1},
                    "file_path": TEXT_FIELD, "content_type": TEXT_FIELD,
                    "expected_hash": {"type": "string", "pattern": "^blake3:[0-9a-f]{64}$",
                                      "description": "the bytes' hash; 409 hash_mismatch if "
                                                     "they hash otherwise"},
                    "tags": {**TEXT_FIELD, "description": "ignored: Cylindria keeps no tags"}}}}}},
            "responses": {"201": _json("V2Asset", "Stored"),
                          "200": _json("V2Asset", "These bytes were already held"),
                          **_errors(400, 409, 413)}}},
        f"{prefix}/assets/from-hash": {"post": {
            "summary": "v2: the asset holding bytes of this hash", "tags": ["Comfy API v2"],
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "required": ["hash"], "properties": {
                    "hash": {"type": "string"}, "file_path": {"type": "string"},
                    "tags": {"type": "array", "items": {"type": "string"}}}}}}},
            "responses": {"200": _json("V2Asset", "Held"), **_errors(400, 404)}}},
        f"{prefix}/assets/by-hash/{{hash}}": {"head": {
            "summary": "v2: whether Cylindria holds these bytes", "tags": ["Comfy API v2"],
            "parameters": [{"name": "hash", "in": "path", "required": True,
                            "schema": {"type": "string"}}],
            "responses": {"200": {"description": "Held"}, "404": {"description": "Not held"},
                          "401": {"description": "unauthorized"},
                          "429": {"description": "too_many_requests", "headers": limit_headers(429)}}}},
        f"{prefix}/assets/{{asset_id}}": {
            "get": {"summary": "v2: an asset (or a job's output)", "tags": ["Comfy API v2"],
                    "parameters": [ASSET_ID],
                    "responses": {"200": _json("V2Asset", "The asset"), **_errors(404)}},
            "delete": {"summary": "v2: remove an uploaded asset", "tags": ["Comfy API v2"],
                       "parameters": [ASSET_ID],
                       "responses": {"204": {"description": "Removed"},
                                     **_errors(403, 404, 409)}}},
        f"{prefix}/assets/{{asset_id}}/content": {"get": {
            "summary": "v2: an asset's or output's bytes (Range supported)",
            "tags": ["Comfy API v2"],
            "parameters": [ASSET_ID, {"name": "Range", "in": "header", "required": False,
                                      "schema": {"type": "string"}}],
            "responses": {"200": {"description": "The file", "content": BINARY},
                          "206": {"description": "Part of the file", "content": BINARY},
                          "304": {"description": "Not modified"},
                          **_errors(404, 409, 416, 502, 503)}}},
        f"{prefix}/health": {"get": {
            "summary": "v2: the process is alive (no key)", "tags": ["Comfy API v2"],
            "security": [], "responses": {"200": _json("V2Health", "Alive")}}},
    }
