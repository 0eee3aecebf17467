"""One client cannot take every stream slot: at most --max-streams-per-client waits and event
streams per client (429 too_many_streams beyond), so another client still gets one."""
from __future__ import annotations

import requests

import cylindria.config.options as options
from cylindria.service.server import Service
from tests import workflows
from tests.conftest import make_config
from tests.helpers import Api

ALICE, BOB = "alice-key-0123456", "bob-key-0123456789"


def test_one_client_cannot_take_every_stream_slot(fakes, tmp_path):
    fakes[0].hold = True  # every job stays queued: each stream stays open
    config = make_config(fakes, tmp_path, threads=16, max_streams=4,
                         api_keys=(f"alice:{ALICE}", f"bob:{BOB}:own"))
    with Service(config) as service:
        alice, bob = Api(service.url, key=ALICE), Api(service.url, key=BOB)
        assert bob.put("/startjob/bobs", json=workflows.core("bobs")).status_code == 201
        assert alice.put("/startjob/alices", json=workflows.core("alices")).status_code == 201
        streams, refused = [], None
        try:
            for path in ["/jobevents/bobs"] * 4:  # as many as the whole server allows
                answer = requests.get(service.url + path, headers={"X-API-Key": BOB},
                                      stream=True, timeout=10)
                if answer.status_code != 200:
                    refused = answer
                    break
                streams.append(answer)
            assert refused is not None, "one client held every stream slot"
            assert len(streams) == 1  # the default share: a quarter of --max-streams
            assert refused.status_code == 429 and refused.json()["code"] == "too_many_streams"
            assert refused.json()["details"] == {"max_streams_per_client": 1}
            assert int(refused.headers["Retry-After"]) > 0
            assert bob.get("/jobstatus/bobs?wait=1").status_code == 429  # waits share it too
            assert bob.get("/api/v2/jobs/bobs/events").status_code == 429
            # Alice still gets hers, and her wait runs its course.
            answer = alice.get("/jobstatus/alices?wait=0.2")
            assert answer.status_code == 200 and answer.json()["status"] == "queued"
        finally:
            for stream in streams:
                stream.close()


def test_the_share_is_a_flag_and_an_environment_variable(tmp_path):
    assert options.stream_share(options.load_config(["--threads", "40", "--max-streams", "20"], {})) == 5
    assert options.stream_share(options.load_config(["--max-streams", "3"], {})) == 1
    assert options.stream_share(options.load_config(["--max-streams-per-client", "7"], {})) == 7
    assert options.stream_share(options.load_config([], {"CYLINDRIA_MAX_STREAMS_PER_CLIENT": "2"})) == 2
