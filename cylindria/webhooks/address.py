"""Whether Cylindria may POST to a webhook URL; pure, so it runs at submission and again before each send."""
import ipaddress
import re
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

MAX_URL_LENGTH = 2048
DEFAULT_PORTS = {"http": 80, "https": 443}
# Letters, digits, "-", "_" and dots only: a stricter host than urlsplit's keeps the
# name we check and the name the sender connects to the same.
HOST_NAME = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*\.?")
NAT64 = ipaddress.ip_network("64:ff9b::/96")
LOCAL_NAT64 = ipaddress.ip_network("64:ff9b:1::/48")  # local-use NAT64 (RFC 8215)
TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")  # IPv4-translated, ::ffff:0:a.b.c.d (RFC 2765)
IPV4_BITS = 0xFFFFFFFF
REFUSED_NETWORKS = tuple((ipaddress.ip_network(net), reason) for net, reason in (
    ("0.0.0.0/8", "an unspecified address"), ("::/128", "an unspecified address"),
    ("127.0.0.0/8", "a loopback address"), ("::1/128", "a loopback address"),
    ("10.0.0.0/8", "a private address"), ("172.16.0.0/12", "a private address"),
    ("192.168.0.0/16", "a private address"), ("fc00::/7", "a unique-local address"),
    ("169.254.0.0/16", "a link-local address"), ("fe80::/10", "a link-local address"),
    ("fec0::/10", "a site-local address"), ("100.64.0.0/10", "a shared (carrier-grade NAT) address"),
    ("224.0.0.0/4", "a multicast address"), ("ff00::/8", "a multicast address"),
    ("255.255.255.255/32", "a broadcast address"), ("240.0.0.0/4", "a reserved address"),
))


class InvalidWebhook(ValueError):
    """A webhook URL Cylindria will not call; `str(exc)` is a sentence for the client."""


@dataclass(frozen=True)
class Target:
    """A checked webhook URL and the addresses that were found safe to call."""
    url: str
    scheme: str
    host: str
    port: int
    addresses: tuple


def parse_webhook_url(url: str) -> tuple[str, str, int]:
    """(scheme, host, port), refusing anything a sender could read differently from us."""
    text = url.strip() if isinstance(url, str) else ""
    if not text:
        raise InvalidWebhook("webhook URL must be a non-empty string")
    if len(text) > MAX_URL_LENGTH:
        raise InvalidWebhook(f"webhook URL is longer than {MAX_URL_LENGTH} characters")
    if any(ch.isspace() or not ch.isprintable() for ch in text):
        raise InvalidWebhook("webhook URL must not contain whitespace or control characters")
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise InvalidWebhook("webhook URL is malformed or has a port outside 1 to 65535") from None
    if parts.scheme not in DEFAULT_PORTS:
        raise InvalidWebhook("webhook URL must start with http:// or https://")
    if parts.username is not None or parts.password is not None:
        raise InvalidWebhook("webhook URL must not contain a user name or password")
    host = (parts.hostname or "").lower()
    if not host or (literal_ip(host) is None and not HOST_NAME.fullmatch(host)):
        raise InvalidWebhook("webhook URL must name a valid host")
    if port == 0:
        raise InvalidWebhook("webhook URL has a port outside 1 to 65535")
    return parts.scheme, host, port or DEFAULT_PORTS[parts.scheme]


def literal_ip(host: str):
    """The IP address a host is written as, or None for a name that needs resolving."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def judged_address(address) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The address packets really go to: IPv6 forms that carry an IPv4 address are judged by it
    (a local-use NAT64 one by its /96 form: judged_addresses gives every form)."""
    address = ipaddress.ip_address(address)
    if address.version == 4:
        return address
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in NAT64 or address in LOCAL_NAT64 or address in TRANSLATED \
            or 1 < int(address) < 2 ** 32:  # or IPv4-compatible (::a.b.c.d)
        return ipaddress.IPv4Address(int(address) & IPV4_BITS)
    return ipaddress.IPv6Address(int(address))  # without a zone (fe80::1%eth0 is fe80::1)


