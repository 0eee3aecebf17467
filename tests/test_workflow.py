"""Parsing startjob bodies: what is accepted, and the contract's error for what is not."""
import json

import pytest

from comfy.workflow import WorkflowError, fingerprint, parse_workflow

CORE = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}}}


def body(value) -> bytes:
    return json.dumps(value).encode()


def error_code(raw: bytes) -> str:
    with pytest.raises(WorkflowError) as info:
        parse_workflow(raw)
    return info.value.code


def test_bare_nodes_are_the_prompt():
    workflow = parse_workflow(body(CORE))
    assert workflow.prompt == CORE and workflow.extra_data == {}


def test_wrapped_body_keeps_extra_data_and_drops_client_fields():
    wrapped = {"prompt": CORE, "extra_data": {"extra_pnginfo": {"a": 1}},
               "client_id": "theirs", "prompt_id": "theirs", "front": True}
    workflow = parse_workflow(body(wrapped))
    payload = workflow.payload("ours", "pid")
    assert payload == {"prompt": CORE, "client_id": "ours", "prompt_id": "pid",
                       "extra_data": {"extra_pnginfo": {"a": 1}}}


def test_same_nodes_same_fingerprint_whatever_the_key_order():
    reordered = {"2": CORE["2"], "1": CORE["1"]}
    assert parse_workflow(body(reordered)).fingerprint == parse_workflow(body(CORE)).fingerprint
    assert fingerprint(CORE) != fingerprint({**CORE, "3": CORE["1"]})


@pytest.mark.parametrize("raw", [b"", b"   ", b"{not json", b"\xff\xfe{}", b'{"a": 1, "a": 2}',
                                 b"[" * 100000 + b"]" * 100000])
def test_unparseable_bodies_are_invalid_json(raw):
    assert error_code(raw) == "invalid_json"


@pytest.mark.parametrize("value", [[], "text", 3, None, {}, {"1": "node"}, {"1": {"inputs": {}}},
                                   {"1": {"class_type": "X"}}, {"1": {"class_type": "", "inputs": {}}},
                                   {"1": {"class_type": "X", "inputs": []}}, {"prompt": []},
                                   {"prompt": CORE, "extra_data": []}, {"prompt": {}}])
def test_non_workflows_are_invalid_workflow(value):
    assert error_code(body(value)) == "invalid_workflow"


def test_ui_format_is_refused_with_the_export_hint():
    with pytest.raises(WorkflowError) as info:
        parse_workflow(body({"nodes": [], "links": [], "version": 0.4}))
    assert info.value.code == "ui_format_workflow"
    assert "Save (API)" in info.value.message
