"""Hypothesis properties of what clients put in paths, query strings and bodies.

Job ids, GpuId values and workflow shapes (wrapped, UI-format, nested, huge, non-object,
invalid UTF-8, duplicated keys, deeply nested): each gets the contract's error and leaves
no job behind. Most run on Flask's test client (create_app, no thread, no socket), where no
ComfyUI call happens; a few go through the real server. Examples per property: 100, ten
times as many with --soak.
"""
from __future__ import annotations

import json
import re
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from comfy.inputs.fileinputs import unsafe_path
from cylindria.config.options import Config
from cylindria.service.core import build_core
from tests import workflows
from tests.conftest import make_config
from tests.helpers import API_KEY
from cylindria.web.app import create_app

KEY = {"X-API-Key": API_KEY}
EXAMPLES = 100
GPUS = 2
CONTRACT_JOB_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
ASCII_GPU = re.compile(r"[0-9]{1,3}")  # the contract's "integer", as /openapi.json spells it
LIMIT = Config().max_body_bytes  # --max-body-mb's default


def for_all(strategy, check, soak: bool, examples: int = EXAMPLES, always=()) -> None:
    """Check `check(value)` for `examples` values of `strategy` (ten times as many with --soak),
    and for each value of `always` (known traps, tried on every run whatever the seed)."""
    run = settings(max_examples=examples * (10 if soak else 1), deadline=None, database=None,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                          HealthCheck.large_base_example])
    test = given(strategy)(check)
    for value in always:
        test = example(value)(test)
    run(test)()


@pytest.fixture
def client(fakes, tmp_path):
    """Flask's test client of an app in front of the two fakes (tracking not started)."""
    core = build_core(make_config(fakes, tmp_path))
    yield create_app(core).test_client()
    core.close()


def no_job_left(client) -> None:
    """The refusal left nothing in the store."""
    assert client.get("/jobs", headers=KEY).get_json()["jobs"] == []


def assert_error(response, status: int, code: str, sent=None) -> None:
    """The contract's JSON error, with that status and code."""
    body = response.get_json()
    assert (response.status_code, body and body.get("code")) == (status, code), \
        f"{sent!r}: {response.data[:300]!r}"
    assert isinstance(body["error"], str) and body["error"]


# -- job ids ------------------------------------------------------------------------------
VALID_CHARS = "abcXYZ019._-"
job_ids = st.one_of(
    st.text(alphabet=VALID_CHARS, min_size=1, max_size=140),
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="/"), max_size=140),
    st.sampled_from(["", ".", "..", "...", "a" * 128, "a" * 129, "%2e%2e", "a b", "ü", "a\x00"]))
JOB_ID_TRAPS = ["0\n", "a\nb", "\u0661", "a" * 129, ".."]


def contract_valid(job_id: str) -> bool:
    """The contract: 1 to 128 of A-Z a-z 0-9 . _ - (nothing else, in any script)."""
    return CONTRACT_JOB_ID.fullmatch(job_id) is not None


def test_job_ids_are_checked_before_anything_else(client, soak):
    """An id breaking the rule is 400 invalid_job_id on every endpoint; a valid unknown one 404."""
    def check(job_id):
        path = quote(job_id, safe="")
        for method, url in (("GET", f"/jobstatus/{path}"), ("GET", f"/jobresult/{path}"),
                            ("DELETE", f"/job/{path}")):
            response = client.open(url, method=method, headers=KEY)
            if contract_valid(job_id):
                assert_error(response, 404, "job_not_found", (method, url))
                assert response.get_json()["error"] == "job not found"
            else:
                assert_error(response, 400, "invalid_job_id", (method, url))
    for_all(job_ids, check, soak, always=JOB_ID_TRAPS)


def test_a_bad_job_id_submits_nothing(client, fakes, soak):
    """startjob with a bad id and a good workflow: 400 invalid_job_id, no job, no prompt."""
    def check(job_id):
        assume(not contract_valid(job_id))
        response = client.put(f"/startjob/{quote(job_id, safe='')}", json=workflows.core(),
                              headers=KEY)
        assert_error(response, 400, "invalid_job_id", job_id)
    for_all(job_ids, check, soak, always=[t for t in JOB_ID_TRAPS if not contract_valid(t)])
    no_job_left(client)
    assert [f.prompts_received() for f in fakes] == [[], []]


