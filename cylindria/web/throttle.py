"""Throttling of repeated authentication failures per client address: it answers the wrong
keys of an address that failed too often; a right key is never asked about it (cylindria/web/auth.py)."""
from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque


class FailureThrottle:
    """After `limit` failures within `window` seconds an address is refused until they age out."""

    def __init__(self, limit: int = 10, window: float = 60.0, max_addresses: int = 65536):
        self.limit = limit
        self.window = window
        self.max_addresses = max_addresses
        self._lock = threading.Lock()
        self._failures: OrderedDict[str, deque] = OrderedDict()

    def retry_after(self, address: str) -> int | None:
        """Seconds until this address may try again, or None if it is not throttled."""
        if address not in self._failures:
            return None  # the common case, answered without the lock (a dict lookup is atomic)
        with self._lock:
            failures = self._recent(address)
            if failures is None or len(failures) < self.limit:
                return None
            return max(1, int(failures[-self.limit] + self.window - time.monotonic()) + 1)

    def record_failure(self, address: str) -> None:
        """Count one failed attempt."""
        with self._lock:
            failures = self._recent(address)
            if failures is None:
                failures = self._failures[address] = deque(maxlen=self.limit)
                if len(self._failures) > self.max_addresses:
                    self._failures.popitem(last=False)  # bounded memory under a spray of addresses
            failures.append(time.monotonic())
            self._failures.move_to_end(address)

    def _recent(self, address: str) -> deque | None:
        """The address's failures within the window (older ones dropped)."""
        failures = self._failures.get(address)
        if failures is None:
            return None
        horizon = time.monotonic() - self.window
        while failures and failures[0] < horizon:
            failures.popleft()
        if not failures:
            del self._failures[address]
            return None
        return failures
