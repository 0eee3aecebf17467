"""The fleet's webhook signing secret (CONTRACT "A fleet"): without --webhook-secret-file every
node signs with the first node's secret, kept in the database, so a receiver verifies every
node's deliveries with one `whsec_` secret; an operator's own file still wins."""
from __future__ import annotations

import logging
from datetime import datetime, timezone
from pathlib import Path

import pytest
from standardwebhooks import Webhook

from comfy.private import show_once
from cylindria.storage import open_url
from cylindria.webhooks.secret import SECRET_FILE_NAME, load_secret
from tests.processes import CylindriaProcess


@pytest.fixture
def meta(fleet_database):
    storage = open_url(fleet_database)
    yield storage.meta
    storage.close()


def test_every_node_signs_with_the_first_nodes_secret(meta, tmp_path):
    first = load_secret(tmp_path / "a", None, meta)
    second = load_secret(tmp_path / "b", None, meta)
    assert second.secret == first.secret and first.generated and second.generated
    assert (tmp_path / "b" / SECRET_FILE_NAME).read_text().strip() == first.secret
    # What one node signs, a receiver holding the other's copy verifies.
    now = datetime.now(timezone.utc)
    signature = Webhook(first.secret).sign("msg_1", now, '{"a":1}')
    Webhook(second.secret).verify('{"a":1}', {"webhook-id": "msg_1", "webhook-signature": signature,
                                              "webhook-timestamp": str(int(now.timestamp()))})


def test_a_node_with_its_own_secret_takes_the_fleets_and_says_so(meta, tmp_path, caplog):
    first = load_secret(tmp_path / "a", None, meta)
    before = load_secret(tmp_path / "b", None)  # b was a single host: its own secret, shown
    show_once("webhook signing secret", before.path, before.secret)
    assert before.secret != first.secret
    with caplog.at_level(logging.WARNING, logger="cylindria.webhooks.secret"):
        joined = load_secret(tmp_path / "b", None, meta)
    assert joined.secret == first.secret and joined.generated  # shown at this start
    assert (tmp_path / "b" / SECRET_FILE_NAME).read_text().strip() == first.secret
    assert "is not the fleet's: replaced by the fleet's" in caplog.text
    assert first.secret not in caplog.text and before.secret not in caplog.text


def test_an_operators_secret_file_is_used_as_it_is(meta, tmp_path):
    first = load_secret(tmp_path / "a", None, meta)
    own = tmp_path / "operator_secret"
    mine = load_secret(tmp_path / "c", None)  # any valid whsec_ secret
    own.write_text(mine.secret)
    chosen = load_secret(tmp_path / "d", own, meta)
    assert chosen.secret == mine.secret != first.secret and chosen.path == own


def test_two_node_processes_keep_one_secret(start_node, tmp_path):
    a, b = start_node("a"), start_node("b")
    secrets = {node: _data_dir(node).joinpath(SECRET_FILE_NAME).read_text().strip()
               for node in (a, b)}
    assert secrets[a] == secrets[b] and secrets[a].startswith("whsec_")


def _data_dir(node: CylindriaProcess) -> Path:
    return Path(node.args[node.args.index("--data-dir") + 1])