# -- GpuId ----------------------------------------------------------------------------------
gpu_values = st.one_of(
    st.text(max_size=6), st.integers(-5, 1005).map(str),
    st.sampled_from(["0", "1", "2", "00", "01", " 1 ", "all", "ALL", "auto", "Auto", "-0",
                     "+1", "1.0", "0x1", "1e0", "\u0661", "\uff11", "\U0001d7cf", "\u00b9"]))
# Digits of other scripts: int() reads them, the document's [0-9] does not.
GPU_TRAPS = ["\u0661", "\uff11", "\U0001d7cf", "\u0967"]


def gpu_verdict(raw: str, word: str) -> str:
    """"valid" for an index 0..GPUS-1 in plain ASCII digits or the word; "either" where the
    contract is silent (blanks around, leading zeros, the word in capitals); else "invalid"."""
    if raw == word or (re.fullmatch(r"0|[1-9][0-9]{0,2}", raw) and int(raw) < GPUS):
        return "valid"
    text = raw.strip(" \t")
    if text.lower() == word or (ASCII_GPU.fullmatch(text) and int(text) < GPUS):
        return "either"
    return "invalid"


def assert_gpu_answer(response, raw: str, word: str) -> None:
    """200 (or 201) for a valid GpuId, 400 invalid_gpu_id for an invalid one; one of the two
    where the contract leaves it open."""
    verdict = gpu_verdict(raw, word)
    if verdict == "valid" or (verdict == "either" and response.status_code < 300):
        assert response.status_code in (200, 201), (raw, response.data[:200])
    else:
        assert_error(response, 400, "invalid_gpu_id", raw)


@pytest.mark.parametrize("name", ["GpuId", "gpuid", "gpu_id"])
def test_gpu_id_values_on_serverstatus(client, soak, name):
    """Every spelling of the parameter: a valid index or `all` is 200, anything else 400."""
    def check(raw):
        response = client.get("/serverstatus", query_string={name: raw}, headers=KEY)
        assert_gpu_answer(response, raw, "all")
    for_all(gpu_values, check, soak, examples=EXAMPLES // 3, always=GPU_TRAPS)


def test_a_bad_gpu_id_submits_nothing(client, fakes, soak):
    """startjob with a bad GpuId: 400 invalid_gpu_id, no job, no prompt."""
    def check(raw):
        assume(gpu_verdict(raw, "auto") == "invalid")
        response = client.put("/startjob/gpu-check", query_string={"GpuId": raw},
                              json=workflows.core(), headers=KEY)
        assert_error(response, 400, "invalid_gpu_id", raw)
    for_all(gpu_values, check, soak, always=GPU_TRAPS)
    no_job_left(client)
    assert [f.prompts_received() for f in fakes] == [[], []]


# -- workflow shapes --------------------------------------------------------------------------
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=10),
                    st.floats(allow_nan=False, allow_infinity=False))
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=15)
good_nodes = st.fixed_dictionaries({"class_type": st.text(min_size=1, max_size=12),
                                    "inputs": st.dictionaries(st.text(max_size=8), json_values,
                                                              max_size=3)})
bad_nodes = st.one_of(
    json_values.filter(lambda v: not isinstance(v, dict)),
    st.fixed_dictionaries({"inputs": st.dictionaries(st.text(max_size=4), scalars)}),
    st.fixed_dictionaries({"class_type": st.text(min_size=1)}),
    st.fixed_dictionaries({"class_type": st.one_of(st.just(""), st.integers(), st.none()),
                           "inputs": st.just({})}),
    st.fixed_dictionaries({"class_type": st.text(min_size=1),
                           "inputs": json_values.filter(lambda v: not isinstance(v, dict))}))
node_ids = st.text(max_size=6)
broken_graphs = st.tuples(st.dictionaries(node_ids, good_nodes, max_size=4), node_ids, bad_nodes
                          ).map(lambda t: {**t[0], t[1]: t[2]})


def expected_refusal(document) -> str | None:
    """The contract's code for a parsed body, or None when ComfyUI is the one to judge it."""
    if not isinstance(document, dict):
        return "invalid_workflow"
    if isinstance(document.get("nodes"), list) and isinstance(document.get("links"), list):
        return "ui_format_workflow"
    nodes = document.get("prompt", document) if "prompt" in document else document
    if not isinstance(nodes, dict) or not isinstance(document.get("extra_data", {}), dict) \
            and "prompt" in document or not nodes:
        return "invalid_workflow"
    for node in nodes.values():
        if not isinstance(node, dict) or not isinstance(node.get("class_type"), str) \
                or not node["class_type"] or not isinstance(node.get("inputs"), dict):
            return "invalid_workflow"
    return None


