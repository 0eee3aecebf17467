"""A fake ComfyUI 0.3.64 server for Cylindria's tests (see tests/recordings/README.md).

    with FakeComfy(port=0, time_scale=0.05) as fake:   # own loop thread "fake-comfy-<port>"
        requests.post(fake.url + "/prompt", json={"prompt": workflows.core(), "client_id": "c"})

Controls: hold, ws_silent, http_delay, ignore_prompt_id, costs, models, drop_websockets(),
stop(), restart(keep_state), clear_inputs(). Observations: requests(), prompts_received(),
system_stats_calls, ws_client_ids(), output_bytes(), costed_sections(), model_loads,
last_model, uploads.
tests/test_fake_comfy.py checks it against the recordings.

`costs="recorded"` (or recorded_costs()) makes each instance as slow as the recorded ComfyUI:
every costed HTTP request waits its route's recorded median under a per-instance lock
(costs.py, server.py); `costs="real"` (real_costs()) uses timings-real.json's lower p50s; the
default None keeps the fake instant.

What an instance has installed is its own (catalogue.py): `custom_nodes=("CylCustomInvert",)`
adds a custom pack's class, `without_nodes=(...)` hides default ones, `checkpoints=[...]`
lists its checkpoint files, and `load_seconds` is what a checkpoint switch costs it
(CheckpointLoaderSimple -> CylSample -> SaveImage, tests/workflows.checkpoint()).
GET /models/{folder} lists those checkpoints (other folders empty) unless the `models` knob,
{folder: [names]}, says otherwise; an unknown folder is a bare 404, as in ComfyUI.

Input files as in ComfyUI (files.py, nodes.py): POST /upload/image writes into the
instance's own input folder (in memory; emptied by a restart without keep_state), LoadImage
and LoadImageMask list it, refuse a missing file (custom_validation_failed), and LoadImage
decodes the PNG, so LoadImage -> ImageInvert -> SaveImage saves the inverted pixels
(tests/workflows.load_image(), png.rgb_png(), nodes.saved_values()).
"""

from .catalogue import DEFAULT_CHECKPOINTS, Catalogue
from .costs import cost_of, cost_table, real_costs, recorded_costs, route_key
from .fake import FakeComfy
from .knobs import CostedSection, RecordedRequest, Upload

__all__ = ["DEFAULT_CHECKPOINTS", "Catalogue", "CostedSection", "FakeComfy", "RecordedRequest",
           "Upload", "cost_of", "cost_table", "real_costs", "recorded_costs", "route_key"]
