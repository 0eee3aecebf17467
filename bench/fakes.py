"""Fake ComfyUIs in the bench process, one of which timestamps its execution_success sends."""
from __future__ import annotations

import time

from tests.fake_comfy import FakeComfy
from tests.helpers import free_ports


class TimedFake(FakeComfy):
    """A FakeComfy that notes when it delivers each execution_success (time.perf_counter()).

    The fake's publish loop sends every websocket message through its hub's `_deliver`; the
    wrapper runs after the frames went out (or, with no socket to target, when they would
    have), so `success_at[prompt_id]` is the moment ComfyUI announced the end of the prompt.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.success_at: dict[str, float] = {}

    async def _boot(self, history, number):
        instance = await super()._boot(history, number)
        deliver = instance.hub._deliver

        async def timed_deliver(event, data, sid):
            await deliver(event, data, sid)
            if event == "execution_success":
                self.success_at[data["prompt_id"]] = time.perf_counter()

        instance.hub._deliver = timed_deliver
        return instance


def start_fakes(count: int, time_scale: float = 1.0, cls: type = FakeComfy,
                costs: dict | None = None) -> list[FakeComfy]:
    """`count` fakes on consecutive loopback ports, like a host's GPUs; `costs` (route ->
    seconds, tests.fake_comfy.costs) makes each as slow as ComfyUI (real_costs())."""
    for _ in range(20):
        base = free_ports(count)
        fakes = []
        try:
            for n in range(count):
                fakes.append(cls(port=base + n, time_scale=time_scale, costs=costs).start())
            return fakes
        except OSError:
            close_all(fakes)
    raise RuntimeError("could not start the fake GPUs")


def close_all(fakes: list[FakeComfy]) -> None:
    """Close every fake."""
    for fake in fakes:
        fake.close()
