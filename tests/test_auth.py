"""Keys: both headers, several keys, the generated key file, --no-auth, throttling."""
import os
import stat
import sys

import pytest

from comfy.private import show_once
from cylindria.service.server import Service
from tests.conftest import make_config
from tests.helpers import API_KEY, Api
from cylindria.web.auth import resolve_keys
from cylindria.webhooks.secret import load_secret

PROTECTED = [("GET", "/serverstatus"), ("GET", "/jobstatus/x"), ("PUT", "/startjob/x"),
             ("GET", "/no-such-endpoint")]


@pytest.mark.parametrize("method,path", PROTECTED)
def test_missing_or_wrong_key_is_401_json_with_www_authenticate(service, method, path):
    for key in (None, "wrong-key-123456"):
        response = Api(service.url, key).request(method, path)
        assert response.status_code == 401
        assert response.json()["code"] == "unauthorized"
        assert "Bearer" in response.headers["WWW-Authenticate"]


def test_both_headers_work(service):
    assert Api(service.url).get("/serverstatus").status_code == 200
    bearer = Api(service.url, None)
    bearer.session.headers["Authorization"] = f"Bearer {API_KEY}"
    assert bearer.get("/serverstatus").status_code == 200
    basic = Api(service.url, None)
    basic.session.headers["Authorization"] = f"Basic {API_KEY}"
    assert basic.get("/serverstatus").status_code == 401


def test_health_needs_no_key(service):
    assert Api(service.url, None).get("/health").status_code == 200


def test_several_keys(fakes, tmp_path):
    config = make_config(fakes, tmp_path, api_keys=("first-key-000000", "second-key-11111"))
    with Service(config) as service:
        for key in config.api_keys:
            assert Api(service.url, key).get("/serverstatus").status_code == 200
        assert Api(service.url, "first-key-00000").get("/serverstatus").status_code == 401


def test_generated_key_is_stored_privately_and_reused(fakes, tmp_path):
    config = make_config(fakes, tmp_path, api_keys=())
    with Service(config) as service:
        keys = service.context.keys
        assert keys.generated and keys.key_file == config.data_dir / "api_key"
        key = keys.keys[0]
        assert len(key) >= 32 and Api(service.url, key).get("/serverstatus").status_code == 200
    if sys.platform != "win32":
        assert stat.S_IMODE(os.stat(config.data_dir / "api_key").st_mode) == 0o600
    with Service(config) as again:
        assert not again.context.keys.generated and again.context.keys.keys == (key,)


def generated_key(data):
    """(the key, its file, not shown yet) as a start without --api-key finds them."""
    setup = resolve_keys((), False, data)
    return setup.keys[0], setup.key_file, setup.generated


def generated_secret(data):
    """(the webhook secret, its file, not shown yet) as a start finds them."""
    secret = load_secret(data, None)
    return secret.secret, secret.path, secret.generated


@pytest.mark.parametrize("name, load", [("api_key", generated_key),
                                        ("webhook_secret", generated_secret)])
def test_a_generated_key_or_secret_is_kept_and_unshown_until_shown(tmp_path, capsys, name, load):
    data = tmp_path / "data"
    data.mkdir()
    (data / name).write_text("\n")  # left empty by a start that stopped while writing it
    text, path, unshown = load(data)
    assert path == data / name and unshown and path.read_text().strip() == text
    assert load(data) == (text, path, True)  # a start that failed before showing it
    show_once("it", path, text)
    assert capsys.readouterr().out == f"Generated it (shown once; stored in {path}):\n  {text}\n"
    assert load(data) == (text, path, False) and sorted(p.name for p in data.iterdir()) == [name]


def test_no_auth_opens_everything(fakes, tmp_path):
    config = make_config(fakes, tmp_path, api_keys=(), no_auth=True)
    with Service(config) as service:
        assert Api(service.url, None).get("/serverstatus").status_code == 200
    assert not (config.data_dir / "api_key").exists()


def test_repeated_failures_are_throttled_but_the_right_key_is_answered(service):
    wrong = Api(service.url, "wrong-key-123456")
    codes = [wrong.get("/serverstatus").status_code for _ in range(12)]
    assert codes[:10] == [401] * 10 and codes[10:] == [429, 429]
    # The throttle slows wrong keys only: the right one from the same address goes through,
    # and wrong ones (or none) from there still wait.
    assert Api(service.url).get("/serverstatus").status_code == 200
    for api in (wrong, Api(service.url, None)):
        response = api.get("/serverstatus")
        assert response.status_code == 429 and int(response.headers["Retry-After"]) > 0
        assert response.json()["code"] == "too_many_requests"
    assert Api(service.url, None).get("/health").status_code == 200
