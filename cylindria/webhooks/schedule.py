"""When a webhook event is tried again: about 5 s, 30 s, 2 min, 10 min, 30 min, then hourly,
each delay spread by +-20% so that receivers which failed together are not all retried at
once, until a day after the event; then it is given up."""
from __future__ import annotations

import random

DELAYS = (5.0, 30.0, 120.0, 600.0, 1800.0, 3600.0)
GIVE_UP_AFTER = 24 * 3600.0  # seconds from the event: no try is scheduled later than this
JITTER = 0.2


def next_try(created_at: float, now: float, failed_tries: int, delays: tuple = DELAYS,
             give_up_after: float = GIVE_UP_AFTER, spread=random.uniform) -> float | None:
    """When to try an event again after its `failed_tries`-th failure, or None to give up."""
    base = delays[min(failed_tries, len(delays)) - 1]
    due = now + base * spread(1 - JITTER, 1 + JITTER)
    return None if due > created_at + give_up_after else due
