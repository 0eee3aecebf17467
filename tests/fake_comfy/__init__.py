"""A fake ComfyUI 0.3.64 server for Cylindria's tests (see tests/recordings/README.md).

    with FakeComfy(port=0, time_scale=0.05) as fake:   # own loop thread "fake-comfy-<port>"
        requests.post(fake.url + "/prompt", json={"prompt": workflows.core(), "client_id": "c"})

Controls: hold, ws_silent, http_delay, ignore_prompt_id, drop_websockets(), stop(),
restart(keep_state). Observations: requests(), prompts_received(), system_stats_calls,
ws_client_ids(), output_bytes(). tests/test_fake_comfy.py checks it against the recordings.
"""

from .fake import FakeComfy
from .knobs import RecordedRequest

__all__ = ["FakeComfy", "RecordedRequest"]
