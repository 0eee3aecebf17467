"""Assets in a fleet (real processes, each node with its own fake ComfyUI, one PostgreSQL): an
asset uploaded to one node is used by jobs on the others, also once that node is gone; a node
that lacks its file fetches it from the database, and only that node's ComfyUI receives it."""
from __future__ import annotations

from tests.fake_comfy.png import decode_png
from tests.helpers import Api
from tests.test_assets import downloaded, run_inverted, small_picture, upload


def placed(node) -> list[tuple[str, str, bytes]]:
    """(subfolder, name, bytes) of every file uploaded to the node's ComfyUI."""
    return [(u.subfolder, u.name, u.data) for u in node.fake.uploads]


def prompts(node) -> list[str]:
    """The prompt ids the node's ComfyUI was sent."""
    return node.fake.prompts_received()


def test_an_asset_uploaded_to_one_node_runs_anywhere_also_once_that_node_is_gone(start_node):
    a, c = start_node("a"), start_node("c")
    on_a, on_c = Api(a.url), Api(c.url)
    png, pixels = small_picture(9)
    asset = upload(on_a, png, name="in.png").json()
    comfy_file = ("cylindria", f"{asset['hash'][7:39]}.png", png)
    assert on_c.get(f"/assets/{asset['id']}/content").content == png  # c never had it

    first = run_inverted(on_a, "through-a", asset, "c:0")  # pinned to c's GPU, sent to a
    assert prompts(c) == [first["prompt_id"]] and placed(c) == [comfy_file]
    assert prompts(a) == [] and placed(a) == []

    a.stop()
    again = run_inverted(on_c, "c-alone", asset, "0")
    assert prompts(c) == [first["prompt_id"], again["prompt_id"]]
    assert placed(a) == [] and prompts(a) == []

    d = start_node("d")  # never had the file, nor did its ComfyUI
    on_d = Api(d.url)
    last = run_inverted(on_d, "fresh-d", asset, "0")
    assert prompts(d) == [last["prompt_id"]] and placed(d) == [comfy_file]
    assert decode_png(downloaded(on_d, "fresh-d")).rgb == bytes(255 - v for v in pixels)
