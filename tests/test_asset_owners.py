"""An own key's assets are its own (contract, "Shared hosts"): another own key gets 404 on
their id, content, by-hash and from-hash, cannot delete them nor use them in a workflow; the
same bytes from two clients are stored once, each client seeing its own asset and name. Keys
without `:own` see every asset. Both surfaces: Cylindria's /assets and the Comfy API v2."""
from __future__ import annotations

import sqlite3
import time

import blake3
import pytest

from cylindria.service.server import Service
from tests import workflows
from tests.conftest import make_config
from tests.fake_comfy.png import output_png
from tests.helpers import Api, wait_for
from tests.test_assets import asset_ref, files_in, upload

ALICE, BOB, ADMIN = "alice-key-0123456", "bob-key-0123456789", "admin-key-0123456789"
PNG = output_png("secret.png", 8)
HASH = "blake3:" + blake3.blake3(PNG).hexdigest()


@pytest.fixture
def shared(fakes, tmp_path):
    keys = (f"alice:{ALICE}:own", f"bob:{BOB}:own", f"admin:{ADMIN}")
    with Service(make_config(fakes, tmp_path, api_keys=keys)) as service:
        yield service


def clients(service) -> tuple[Api, Api, Api]:
    return Api(service.url, key=ALICE), Api(service.url, key=BOB), Api(service.url, key=ADMIN)


def stored_files(service) -> list[str]:
    """The asset files on disk (uploads under way excluded)."""
    folder = service.context.config.data_dir / "assets"
    return [name for name in files_in(folder) if not name.endswith(".part")]


def refused_reference(api: Api, job_id: str, reference: dict):
    """Startjob with an asset reference: the answer."""
    workflow = workflows.core(job_id)
    workflow["3"]["inputs"]["filename_prefix"] = reference
    return api.put(f"/startjob/{job_id}", json=workflow)


def test_an_own_keys_asset_is_nobody_elses_on_cylindrias_surface(shared, fake):
    alice, bob, admin = clients(shared)
    mine = upload(alice, PNG, name="alice-secret.png").json()
    for path in (f"/assets/{mine['id']}", f"/assets/{mine['id']}/content",
                 f"/assets/by-hash/{HASH}"):
        answer = bob.get(path)
        assert answer.status_code == 404 and answer.json()["code"] == "asset_not_found", path
    assert bob.request("HEAD", f"/assets/by-hash/{HASH}").status_code == 404
    assert bob.delete(f"/assets/{mine['id']}").status_code == 404
    for by in ("id", "hash"):
        answer = refused_reference(bob, f"bob-{by}", asset_ref(mine, by))
        assert answer.status_code == 400 and answer.json()["code"] == "asset_not_found"
        assert bob.get(f"/jobstatus/bob-{by}").status_code == 404
    assert fake.prompts_received() == []
    assert alice.get(f"/assets/{mine['id']}/content").content == PNG  # still hers, whole

    theirs = upload(bob, PNG, name="bob.png")  # the same bytes: Bob's own asset, his name
    assert theirs.status_code == 201 and theirs.json()["created_new"] is True
    assert theirs.json()["name"] == "bob.png" and theirs.json()["id"] != mine["id"]
    assert bob.get(f"/assets/by-hash/{HASH}").json()["id"] == theirs.json()["id"]
    assert alice.get(f"/assets/by-hash/{HASH}").json()["name"] == "alice-secret.png"
    assert stored_files(shared) == [HASH[7:]]  # stored once
    assert refused_reference(bob, "bob-own", asset_ref(theirs.json(), "hash")).status_code == 201

    # A key without :own sees every asset, and uploads one of its own.
    assert admin.get(f"/assets/{mine['id']}").json()["name"] == "alice-secret.png"
    assert admin.request("HEAD", f"/assets/by-hash/{HASH}").status_code == 200
    common = upload(admin, PNG, name="admin.png").json()
    assert common["created_new"] is True and common["name"] == "admin.png"
    assert admin.get(f"/assets/by-hash/{HASH}").json()["id"] == common["id"]

    bob.wait_status("bob-own", "completed")
    assert bob.delete(f"/assets/{theirs.json()['id']}").status_code == 200
    assert alice.delete(f"/assets/{mine['id']}").status_code == 200
    assert alice.request("HEAD", f"/assets/by-hash/{HASH}").status_code == 404
    assert stored_files(shared) == [HASH[7:]]  # the admin's view still needs the bytes
    assert admin.delete(f"/assets/{common['id']}").status_code == 200
    assert stored_files(shared) == []


def v2_upload(api: Api, name: str):
    return api.request("POST", "/api/v2/assets", files={"file": ("x.png", PNG, "image/png")},
                       data={"file_path": name})


