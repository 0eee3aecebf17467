"""This host's own addresses (cylindria/webhooks/host.py), read from texts given here, and their use by a
running Cylindria's webhook check. Nothing is ever sent to a non-loopback address."""
from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

import pytest

from cylindria.service.server import Service
from tests.conftest import make_config
from cylindria.webhooks.address import InvalidWebhook
from cylindria.webhooks.host import READ_AGAIN_AFTER, HostAddresses, local_ipv4, local_ipv6

FIB_TRIE = """Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 192.0.2.0/24 2 0 2
        |-- 192.0.2.0
           /24 link UNICAST
        |-- 192.0.2.10
           /32 host LOCAL
        |-- 192.0.2.255
           /32 link BROADCAST
Local:
  +-- 127.0.0.0/8 2 0 2
     |-- 127.0.0.0
        /8 host LOCAL
     |-- 127.0.0.1
        /32 host LOCAL
"""
IF_INET6 = """fe8000000000000000fc00fffe000001 04 40 20 80     eth0
20010db8000000000000000000000010 04 40 00 80     eth0
00000000000000000000000000000001 01 80 10 80       lo
"""
ADDRESS = ipaddress.ip_address


def test_the_kernels_lists_give_each_local_address_and_nothing_else():
    assert local_ipv4(FIB_TRIE) == {ADDRESS("192.0.2.10"), ADDRESS("127.0.0.1")}
    assert local_ipv6(IF_INET6) == {ADDRESS("fe80::fc:ff:fe00:1"), ADDRESS("2001:db8::10"),
                                    ADDRESS("::1")}
    assert local_ipv4("") == local_ipv6("") == set()


def test_the_addresses_are_read_again_only_after_a_while():
    reads, now = [], [0.0]

    def read():
        reads.append(now[0])
        return frozenset({ADDRESS(f"192.0.2.{len(reads)}")})
    host = HostAddresses(read, clock=lambda: now[0])
    assert host.current() == {ADDRESS("192.0.2.1")}
    now[0] = READ_AGAIN_AFTER / 2
    assert host.current() == {ADDRESS("192.0.2.1")} and len(reads) == 1
    now[0] = READ_AGAIN_AFTER
    assert host.current() == {ADDRESS("192.0.2.2")}


def test_a_running_cylindria_refuses_this_hosts_own_address_on_a_gpu_port(
        fakes, tmp_path, monkeypatch):
    """The check a submission and every try pass through knows the host's addresses (given
    here: the test never sends to them)."""
    given = frozenset({ADDRESS("192.0.2.10")})
    monkeypatch.setattr("cylindria.webhooks.wiring.HostAddresses", lambda: HostAddresses(lambda: given))
    gpu_port = urlsplit(fakes[0].url).port
    with Service(make_config(fakes, tmp_path, webhook_allow_private=True)) as service:
        webhooks = service.context.webhooks
        with pytest.raises(InvalidWebhook, match="ComfyUI"):
            webhooks.check(f"http://192.0.2.10:{gpu_port}/interrupt")
        assert webhooks.check(f"http://192.0.2.10:{gpu_port + 100}/").addresses == ("192.0.2.10",)
        assert webhooks.sender.local() == given