bodies = st.one_of(
    json_values,  # anything at all, mostly not an object of nodes
    broken_graphs,
    broken_graphs.map(lambda nodes: {"prompt": nodes, "extra_data": {}}),  # wrapped
    st.fixed_dictionaries({"prompt": json_values, "extra_data": json_values}),
    st.fixed_dictionaries({"nodes": st.lists(json_values, max_size=3),
                           "links": st.lists(json_values, max_size=3)},
                          optional={"version": scalars, "extra": json_values}),  # UI format
    st.dictionaries(node_ids, good_nodes, max_size=3).map(
        lambda nodes: {"prompt": nodes, "extra_data": ["not", "an", "object"]}))


def test_workflow_shapes_get_the_contract_error(client, soak):
    """Each body the contract refuses gets its code, before ComfyUI is asked; nothing is kept."""
    def check(document):
        code = expected_refusal(document)
        assume(code is not None)
        response = client.put("/startjob/shape", data=json.dumps(document), headers=KEY)
        assert_error(response, 400, code, document)
    for_all(bodies, check, soak)
    no_job_left(client)


def test_bodies_that_are_not_json_are_invalid_json(client, soak):
    """Empty, blank, truncated or plain text bodies: 400 invalid_json."""
    text = json.dumps(workflows.core())
    not_json = st.one_of(st.just(""), st.text(" \t\r\n", min_size=1),
                         st.integers(1, len(text) - 1).map(lambda n: text[:n]),
                         st.text(max_size=30).filter(lambda t: not _parses(t)))

    def check(body):
        response = client.put("/startjob/text", data=body.encode("utf-8"), headers=KEY)
        assert_error(response, 400, "invalid_json", body)
    for_all(not_json, check, soak)
    no_job_left(client)


def _parses(text: str) -> bool:
    """Whether Python's json reads the text."""
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


BAD_UTF8 = [b"\xff", b"\xfe", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\x80",
            b"\xc3"]


def test_invalid_utf8_is_invalid_json(client, soak):
    """A byte sequence that is not UTF-8, anywhere in a good workflow: 400 invalid_json."""
    raw = json.dumps(workflows.core()).encode("utf-8")

    def check(case):
        position, bad = case
        response = client.put("/startjob/utf8", data=raw[:position] + bad + raw[position:],
                              headers=KEY)
        assert_error(response, 400, "invalid_json", case)
    for_all(st.tuples(st.integers(0, len(raw)), st.sampled_from(BAD_UTF8)), check, soak)
    no_job_left(client)


def dumps_with_duplicate(value, depth: int) -> str:
    """JSON text of `value` whose first object at `depth` (or the deepest) repeats a key."""
    if isinstance(value, dict) and value:
        pairs = [f"{json.dumps(k)}: {dumps_with_duplicate(v, depth - 1)}" for k, v in value.items()]
        if depth <= 0 or not any(isinstance(v, dict) and v for v in value.values()):
            pairs.append(pairs[0])  # the duplicated key, maybe with another value
        return "{" + ", ".join(pairs) + "}"
    return json.dumps(value)


def test_duplicated_keys_are_invalid_json(client, soak):
    """A key twice in any object (which node wins would be a guess): 400 invalid_json."""
    def check(case):
        document, depth = case
        response = client.put("/startjob/dup", data=dumps_with_duplicate(document, depth),
                              headers=KEY)
        assert_error(response, 400, "invalid_json", case)
    graphs = st.builds(lambda prefix: workflows.core(prefix), st.text(max_size=5))
    for_all(st.tuples(st.one_of(graphs, broken_graphs), st.integers(0, 3)), check, soak)
    no_job_left(client)


NON_FINITE = ["NaN", "Infinity", "-Infinity", "1e400", "-1e400"]


def test_non_finite_numbers_are_invalid_json(client, fakes, soak):
    """NaN / Infinity (not JSON, though Python reads them) in a node: 400 invalid_json, no job."""
    def check(case):
        constant, node = case
        text = json.dumps(workflows.core()).replace('"width": 512', f'"width": {constant}')
        if node != "1":
            text = text.replace('"color": 0', f'"color": {constant}')
        response = client.put("/startjob/nan", data=text, headers=KEY)
        assert_error(response, 400, "invalid_json", case)
    for_all(st.tuples(st.sampled_from(NON_FINITE), st.sampled_from(["1", "both"])), check, soak,
            examples=10)
    no_job_left(client)
    assert [f.prompts_received() for f in fakes] == [[], []]


