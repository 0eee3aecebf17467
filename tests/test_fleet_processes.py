"""Three Cylindria processes on one throwaway PostgreSQL, each with its own fake ComfyUI: every
node's /fleet lists all three live with their GPUs; a node SIGKILLed is shown not live once its
lease has run out; a node started with other API keys warns, naming how many live nodes differ."""
from __future__ import annotations

from tests.helpers import Api, wait_for
from tests.processes import CylindriaProcess


def fleet(node: CylindriaProcess, key: str | None = None) -> dict:
    api = Api(node.url) if key is None else Api(node.url, key=key)
    answer = api.get("/fleet")
    assert answer.status_code == 200, answer.text
    return answer.json()


def live(node: CylindriaProcess) -> dict:
    """name -> live, as this node's /fleet says."""
    return {entry["node"]: entry["live"] for entry in fleet(node)["nodes"]}


def test_every_node_lists_the_fleet_and_a_killed_node_drops_out(start_node):
    nodes = start_node.many(("n1", "n2", "n3"))
    for name, node in nodes.items():
        answer = wait_for(lambda: (lambda f: f if all(live(node).values()) else None)(fleet(node)),
                          message=f"{name} to see the fleet live")
        assert answer["node"] == name
        assert [entry["node"] for entry in answer["nodes"]] == ["n1", "n2", "n3"]
        for entry in answer["nodes"]:
            assert entry["advertise_url"] == nodes[entry["node"]].url
            assert entry["lease_seconds"] == 2.0 and entry["held_jobs"] == 0
            [gpu] = entry["gpus"]
            assert gpu["gpu_id"] == 0 and set(gpu) == {"gpu_id", "reachable", "websocket",
                                                       "running", "queue_length"}
        # Each node's own GPU is reachable once its tracker has seen its fake.
        wait_for(lambda: {e["node"]: e["gpus"][0]["reachable"] for e in fleet(node)["nodes"]}[name],
                 message=f"{name}'s GPU reachable in its lease")

    nodes["n3"].kill()  # no clean-up: its lease just stops being renewed
    for name in ("n1", "n2"):
        wait_for(lambda: live(nodes[name]) == {"n1": True, "n2": True, "n3": False},
                 message=f"{name} to see n3's lease run out")
    [n3] = [e for e in fleet(nodes["n1"])["nodes"] if e["node"] == "n3"]
    assert n3["lease_age_seconds"] > n3["lease_seconds"]

    other = start_node("n4", "--api-key", "a-different-key-0123")
    wait_for(lambda: "differ from those of" in other.log(), message="n4's warning")
    assert "differ from those of 2 of the 2 other live node(s) (n1, n2)" in other.log()
    assert "differ from those of" not in nodes["n1"].log()  # n1..n3 share their keys
    seen = fleet(other, key="a-different-key-0123")
    assert seen["node"] == "n4"
    assert {e["node"]: e["live"] for e in seen["nodes"]} == {"n1": True, "n2": True, "n3": False,
                                                           "n4": True}
    assert Api(other.url).get("/fleet").status_code == 401  # the fleet's key is not n4's
