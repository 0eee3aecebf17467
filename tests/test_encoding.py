"""The hot-path JSON encoder: orjson's output, and the standard library's for what it refuses."""
import json

import pytest

from comfy.encoding import from_json, to_json


def test_compact_utf8_in_the_given_key_order():
    value = {"b": 1, "a": [1.5, None, True], "é": "ü"}
    encoded = to_json(value)
    assert encoded == '{"b":1,"a":[1.5,null,true],"é":"ü"}'.encode("utf-8")


def test_what_orjson_refuses_is_still_encoded_as_valid_json():
    for value in ({"seed": 2**70}, {"text": "a\ud800b"}, {"k": [[[[0]]]] * 2}):
        assert json.loads(to_json(value)) == value


def test_from_json_reads_what_python_writes_and_refuses_what_is_not_json():
    assert from_json(b'{"a": [1, 2.5, null]}') == {"a": [1, 2.5, None]}
    nan = from_json(b'{"vram": NaN}')["vram"]
    assert nan != nan
    with pytest.raises(ValueError):
        from_json(b"<html>")
