"""Optional JWT bearer tokens (--jwt-*): a token signed by a key of the JWKS (served over HTTP
on loopback, or read from a file) is accepted beside API keys, `jwt:<sub>` the client's name
(never a key's), own when --jwt-own-claim's claim holds its value;
expired, not yet valid, wrong issuer, audience or algorithm (none, and HS256 keyed with the
public key) are 401. The JWKS cache is exercised as plain logic with a hand-moved clock."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from jwt.algorithms import OKPAlgorithm, RSAAlgorithm

from cylindria.service.server import Service
from tests import workflows
from tests.conftest import make_config
from cylindria.config.options import ConfigError, load_config
from tests.helpers import SERVE_POLL, Api, free_ports
from cylindria.web.auth import Client
from cylindria.web.tokens import UNKNOWN_KID_EVERY, TokenVerifier

ISSUER, AUDIENCE = "https://login.example", "cylindria"


def ed25519_key(kid: str):
    private = ed25519.Ed25519PrivateKey.generate()
    jwk = json.loads(OKPAlgorithm.to_jwk(private.public_key()))
    return private, {**jwk, "kid": kid, "alg": "EdDSA", "use": "sig"}


def token(private, kid="k1", algorithm="EdDSA", **claims) -> str:
    now = int(time.time())
    body = {"sub": "render-backend", "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 300}
    body.update(claims)
    return jwt.encode({k: v for k, v in body.items() if v is not None}, private,
                      algorithm=algorithm, headers={"kid": kid})


class JwksServer:
    """GET / answers the JWKS; counts its fetches."""

    def __init__(self, keys: list):
        self.keys = keys
        self.fetches = 0
        self.port = free_ports(1)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.fetches += 1
                body = json.dumps({"keys": server.keys}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass
        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.httpd.serve_forever, args=(SERVE_POLL,), daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/jwks.json"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def signer():
    return ed25519_key("k1")


@pytest.fixture
def jwks(signer):
    server = JwksServer([signer[1]])
    yield server
    server.close()


@pytest.fixture
def jwt_service(fakes, tmp_path, jwks):
    config = make_config(fakes, tmp_path, jwt_jwks_url=jwks.url, jwt_issuer=ISSUER,
                         jwt_audience=AUDIENCE)
    with Service(config) as service:
        yield service


def bearer(url: str, value: str) -> Api:
    api = Api(url, key=None)
    api.session.headers["Authorization"] = f"Bearer {value}"
    return api


def test_a_valid_token_is_accepted_beside_keys_and_its_subject_submits(jwt_service, signer):
    api = bearer(jwt_service.url, token(signer[0]))
    assert api.put("/startjob/by-jwt", json=workflows.core("jwt")).status_code == 201
    assert api.status("by-jwt")["submitted_by"] == "jwt:render-backend"
    assert Api(jwt_service.url).get("/jobstatus/by-jwt").status_code == 200  # the key still works


def test_invalid_tokens_are_401(jwt_service, signer, jwks):
    private = signer[0]
    public_pem = private.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo)
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwks.keys.append({**json.loads(RSAAlgorithm.to_jwk(rsa_key.public_key())), "kid": "rsa"})
    now = int(time.time())
    refused = {
        "expired": token(private, exp=now - 3600, iat=now - 7200),
        "not yet valid": token(private, nbf=now + 3600),
        "wrong issuer": token(private, iss="https://other.example"),
        "wrong audience": token(private, aud="someone-else"),
        "no exp": token(private, exp=None),
        "alg none": jwt.encode({"sub": "x", "iss": ISSUER, "aud": AUDIENCE, "exp": now + 300},
                               None, algorithm="none", headers={"kid": "k1"}),
        # The classic confusion: HMAC keyed with the (public) key the server trusts.
        "HS256 with the public key": _hs256(public_pem, now),
        "RS256 not allowed": token(rsa_key, kid="rsa", algorithm="RS256"),
        "signed by another key": token(ed25519_key("k1")[0]),
        "not a JWT": "a.b.c",
    }
    for why, value in refused.items():
        answer = bearer(jwt_service.url, value).get("/jobs")
        assert answer.status_code == 401, why


def _hs256(secret: bytes, now: int) -> str:
    header = {"alg": "HS256", "typ": "JWT", "kid": "k1"}
    claims = {"sub": "x", "iss": ISSUER, "aud": AUDIENCE, "exp": now + 300}
    import base64
    import hashlib
    import hmac

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
    signing = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    return f"{signing}.{b64(hmac.new(secret, signing.encode(), hashlib.sha256).digest())}"


def test_an_unknown_key_id_fetches_the_jwks_again_at_most_every_30_seconds(jwt_service, jwks,
                                                                          signer):
    assert bearer(jwt_service.url, token(signer[0])).get("/jobs").status_code == 200  # cached
    rotated, rotated_jwk = ed25519_key("k2")
    fetched = jwks.fetches
    assert bearer(jwt_service.url, token(rotated, kid="k2")).get("/jobs").status_code == 401
    assert jwks.fetches == fetched + 1  # one early fetch for the unknown kid
    jwks.keys.append(rotated_jwk)
    assert bearer(jwt_service.url, token(rotated, kid="k2")).get("/jobs").status_code == 401
    assert jwks.fetches == fetched + 1  # not again within 30 s


def test_the_cache_picks_up_a_rotated_key_after_30_seconds_and_refreshes_on_its_interval():
    first, first_jwk = ed25519_key("k1")
    rotated, rotated_jwk = ed25519_key("k2")
    served = {"keys": [first_jwk]}
    now = [1000.0]
    verifier = TokenVerifier(jwks_url="http://127.0.0.1:9/unused", refresh=600.0,
                             clock=lambda: now[0], load=lambda url, path: served)
    assert verifier.subject(token(first)) == "render-backend" and verifier.fetches == 1
    served = {"keys": [first_jwk, rotated_jwk]}
    assert verifier.subject(token(rotated, kid="k2")) == "render-backend"  # early fetch
    assert verifier.fetches == 2
    assert verifier.subject(token(rotated, kid="k3")) is None and verifier.fetches == 2
    now[0] += UNKNOWN_KID_EVERY
    assert verifier.subject(token(rotated, kid="k3")) is None and verifier.fetches == 3
    now[0] += 600.0
    assert verifier.subject(token(first)) == "render-backend" and verifier.fetches == 4


def test_a_jwks_file_serves_hosts_without_network(fakes, tmp_path, signer):
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [signer[1]]}))
    config = make_config(fakes, tmp_path, jwt_jwks_file=path)
    with Service(config) as service:
        api = bearer(service.url, token(signer[0], iss=None, aud=None))
        assert api.get("/jobs").status_code == 200


def mismatched_keys() -> tuple:
    """(JWKS keys, tokens) where PyJWT refuses the key itself: an RSA key without "alg" named
    by an EdDSA token, and a key without "kty"."""
    signing = ed25519.Ed25519PrivateKey.generate()
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa_jwk = {**json.loads(RSAAlgorithm.to_jwk(rsa_key.public_key())), "kid": "rsa-no-alg"}
    no_kty = {k: v for k, v in ed25519_key("no-kty")[1].items() if k != "kty"}
    return [rsa_jwk, no_kty], [token(signing, kid="rsa-no-alg"), token(signing, kid="no-kty")]


def test_a_key_pyjwt_refuses_is_a_bad_token_not_an_error():
    keys, tokens = mismatched_keys()
    verifier = TokenVerifier(jwks_url="http://127.0.0.1:9/unused",
                             load=lambda url, path: {"keys": keys})
    assert [verifier.subject(value) for value in tokens] == [None, None]


def test_a_key_pyjwt_refuses_is_401_and_counted_by_the_throttle(jwt_service, jwks):
    keys, tokens = mismatched_keys()
    jwks.keys.extend(keys)
    answers = [bearer(jwt_service.url, tokens[n % 2]).get("/jobs") for n in range(11)]
    assert [a.status_code for a in answers] == [401] * 10 + [429]
    assert answers[0].json()["code"] == "unauthorized"


class BlockedJwks:
    """A stand-in JWKS load: the first answers at once; later ones wait for `release`."""

    def __init__(self, served: dict):
        self.served = served
        self.calls = 0
        self.entered, self.release = threading.Event(), threading.Event()

    def __call__(self, url, path):
        self.calls += 1
        if self.calls > 1:
            self.entered.set()
            self.release.wait(30)
        return self.served


def test_a_slow_jwks_fetch_holds_up_only_the_thread_that_fetches():
    first, first_jwk = ed25519_key("k1")
    rotated, rotated_jwk = ed25519_key("k2")
    load = BlockedJwks({"keys": [first_jwk]})
    now = [1000.0]
    verifier = TokenVerifier(jwks_url="http://127.0.0.1:9/unused", refresh=600.0,
                             clock=lambda: now[0], load=load)
    assert verifier.subject(token(first)) == "render-backend"
    now[0] += 600.0  # the next token makes a fetch due; the JWKS now has the rotated key too
    load.served = {"keys": [first_jwk, rotated_jwk]}
    fetcher = threading.Thread(target=verifier.subject, args=(token(first),), name="test-fetcher")
    fetcher.start()
    assert load.entered.wait(10)
    others = {}

    def meanwhile():
        others["known"] = verifier.subject(token(first))
        others["unknown"] = verifier.subject(token(rotated, kid="k2"))
    other = threading.Thread(target=meanwhile, name="test-meanwhile")
    other.start()
    other.join(10)
    try:
        assert not other.is_alive()  # not held behind the fetch
        assert others == {"known": "render-backend", "unknown": None}  # the cached keys
        assert load.calls == 2  # one fetch at a time
    finally:
        load.release.set()
        fetcher.join(10)
        other.join(10)
    assert verifier.subject(token(rotated, kid="k2")) == "render-backend"  # keys swapped in
    assert load.calls == 2


CAROL = "carol-key-0123456789"
OWN_SCOPE = ("scope", "cylindria:own")


@pytest.fixture
def shared_service(fakes, tmp_path, jwks):
    """Own keys alice and carol beside JWTs whose `scope` may give them the own role."""
    config = make_config(fakes, tmp_path, jwt_jwks_url=jwks.url, jwt_issuer=ISSUER,
                         jwt_audience=AUDIENCE, jwt_own_claim=OWN_SCOPE,
                         api_keys=(f"alice:{CAROL[::-1]}:own", f"carol:{CAROL}:own"))
    with Service(config) as service:
        yield service


def test_a_token_subject_is_never_a_key_name(fakes, tmp_path, jwks, signer):
    config = make_config(fakes, tmp_path, jwt_jwks_url=jwks.url, jwt_issuer=ISSUER,
                         jwt_audience=AUDIENCE, api_keys=(f"alice:{CAROL[::-1]}:own",))
    with Service(config) as service:
        alice = Api(service.url, key=CAROL[::-1])
        assert alice.put("/startjob/by-key", json=workflows.core("key")).status_code == 201
        as_alice = bearer(service.url, token(signer[0], sub="alice"))
        assert as_alice.put("/startjob/by-token", json=workflows.core("tok")).status_code == 201
        assert as_alice.status("by-token")["submitted_by"] == "jwt:alice"
        # The key alice sees only her own jobs: the token's is not one of them.
        assert alice.get("/jobstatus/by-token").status_code == 404
        assert [job["job_id"] for job in alice.get("/jobs").json()["jobs"]] == ["by-key"]


def test_an_own_token_and_an_own_key_see_only_their_own_jobs(shared_service, signer):
    alice = Api(shared_service.url, key=CAROL[::-1])
    assert alice.put("/startjob/by-key", json=workflows.core("key")).status_code == 201
    as_alice = bearer(shared_service.url, token(signer[0], sub="alice", scope="cylindria:own"))
    assert as_alice.put("/startjob/by-token", json=workflows.core("tok")).status_code == 201
    assert as_alice.get("/jobstatus/by-key").status_code == 404
    assert alice.get("/jobstatus/by-token").status_code == 404
    assert [job["job_id"] for job in as_alice.get("/jobs").json()["jobs"]] == ["by-token"]


def test_the_own_claim_gives_a_token_the_own_role(shared_service, signer):
    carol = Api(shared_service.url, key=CAROL)
    assert carol.put("/startjob/carols", json=workflows.core("carol")).status_code == 201
    carol.wait_status("carols", "completed")
    own = bearer(shared_service.url, token(signer[0], sub="dave", scope="read cylindria:own"))
    for path in ("/jobstatus/carols", "/jobresult/carols", "/api/v2/jobs/carols"):
        assert own.get(path).status_code == 404, path
    assert own.get("/jobs").json()["jobs"] == []
    assert own.get("/jobs?submitted_by=carol").json()["jobs"] == []
    # Without the scope's word (a longer one is not it), a token sees every job, as a key
    # without :own does.
    for scope in (None, "cylindria:owner read"):
        other = bearer(shared_service.url, token(signer[0], sub="erin", scope=scope))
        assert other.get("/jobstatus/carols").status_code == 200, scope


def test_the_own_claim_may_be_a_list_or_a_space_separated_string(signer):
    verifier = TokenVerifier(jwks_url="http://127.0.0.1:9/unused", own_claim=("roles", "own"),
                             load=lambda url, path: {"keys": [signer[1]]})
    private = signer[0]
    assert verifier.client(token(private, roles=["viewer", "own"])) == Client("jwt:render-backend", True)
    assert verifier.client(token(private, roles="viewer own")) == Client("jwt:render-backend", True)
    for roles in (None, ["owner"], "owner", {"own": True}, 1):
        assert verifier.client(token(private, roles=roles)) == Client("jwt:render-backend"), roles
    assert TokenVerifier(jwks_url="http://127.0.0.1:9/unused",
                         load=lambda url, path: {"keys": [signer[1]]}
                         ).client(token(private, roles="own")) == Client("jwt:render-backend")


def test_the_own_claim_flag(tmp_path):
    jwks = ["--jwt-jwks-file", str(tmp_path / "jwks.json")]
    assert load_config(jwks + ["--jwt-own-claim", "scope=cylindria:own"], {}).jwt_own_claim == \
        ("scope", "cylindria:own")
    assert load_config(jwks, {"CYLINDRIA_JWT_OWN_CLAIM": "groups=render"}).jwt_own_claim == \
        ("groups", "render")
    assert load_config(jwks, {}).jwt_own_claim is None
    for wrong in ("scope", "=x", "scope=", "scope=a b"):
        with pytest.raises(ConfigError, match="--jwt-own-claim"):
            load_config(jwks + ["--jwt-own-claim", wrong], {})
    with pytest.raises(ConfigError, match="--jwt-own-claim"):
        load_config(["--jwt-own-claim", "scope=x"], {})
