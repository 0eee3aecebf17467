"""The hot-path JSON encoder: orjson's output, and the standard library's for what it refuses."""
import json

from comfy.encoding import to_json


def test_compact_utf8_in_the_given_key_order():
    value = {"b": 1, "a": [1.5, None, True], "é": "ü"}
    encoded = to_json(value)
    assert encoded == '{"b":1,"a":[1.5,null,true],"é":"ü"}'.encode("utf-8")


def test_what_orjson_refuses_is_still_encoded_as_valid_json():
    for value in ({"seed": 2**70}, {"text": "a\ud800b"}, {"k": [[[[0]]]] * 2}):
        assert json.loads(to_json(value)) == value