def judged_addresses(address) -> tuple:
    """Every address packets may really go to: a local-use NAT64 prefix may be /48, /56, /64
    or /96 long (RFC 6052 puts the IPv4 address after it, skipping bits 64-71), and which one
    the network uses is not known here, so each is judged."""
    address = ipaddress.ip_address(address)
    if address not in LOCAL_NAT64:
        return (judged_address(address),)
    value = int(address)
    squeezed = ((value >> 64) << 56) | (value & (2 ** 56 - 1))  # 120 bits: bits 64-71 left out
    return tuple(ipaddress.IPv4Address((squeezed >> (88 - length)) & IPV4_BITS)
                 for length in (48, 56, 64)) + (judged_address(address),)


def forbidden_reason(address) -> str | None:
    """Why Cylindria must not call this address without --webhook-allow-private, or None if it may."""
    if ipaddress.ip_address(address) in LOCAL_NAT64:  # site-local by definition (RFC 8215)
        return "a local-use NAT64 address"
    address = judged_address(address)
    for network, reason in REFUSED_NETWORKS:
        if address in network:
            return reason
    # Backstop for the rarer special ranges (documentation, benchmarking, Teredo, ...).
    return None if address.is_global else "a special-purpose address that is not publicly routable"


def comfy_endpoints(comfy_base_url: str, gpus: int) -> frozenset[tuple[str, int]]:
    """(host, port) of every GPU's ComfyUI, since GPU n listens on the base port + n."""
    parts = urlsplit(comfy_base_url.strip())
    base_port = parts.port or DEFAULT_PORTS.get(parts.scheme, 80)
    return frozenset(((parts.hostname or "").lower(), base_port + n) for n in range(gpus))


def system_resolve(host: str, port: int) -> list[str]:
    """The IP strings the operating system resolves a name to."""
    return [info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]


def addresses_of(host: str, port: int, resolve) -> tuple:
    """The addresses a host means; "localhost" is loopback by definition (RFC 6761), never looked up."""
    literal = literal_ip(host)
    if literal is not None:
        return (literal,)
    if host.rstrip(".") == "localhost" or host.rstrip(".").endswith(".localhost"):
        return (ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"))
    try:
        found = tuple(ipaddress.ip_address(a) for a in resolve(host, port))
    except (OSError, UnicodeError, ValueError):
        raise InvalidWebhook(f"webhook host {host} cannot be resolved") from None
    if not found:
        raise InvalidWebhook(f"webhook host {host} cannot be resolved")
    return found


def refuse_comfy(host: str, port: int, addresses: tuple, comfy: frozenset, resolve,
                 local: frozenset = frozenset()) -> None:
    """Refuse ComfyUI's own endpoints whatever the flags say: a webhook must never POST into it.
    On a GPU's port that is the ComfyUI host and every address of this host (`local`: its
    interfaces' addresses; loopback and unspecified ones always), as ComfyUI may listen on all."""
    comfy_hosts = {comfy_host for comfy_host, comfy_port in comfy if comfy_port == port}
    if not comfy_hosts:
        return
    message = f"webhook URL points at ComfyUI ({host}:{port}), which Cylindria never calls"
    if host in comfy_hosts:
        raise InvalidWebhook(message)
    try:  # fail closed: an unresolvable ComfyUI host cannot be ruled out
        refused = {judged for h in comfy_hosts for a in addresses_of(h, port, resolve)
                   for judged in judged_addresses(a)}
    except InvalidWebhook:
        raise InvalidWebhook(message) from None
    refused.update(judged for a in local for judged in judged_addresses(a))
    for address in addresses:
        for judged in judged_addresses(address):
            if judged.is_loopback or judged.is_unspecified or judged in refused:
                raise InvalidWebhook(message)


def check_webhook(url: str, *, allow_private: bool, comfy: frozenset = frozenset(),
                  local: frozenset = frozenset(), resolve=None) -> Target:
    """The checked target, or InvalidWebhook; every address the host resolves to must pass.
    `local`: this host's own addresses (cylindria/webhooks/host.py reads them)."""
    scheme, host, port = parse_webhook_url(url)
    resolve = resolve or system_resolve
    addresses = addresses_of(host, port, resolve)
    refuse_comfy(host, port, addresses, comfy, resolve, local)
    for address in addresses:
        reason = None if allow_private else forbidden_reason(address)
        if reason:
            where = host if str(address) == host else f"{host} ({address})"
            raise InvalidWebhook(f"webhook host {where} is {reason}, which Cylindria will not call")
    return Target(url.strip(), scheme, host, port, tuple(str(a) for a in addresses))