def test_a_body_over_the_limit_is_refused(client):
    """One byte over the limit: 413 payload_too_large, no job."""
    response = client.put("/startjob/huge", data=b" " * (LIMIT + 1), headers=KEY)
    assert_error(response, 413, "payload_too_large")
    no_job_left(client)


# -- through the real server -------------------------------------------------------------
def test_valid_shapes_with_unknown_nodes_are_refused_by_comfy(api, fakes, soak):
    """Well-shaped but unrunnable graphs reach ComfyUI, which refuses them: 400, no job (or,
    for a graph with a string input that is an absolute path or has a `..` segment, Cylindria
    refuses it first: 400 file_not_allowed)."""
    def check(case):
        nodes, wrapped = case
        response = api.put("/startjob/unknown-nodes", json={"prompt": nodes} if wrapped else nodes)
        expected = "file_not_allowed" if any(
            unsafe_path(v) for node in nodes.values() for value in node["inputs"].values()
            for v in (value if isinstance(value, list) else [value]) if isinstance(v, str)) \
            else "comfy_rejected"
        assert response.status_code == 400 and response.json()["code"] == expected, \
            response.text[:300]
    graphs = st.dictionaries(node_ids, good_nodes, min_size=1, max_size=4)
    for_all(st.tuples(graphs, st.booleans()), check, soak, examples=15)
    assert api.get("/jobs").json()["jobs"] == []


def test_deep_nesting_never_breaks_the_server(api):
    """Nesting around each depth limit: always a 400, never a 500, never a job left.

    Cylindria's own bound is about 100 levels; Python's recursion limit sits somewhere in
    900-1100 for a waitress worker thread, where a body that just parses once broke the
    steps after parsing (requests' json.dumps for ComfyUI: a 500 and a job left behind).
    """
    answers = {}
    for depth in [*range(90, 111), *range(900, 1100)]:
        inner = "[" * depth + "]" * depth
        body = '{"1": {"class_type": "Nested", "inputs": {"a": %s}}}' % inner
        response = api.put(f"/startjob/deep{depth}", data=body)
        answers[depth] = (response.status_code, response.json().get("code"))
    assert {d: a for d, a in answers.items() if a[0] != 400} == {}
    assert api.get("/jobs").json()["jobs"] == []


def test_huge_workflows_through_the_real_server(api):
    """A big body under the limit is judged; one over it is refused: each 400/413, no job."""
    padding = "x" * (LIMIT - 1024)
    under = {"1": {"class_type": "EmptyImage", "inputs": {"note": padding}}, "2": []}
    response = api.put("/startjob/big-under", data=json.dumps(under))
    assert (response.status_code, response.json()["code"]) == (400, "invalid_workflow")
    over = {"1": {"class_type": "EmptyImage", "inputs": {"note": padding + "x" * 2048}}}
    response = api.put("/startjob/big-over", data=json.dumps(over))
    assert (response.status_code, response.json()["code"]) == (413, "payload_too_large")
    assert api.get("/jobs").json()["jobs"] == []


@pytest.mark.parametrize("body, code", [
    (b'[' * 100000 + b']' * 100000, "invalid_json"),
    (b'{"a":' * 50000 + b'1' + b'}' * 50000, "invalid_json"),
    (b'{"nodes": [], "links": [], "version": 0.4}', "ui_format_workflow"),
    (b'{"1": {"class_type": "A", "inputs": {}}, "1": {"class_type": "B", "inputs": {}}}',
     "invalid_json"),
    (b'{"1": {"class_type": "EmptyImage", "inputs": {"width": NaN}}}', "invalid_json"),
    (b'\xef\xbb\xbf\xff{}', "invalid_json"),
    (b'"just a string"', "invalid_workflow"),
], ids=["deep-array", "deep-object", "ui-format", "duplicate-node", "nan", "bad-utf8", "string"])
def test_hostile_bodies_through_the_real_server(api, body, code):
    """A few of the shapes above through waitress too: same contract error, nothing kept."""
    response = api.put("/startjob/hostile", data=body)
    assert (response.status_code, response.json()["code"]) == (400, code), response.text[:300]
    assert api.get("/jobs").json()["jobs"] == []
