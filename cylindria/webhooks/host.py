"""This host's own addresses, so that no webhook reaches a ComfyUI through one of them
(cylindria/webhooks/address.py judges; this module only looks). They are read without sending a packet
or opening a socket: the addresses the host's name resolves to (on Windows, every interface's)
and, on Linux, the kernel's own lists of local addresses."""
from __future__ import annotations

import ipaddress
import socket
import threading
import time
from pathlib import Path
from typing import Callable

READ_AGAIN_AFTER = 60.0  # seconds: an interface may get a new address (DHCP, a VPN coming up)
FIB_TRIE = Path("/proc/net/fib_trie")  # Linux: IPv4 routes, local addresses marked "host LOCAL"
IF_INET6 = Path("/proc/net/if_inet6")  # Linux: every interface's IPv6 addresses, in hex


def read_host_addresses() -> frozenset:
    """Every address of this host that can be found without sending anything."""
    return frozenset(_resolved_name() | local_ipv4(_read(FIB_TRIE)) | local_ipv6(_read(IF_INET6)))


def local_ipv4(fib_trie: str) -> set:
    """The addresses /proc/net/fib_trie lists as this host's own (a /32 "host LOCAL" route)."""
    found, last = set(), None
    for line in fib_trie.splitlines():
        words = line.split()
        if words[:1] == ["|--"] and len(words) == 2:
            last = words[1]
        elif words == ["/32", "host", "LOCAL"] and last is not None:
            found.add(ipaddress.IPv4Address(last))
    return found


def local_ipv6(if_inet6: str) -> set:
    """The addresses /proc/net/if_inet6 lists (32 hex digits first on each line)."""
    lines = map(str.split, if_inet6.splitlines())
    return {ipaddress.IPv6Address(int(words[0], 16)) for words in lines
            if words and len(words[0]) == 32}


def _resolved_name() -> set:
    """The addresses the host's own name resolves to (hosts file or resolver; Windows answers
    with every interface's address)."""
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None)
    except (OSError, UnicodeError):
        return set()
    return {ipaddress.ip_address(info[4][0].partition("%")[0]) for info in infos}


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:  # not Linux, or /proc not mounted
        return ""


class HostAddresses:
    """The host's addresses, read again at most every READ_AGAIN_AFTER seconds."""

    def __init__(self, read: Callable[[], frozenset] = read_host_addresses,
                 clock: Callable[[], float] = time.monotonic):
        self._read = read
        self._clock = clock
        self._lock = threading.Lock()
        self._addresses: frozenset = frozenset()
        self._read_at: float | None = None

    def current(self) -> frozenset:
        """The addresses as last read (read now if they are older than READ_AGAIN_AFTER)."""
        with self._lock:
            now = self._clock()
            if self._read_at is None or now - self._read_at >= READ_AGAIN_AFTER:
                self._addresses = self._read()
                self._read_at = now
            return self._addresses
