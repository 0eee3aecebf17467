"""The webhook address check: which URLs Cylindria will POST to. No network: fake resolvers only."""
import ipaddress

import pytest
from hypothesis import given, strategies as st

from cylindria.webhooks.address import (InvalidWebhook, Target, check_webhook, comfy_endpoints,
                              forbidden_reason, parse_webhook_url)

REFUSED = ["10.0.0.1", "10.255.255.255", "172.16.0.1", "172.31.255.255", "192.168.1.1",
           "169.254.169.254", "100.64.0.1", "100.127.255.255", "127.0.0.1", "127.5.5.5", "0.0.0.0",
           "::1", "::", "fc00::1", "fd12::1", "fe80::1", "::ffff:10.0.0.1", "::ffff:127.0.0.1",
           "64:ff9b::a00:1", "2002:0a00:0001::", "224.0.0.1", "255.255.255.255"]
ALLOWED = ["172.32.0.1", "100.128.0.1", "::ffff:8.8.8.8", "8.8.8.8", "1.1.1.1", "2606:4700:4700::1111"]
COMFY = comfy_endpoints("http://127.0.0.1:8188", 2)


@pytest.fixture(autouse=True)
def _no_real_dns(monkeypatch):
    """Fail loudly if a test reaches the system resolver: these tests must never touch the network."""
    def refuse(*args, **kwargs):
        raise AssertionError("the real resolver was called")
    monkeypatch.setattr("socket.getaddrinfo", refuse)


def resolver(table: dict):
    """A fake resolver answering from `table`, failing like the real one for anything else."""
    def resolve(host, port):
        if host not in table:
            raise OSError(f"fake resolver: unknown host {host}")
        return list(table[host])
    return resolve


def no_resolving(host, port):
    raise AssertionError(f"{host} should not have been resolved")


@pytest.mark.parametrize("address", REFUSED)
def test_non_public_addresses_are_refused_with_a_reason(address):
    assert forbidden_reason(address)
    assert forbidden_reason(ipaddress.ip_address(address)) == forbidden_reason(address)


@pytest.mark.parametrize("address", ALLOWED)
def test_public_addresses_are_allowed(address):
    assert forbidden_reason(address) is None


@pytest.mark.parametrize("address, reason", [
    ("127.0.0.1", "a loopback address"), ("::1", "a loopback address"),
    ("10.0.0.1", "a private address"), ("169.254.169.254", "a link-local address"),
    ("fd12::1", "a unique-local address"), ("0.0.0.0", "an unspecified address"),
    ("::ffff:127.0.0.1", "a loopback address"), ("2002:0a00:0001::", "a private address"),
    ("64:ff9b::a00:1", "a private address"), ("::10.0.0.1", "a private address"),
])
def test_the_reason_names_the_kind_of_address(address, reason):
    assert forbidden_reason(address) == reason


@given(st.integers(min_value=0, max_value=2 ** 24 - 1))
def test_an_ipv4_mapped_private_address_is_judged_like_its_ipv4_form(offset):
    v4 = ipaddress.IPv4Address("10.0.0.0") + offset
    mapped = ipaddress.IPv6Address(f"::ffff:{v4}")
    assert forbidden_reason(mapped) == forbidden_reason(v4) == "a private address"


@pytest.mark.parametrize("url", [
    "ftp://x", "file:///etc/passwd", "http://", "http://user:pw@host/", "http://@host/",
    "http://" + "a" * 3000 + ".com/", "http://exa mple.com", "http://example.com\n/",
    "http://example.com:0/", "http://example.com:70000/", "http://example.com:+80/",
    "http://exa%6dple.com/", "", "   ", None, "javascript:alert(1)", "//example.com/",
])
def test_malformed_or_unsafe_urls_are_refused(url):
    with pytest.raises(InvalidWebhook):
        parse_webhook_url(url)


@pytest.mark.parametrize("url, parsed", [
    ("http://[::1]:9/", ("http", "::1", 9)),
    ("https://Example.COM/hook?x=1", ("https", "example.com", 443)),
    ("  http://example.com:8080/a  ", ("http", "example.com", 8080)),
    ("http://example.com:65535", ("http", "example.com", 65535)),
])
def test_good_urls_parse_to_scheme_host_and_port(url, parsed):
    assert parse_webhook_url(url) == parsed


def test_a_checked_target_keeps_the_url_and_the_addresses_it_checked():
    target = check_webhook(" https://hooks.example.com/x ", allow_private=False,
                           resolve=resolver({"hooks.example.com": ["8.8.8.8", "2606:4700:4700::1111"]}))
    assert target == Target("https://hooks.example.com/x", "https", "hooks.example.com", 443,
                            ("8.8.8.8", "2606:4700:4700::1111"))


def test_a_literal_ip_host_is_not_resolved():
    assert check_webhook("http://1.1.1.1/", allow_private=False, resolve=no_resolving).addresses == ("1.1.1.1",)


@pytest.mark.parametrize("address", REFUSED)
def test_a_literal_non_public_host_is_refused(address):
    host = f"[{address}]" if ":" in address else address
    with pytest.raises(InvalidWebhook, match="Cylindria will not call"):
        check_webhook(f"http://{host}/", allow_private=False, resolve=no_resolving)


def test_one_private_address_among_public_ones_is_enough_to_refuse():
    resolve = resolver({"mixed.example": ["8.8.8.8", "10.1.2.3"]})
    with pytest.raises(InvalidWebhook, match=r"10\.1\.2\.3.*private"):
        check_webhook("http://mixed.example/", allow_private=False, resolve=resolve)


def test_allow_private_lets_a_private_address_through():
    resolve = resolver({"nas.lan": ["192.168.1.10"]})
    assert check_webhook("http://nas.lan/", allow_private=True, resolve=resolve).addresses == ("192.168.1.10",)


