"""Parsing startjob bodies: what is accepted, and the contract's error for what is not."""
import json

import pytest

from comfy.inputs.workflow import WorkflowError, fingerprint, parse_workflow

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


def test_a_lone_surrogate_escape_is_invalid_json_and_a_pair_is_a_character():
    lone = b'{"1": {"class_type": "SaveImage", "inputs": {"filename_prefix": "a\\ud800b"}}}'
    assert error_code(lone) == "invalid_json"
    pair = b'{"1": {"class_type": "SaveImage", "inputs": {"filename_prefix": "a\\ud83d\\ude00"}}}'
    assert parse_workflow(pair).prompt["1"]["inputs"]["filename_prefix"] == "a\U0001F600"


@pytest.mark.parametrize("depth, refused", [(100, False), (101, True)])
def test_nesting_is_counted_to_the_limit(depth, refused):
    value = 0
    for _ in range(depth - 3):  # the document, the node and its inputs are 3 levels
        value = [value]
    raw = body({"1": {"class_type": "X", "inputs": {"v": value}}})
    if refused:
        assert error_code(raw) == "invalid_json"
    else:
        parse_workflow(raw)
