"""A fake ComfyUI 0.3.64 server for Cylindria's tests (see tests/recordings/README.md).

    with FakeComfy(port=0, time_scale=0.05) as fake:   # own loop thread "fake-comfy-<port>"
        requests.post(fake.url + "/prompt", json={"prompt": workflows.core(), "client_id": "c"})

Controls: hold, ws_silent, http_delay, ignore_prompt_id, costs, drop_websockets(), stop(),
restart(keep_state). Observations: requests(), prompts_received(), system_stats_calls,
ws_client_ids(), output_bytes(), costed_sections(). tests/test_fake_comfy.py checks it
against the recordings.

`costs=recorded_costs()` makes each instance as slow as the recorded ComfyUI: every costed
HTTP request waits its route's recorded median under a per-instance lock (costs.py,
server.py); the default None keeps the fake instant.
"""

from .costs import cost_of, recorded_costs, route_key
from .fake import FakeComfy
from .knobs import CostedSection, RecordedRequest

__all__ = ["CostedSection", "FakeComfy", "RecordedRequest", "cost_of", "recorded_costs",
           "route_key"]