@pytest.mark.parametrize("url", ["http://127.0.0.1:8188/", "http://127.0.0.1:8189/", "http://localhost:8188/",
                                 "http://[::1]:8188", "http://0.0.0.0:8188/", "http://[::ffff:127.0.0.1]:8188/"])
def test_comfyui_itself_is_refused_even_with_allow_private(url):
    with pytest.raises(InvalidWebhook, match="ComfyUI"):
        check_webhook(url, allow_private=True, comfy=COMFY, resolve=no_resolving)


def test_a_name_resolving_to_the_comfy_host_is_refused_on_a_comfy_port():
    comfy = comfy_endpoints("http://gpu-box:8188", 1)
    resolve = resolver({"gpu-box": ["10.0.0.5"], "alias.lan": ["10.0.0.5"]})
    with pytest.raises(InvalidWebhook, match="ComfyUI"):
        check_webhook("http://alias.lan:8188/", allow_private=True, comfy=comfy, resolve=resolve)
    assert check_webhook("http://alias.lan:9000/", allow_private=True, comfy=comfy, resolve=resolve)


def test_an_unresolvable_comfy_host_fails_closed_on_its_ports():
    comfy = comfy_endpoints("http://gpu-box:8188", 1)
    with pytest.raises(InvalidWebhook, match="ComfyUI"):
        check_webhook("http://1.1.1.1:8188/", allow_private=True, comfy=comfy, resolve=resolver({}))


def test_the_port_after_the_last_gpu_is_not_comfy():
    target = check_webhook("http://127.0.0.1:8190/", allow_private=True, comfy=COMFY, resolve=no_resolving)
    assert target.port == 8190


def test_comfy_endpoints_cover_one_port_per_gpu():
    assert comfy_endpoints("http://LocalHost:8188/", 3) == {("localhost", 8188), ("localhost", 8189),
                                                           ("localhost", 8190)}


@pytest.mark.parametrize("url", ["http://localhost/", "http://LOCALHOST:8080/", "http://api.localhost/"])
def test_localhost_is_loopback_without_resolving(url):
    with pytest.raises(InvalidWebhook, match="loopback"):
        check_webhook(url, allow_private=False, resolve=no_resolving)


def test_a_host_that_cannot_be_resolved_is_refused():
    with pytest.raises(InvalidWebhook, match="cannot be resolved"):
        check_webhook("http://nowhere.example/", allow_private=True, resolve=resolver({}))


def test_a_host_resolving_to_nothing_is_refused():
    with pytest.raises(InvalidWebhook, match="cannot be resolved"):
        check_webhook("http://empty.example/", allow_private=True, resolve=resolver({"empty.example": []}))


# This host's own addresses, as cylindria/webhooks/host.py would read them: given, never looked up, and
# never connected to (the check is pure).
HOST = frozenset(map(ipaddress.ip_address, ["192.0.2.10", "2001:db8::10"]))


@pytest.mark.parametrize("url", ["http://192.0.2.10:8188/interrupt", "http://192.0.2.10:8189/",
                                 "http://[2001:db8::10]:8188/", "http://[::ffff:192.0.2.10]:8188/",
                                 "http://[::]:8188/", "http://this-box:8189/"])
def test_an_address_of_this_host_on_a_gpu_port_is_refused_even_with_allow_private(url):
    resolve = resolver({"this-box": ["2001:db8::10"]})
    with pytest.raises(InvalidWebhook, match="ComfyUI"):
        check_webhook(url, allow_private=True, comfy=COMFY, local=HOST, resolve=resolve)


def test_an_address_of_this_host_on_another_port_is_a_receiver_like_any_other():
    target = check_webhook("http://192.0.2.10:9000/", allow_private=True, comfy=COMFY, local=HOST,
                           resolve=no_resolving)
    assert target.addresses == ("192.0.2.10",)


@pytest.mark.parametrize("address, reason", [
    ("::ffff:0:7f00:1", "a loopback address"), ("::ffff:0:a00:1", "a private address"),
    ("::ffff:0:c0a8:101", "a private address"), ("64:ff9b:1::a00:1", "a local-use NAT64 address"),
    ("64:ff9b:1::808:808", "a local-use NAT64 address"),
])
def test_ipv4_translated_and_local_use_nat64_forms_are_judged_by_their_ipv4_address(address, reason):
    assert forbidden_reason(address) == reason


def test_an_ipv4_translated_public_address_is_allowed_like_its_ipv4_form():
    assert forbidden_reason("::ffff:0:808:808") is None


@pytest.mark.parametrize("address", [
    "::ffff:0:7f00:1",  # IPv4-translated 127.0.0.1
    "64:ff9b:1::7f00:1",  # local-use NAT64, /96 form of 127.0.0.1
    "64:ff9b:1:7f00:0:100::",  # the /48 form of 127.0.0.1 (bits 64-71 skipped)
    "64:ff9b:1:0:7f:0:1:0",  # the /64 form of 127.0.0.1
])
def test_translated_and_nat64_forms_of_loopback_are_refused_on_a_gpu_port(address):
    with pytest.raises(InvalidWebhook, match="ComfyUI"):
        check_webhook(f"http://[{address}]:8188/", allow_private=True, comfy=COMFY,
                      resolve=no_resolving)


@pytest.mark.parametrize("address", ["64:ff9b:1::c000:20a", "::ffff:0:c000:20a"])  # 192.0.2.10
def test_translated_and_nat64_forms_of_this_hosts_address_are_refused_on_a_gpu_port(address):
    with pytest.raises(InvalidWebhook, match="ComfyUI"):
        check_webhook(f"http://[{address}]:8188/", allow_private=True, comfy=COMFY, local=HOST,
                      resolve=no_resolving)
