"""The fleet's node rows (NodeRows) on both backends: a renewal writes the lease, `all` gives
every node with its lease age by the database's clock, a lease not renewed in time ends, and
a node that leaves is shown gone but kept."""
from __future__ import annotations

import json

from tests.helpers import wait_for


def renew(rows, name: str, lease: float = 60.0, keys: str = "k1", first: bool = False,
          held: int = 0) -> None:
    rows.renew(name, f"http://127.0.0.1:1/{name}", lease, keys,
               json.dumps({"gpus": [], "held_jobs": held}), first=first)


def test_a_renewal_writes_the_node_and_its_lease(backend):
    rows = backend.open().nodes
    renew(rows, "n2", first=True)
    renew(rows, "n1", first=True, held=3)
    first, second = rows.all()
    assert (first.name, second.name) == ("n1", "n2")  # by name
    assert first.advertise_url == "http://127.0.0.1:1/n1" and first.keys_hash == "k1"
    assert json.loads(first.status) == {"gpus": [], "held_jobs": 3}
    assert first.live and 0 <= first.lease_age <= 60 and first.lease_seconds == 60
    assert first.started_at == first.renewed_at


def test_a_renewal_keeps_the_start_and_updates_the_rest(backend):
    rows = backend.open().nodes
    renew(rows, "n1", first=True)
    started = rows.all()[0].started_at
    wait_for(lambda: rows.all()[0].lease_age > 0, message="the database's clock to move")
    renew(rows, "n1", keys="k2", held=5)
    [row] = rows.all()
    assert row.started_at == started and row.renewed_at > started
    assert row.keys_hash == "k2" and json.loads(row.status)["held_jobs"] == 5
    renew(rows, "n1", first=True)  # the node started again
    assert rows.all()[0].started_at > started


def test_a_lease_not_renewed_in_time_ends(backend):
    rows = backend.open().nodes
    renew(rows, "short", lease=0.05, first=True)
    renew(rows, "long", lease=60.0, first=True)
    wait_for(lambda: not rows.all()[1].live, message="the short lease to end")
    assert rows.all()[1].lease_age > 0.05
    assert rows.all()[0].live  # "long": renewed as long ago, still held
    renew(rows, "short", lease=60.0)
    assert all(row.live for row in rows.all())  # renewed: live again


def test_a_node_that_leaves_stays_listed_not_live(backend):
    rows = backend.open().nodes
    renew(rows, "n1", first=True)
    renew(rows, "n2", first=True)
    rows.leave("n1")
    gone, there = rows.all()
    assert gone.name == "n1" and not gone.live and gone.lease_age > gone.lease_seconds
    assert there.live
    rows.leave("nobody")  # a node never seen: nothing to end
    assert [row.name for row in rows.all()] == ["n1", "n2"]


def test_the_rows_outlive_a_reopening(backend):
    renew(backend.open().nodes, "n1", first=True)
    [row] = backend.open().nodes.all()
    assert row.name == "n1" and row.live