def test_an_own_keys_asset_is_nobody_elses_on_the_v2_surface(shared, fake):
    alice, bob, admin = clients(shared)
    first = v2_upload(alice, "alice-secret.png")
    assert first.status_code == 201
    mine = first.json()
    for path in (f"/api/v2/assets/{mine['id']}", f"/api/v2/assets/{mine['id']}/content"):
        assert bob.get(path).status_code == 404, path
    assert bob.request("HEAD", f"/api/v2/assets/by-hash/{HASH}").status_code == 404
    assert bob.request("POST", "/api/v2/assets/from-hash", json={"hash": HASH}).status_code == 404
    assert bob.delete(f"/api/v2/assets/{mine['id']}").status_code == 404
    for by in ("id", "hash"):
        workflow = workflows.core("v2")
        workflow["3"]["inputs"]["filename_prefix"] = asset_ref(mine, by)
        answer = bob.request("POST", "/api/v2/jobs", json={"workflow": workflow})
        assert answer.status_code == 422 and answer.json()["error"]["code"] == "missing_asset"
    assert fake.prompts_received() == []
    assert alice.get(f"/api/v2/assets/{mine['id']}").json()["file_path"] == "alice-secret.png"

    theirs = v2_upload(bob, "bob.png")
    assert theirs.status_code == 201 and theirs.json()["id"] != mine["id"]
    assert theirs.json()["file_path"] == "bob.png"
    found = bob.request("POST", "/api/v2/assets/from-hash", json={"hash": HASH})
    assert found.status_code == 200 and found.json()["id"] == theirs.json()["id"]
    assert bob.request("HEAD", f"/api/v2/assets/by-hash/{HASH}").status_code == 200
    assert stored_files(shared) == [HASH[7:]]
    assert admin.get(f"/api/v2/assets/{mine['id']}/content").content == PNG
    assert bob.delete(f"/api/v2/assets/{theirs.json()['id']}").status_code == 204
    assert alice.get(f"/api/v2/assets/{mine['id']}/content").content == PNG


OLD_SCHEMA = """
CREATE TABLE assets (id TEXT PRIMARY KEY, hash TEXT NOT NULL UNIQUE, name TEXT NOT NULL,
    size_bytes INTEGER NOT NULL, content_type TEXT NOT NULL, created_at REAL NOT NULL,
    used_at REAL NOT NULL);
CREATE TABLE asset_uses (asset_id TEXT NOT NULL, job_id TEXT NOT NULL,
    fingerprint TEXT NOT NULL, PRIMARY KEY (asset_id, job_id, fingerprint));
"""


def test_assets_from_before_owners_are_no_own_keys(fakes, tmp_path):
    """A data dir written before assets had owners: its assets are visible to keys without
    :own, and to no own key; the uses it kept of jobs long gone go."""
    data = tmp_path / "data"
    (data / "assets").mkdir(parents=True)
    (data / "assets" / HASH[7:]).write_bytes(PNG)
    with sqlite3.connect(data / "jobs.sqlite3") as db:
        db.executescript(OLD_SCHEMA)
        db.execute("INSERT INTO assets VALUES (?, ?, 'old.png', ?, 'image/png', ?, ?)",
                   ("a" * 32, HASH, len(PNG), time.time(), time.time()))
        db.execute("INSERT INTO asset_uses VALUES (?, 'retired-long-ago', 'f')", ("a" * 32,))
    keys = (f"alice:{ALICE}:own", f"admin:{ADMIN}")
    with Service(make_config(fakes, tmp_path, api_keys=keys)) as service:
        alice, admin = Api(service.url, key=ALICE), Api(service.url, key=ADMIN)
        assert admin.get(f"/assets/{'a' * 32}").json()["name"] == "old.png"
        assert admin.get(f"/assets/by-hash/{HASH}").json()["id"] == "a" * 32
        assert alice.get(f"/assets/{'a' * 32}").status_code == 404
        assert alice.request("HEAD", f"/assets/by-hash/{HASH}").status_code == 404
        again = upload(alice, PNG, name="mine.png")
        assert again.status_code == 201 and again.json()["id"] != "a" * 32
        assert admin.get(f"/assets/{'a' * 32}/content").content == PNG
        wait_for(lambda: not uses(data), message="the old use to go")
        assert admin.delete(f"/assets/{'a' * 32}").status_code == 200


def uses(data) -> list:
    with sqlite3.connect(data / "jobs.sqlite3") as db:
        return db.execute("SELECT * FROM asset_uses").fetchall()


def test_a_form_field_given_twice_is_refused_and_stores_nothing(shared):
    """`expected_hash` (or `file_path`) sent twice in one v2 upload: which one was meant cannot
    be told, so the upload is refused, whatever the two say (the fuzzer's soak found it kept
    the first)."""
    alice, _, _ = clients(shared)
    for field, values in (("expected_hash", [HASH, "blake3:" + "0" * 64]),
                          ("expected_hash", [HASH, HASH]), ("file_path", ["a.png", "b.png"])):
        answer = alice.request("POST", "/api/v2/assets", data={field: values},
                               files={"file": ("x.png", PNG, "image/png")})
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["code"] == "invalid_request"
    assert stored_files(shared) == []
