"""Turn a request body into the prompt ComfyUI runs, refusing what it could never run."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field

import orjson

from comfy.encoding import from_json, to_json


MAX_DEPTH = 100  # workflows nest a few levels; far deeper only breaks encoders further on
# extra_data entries that are credentials: the Comfy API key partner (API) nodes authenticate
# with, and the frontend's login token. ComfyUI strips them from its history; Cylindria
# forwards them to ComfyUI and never writes them anywhere (see Workflow.withheld).
SECRET_EXTRA_KEYS = frozenset({"api_key_comfy_org", "auth_token_comfy_org"})
WITHHELD = "cylindria_withheld"  # in a stored body: the names of the secrets left out of it


class WorkflowError(ValueError):
    """A body that is not an API-format workflow; `code` is the contract's error code."""

    def __init__(self, code: str, message: str, details=None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details


@dataclass(frozen=True)
class Workflow:
    """The nodes to run, the extra_data to pass along, a fingerprint for idempotent retries,
    and the body to keep until the job ends (a held job is sent from it).

    `withheld` holds the credentials of extra_data (SECRET_EXTRA_KEYS): they are sent to
    ComfyUI but are in neither `extra_data` nor `source`, so they never reach the disk. A
    workflow read back from its stored body knows only their names (`withheld_names`)."""

    prompt: dict
    extra_data: dict
    fingerprint: str
    source: bytes = b""
    withheld: dict = field(default_factory=dict)
    withheld_names: tuple = ()
    webhook: str | None = None  # the URL to tell when the job starts and ends
    asked_webhook: object = None  # a wrapped body's "webhook", as sent (checked by the caller)

    def payload(self, client_id: str, prompt_id: str, prompt: dict | None = None) -> dict:
        """The body of POST /prompt: nothing but what ComfyUI needs to run and target it
        (`prompt`: these nodes instead, e.g. with asset references made file names)."""
        return {"prompt": self.prompt if prompt is None else prompt, "client_id": client_id,
                "prompt_id": prompt_id,
                "extra_data": {**self.extra_data, **self.withheld} if self.withheld
                else self.extra_data}

    def with_webhook(self, url: str | None) -> "Workflow":
        """This workflow, to be reported to `url`. The webhook is part of the submission, so
        it joins the fingerprint: a retry with another webhook is another submission (409)."""
        if url is None:
            return self
        told = hashlib.blake2b(f"{self.fingerprint}\0webhook\0{url}".encode(), digest_size=16)
        return dataclasses.replace(self, webhook=url, fingerprint=told.hexdigest())

    def with_secrets(self, secrets: dict) -> "Workflow":
        """This workflow with its withheld credentials given back (kept in memory only)."""
        return dataclasses.replace(self, withheld=dict(secrets))


def parse_workflow(body: bytes) -> Workflow:
    """Parse and check a startjob body: bare nodes, or {"prompt": ..., "extra_data": ...}."""
    return _parse(body)


def _parse(body: bytes) -> Workflow:
    document = load_json(body)
    if not isinstance(document, dict):
        raise WorkflowError("invalid_workflow", "the workflow must be a JSON object of nodes")
    refuse_ui_format(document)
    prompt, extra_data = _unwrap(document)
    # A client's own "cylindria_withheld" would claim credentials it never gave: not kept.
    workflow = workflow_of(prompt, extra_data, None if WITHHELD in document else bytes(body))
    if "prompt" in document and document.get("webhook") is not None:
        workflow = dataclasses.replace(workflow, asked_webhook=document["webhook"])
    return workflow


def workflow_of(prompt: dict, extra_data: dict, body: bytes | None = None) -> Workflow:
    """A checked Workflow of these nodes and extra_data. The body kept is `body` (as the
    client sent it) unless extra_data holds credentials, which are taken out of it."""
    _check_nodes(prompt)
    secrets = {k: v for k, v in extra_data.items() if k in SECRET_EXTRA_KEYS}
    if secrets or body is None:
        extra_data = {k: v for k, v in extra_data.items() if k not in SECRET_EXTRA_KEYS}
        kept = {"prompt": prompt, "extra_data": extra_data}
        if secrets:
            kept[WITHHELD] = sorted(secrets)
        body = to_json(kept)
    return Workflow(prompt, extra_data, fingerprint(prompt), body, secrets, tuple(sorted(secrets)))


def without_secrets(body: bytes) -> bytes:
    """A body as a copy of it may be kept (--dev): the values of a wrapped body's credentials
    replaced; a body that names one and is not JSON is not kept at all."""
    if not any(name.encode() in body for name in SECRET_EXTRA_KEYS):
        return body
    try:
        document = load_json(body)
    except WorkflowError:
        return b"(not JSON, and it names a credential: not kept)"
    extra = document.get("extra_data") if isinstance(document, dict) else None
    if isinstance(extra, dict):
        document = {**document, "extra_data": {
            k: "(withheld)" if k in SECRET_EXTRA_KEYS else v for k, v in extra.items()}}
    return to_json(document)


def parse_stored(body: bytes) -> Workflow:
    """A workflow read back from the job store: the names of the credentials left out of it
    are known, their values are not (comfy.jobs.withheld keeps those, in memory)."""
    workflow = _parse(body)
    if WITHHELD.encode() not in body:
        return workflow
    document = from_json(body)
    names = document.get(WITHHELD) if isinstance(document, dict) and "prompt" in document else None
    if not names:
        return workflow
    return dataclasses.replace(workflow, withheld_names=tuple(names))


def refuse_ui_format(document: dict) -> None:
    """A UI-format export (nodes/links arrays) is not a workflow ComfyUI can run."""
    if isinstance(document.get("nodes"), list) and isinstance(document.get("links"), list):
        raise WorkflowError(
            "ui_format_workflow",
            'this is a UI-format workflow (nodes/links); in ComfyUI enable the dev mode '
            'options and export it with "Save (API)", then send that file')


def fingerprint(prompt: dict) -> str:
    """A stable hash of the nodes: the same workflow gives the same fingerprint."""
    return hashlib.blake2b(_canonical(prompt), digest_size=16).hexdigest()


def _canonical(prompt: dict) -> bytes:
    """The nodes as compact UTF-8 JSON with sorted keys: the bytes the fingerprint hashes.

    Fingerprints are stored (a retry is matched against them), so these bytes never change:
    they are the standard library's. orjson writes the same bytes in a third of the time
    (16 us instead of 59 for 60 nodes, 1.8 instead of 5.6 for the core workflow) but for
    floats below 1e-4 ("0.00001" where json writes "1e-05"; the same bytes otherwise, checked
    over a million values of every kind), so its output is taken unless it holds such a
    float, or merely text that looks like one.
    """
    try:
        canonical = orjson.dumps(prompt, option=orjson.OPT_SORT_KEYS)
        if b"0.0000" not in canonical and b"e-" not in canonical:
            return canonical
    except TypeError:
        pass  # an integer beyond 64 bits, a lone surrogate: the standard library decides
    text = json.dumps(prompt, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        # JSON lets "\ud800" through, but a lone surrogate is no character: ComfyUI could
        # neither save nor show it.
        raise WorkflowError("invalid_json", "the workflow holds a \\u escape of a lone "
                            "surrogate (\\ud800-\\udfff), which is not a character") from exc


def load_json(body: bytes):
    """JSON from bytes, refusing invalid UTF-8, duplicate keys and absurd nesting."""
    if not body or not body.strip():
        raise WorkflowError("invalid_json", "the request body is empty; send the workflow as JSON")
    try:
        text = body.decode("utf-8-sig")
        document = json.loads(text, object_pairs_hook=_no_duplicates,
                              parse_constant=_no_constant, parse_float=_finite_float)
    except UnicodeDecodeError as exc:
        raise WorkflowError("invalid_json", "the request body is not valid UTF-8") from exc
    except RecursionError as exc:
        raise WorkflowError("invalid_json", "the request body is nested too deeply") from exc
    except ValueError as exc:
        raise WorkflowError("invalid_json", f"the request body is not valid JSON: {exc}") from exc
    if _too_deep(document, MAX_DEPTH):
        raise WorkflowError("invalid_json", f"the request body is nested deeper than {MAX_DEPTH} levels")
    return document


def _no_constant(name: str):
    """NaN and Infinity are not JSON, and ComfyUI could not be sent them."""
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    """A float that fits (1e400 would become infinity)."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def _too_deep(document, limit: int) -> bool:
    """True when objects and arrays nest deeper than `limit`: checked level by level, without
    recursion, one comprehension per level (a 60-node workflow is 5 levels)."""
    level = [document] if document.__class__ in _CONTAINERS else []
    for _ in range(limit):
        level = [child for value in level
                 for child in (value.values() if value.__class__ is dict else value)
                 if child.__class__ in _CONTAINERS]
        if not level:
            return False
    return True


_CONTAINERS = (dict, list)  # json.loads builds only these (our object hook returns a dict)


def _no_duplicates(pairs: list) -> dict:
    """Refuse an object with a key twice: which node wins would be a guess."""
    result = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _unwrap(document: dict) -> tuple[dict, dict]:
    """The nodes and extra_data of a wrapped body, or the body itself as the nodes."""
    if "prompt" not in document:
        return document, {}
    prompt, extra_data = document["prompt"], document.get("extra_data", {})
    if not isinstance(prompt, dict):
        raise WorkflowError("invalid_workflow", '"prompt" must be an object of nodes')
    if not isinstance(extra_data, dict):
        raise WorkflowError("invalid_workflow", '"extra_data" must be an object')
    return prompt, extra_data


def _check_nodes(prompt: dict) -> None:
    """Every node needs a class_type string and an inputs object."""
    if not prompt:
        raise WorkflowError("invalid_workflow", "the workflow has no nodes")
    for node_id, node in prompt.items():
        if not isinstance(node, dict):
            raise WorkflowError("invalid_workflow", f"node {node_id} is not an object",
                                {"node_id": node_id})
        if not isinstance(node.get("class_type"), str) or not node["class_type"]:
            raise WorkflowError("invalid_workflow", f"node {node_id} has no class_type",
                                {"node_id": node_id})
        if not isinstance(node.get("inputs"), dict):
            raise WorkflowError("invalid_workflow", f"node {node_id} has no inputs object",
                                {"node_id": node_id})
