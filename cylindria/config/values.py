"""The converters of the settings table: text (a flag, an environment variable) to a value,
or ValueError with a message an operator understands."""
from __future__ import annotations

import ipaddress
import re
from typing import Callable
from urllib.parse import urlsplit


def _integer(text: str) -> int:
    """A whole number, with a message an operator understands."""
    try:
        return int(str(text).strip())
    except ValueError:
        raise ValueError("must be a whole number") from None


def integer_in(low: int, high: int) -> Callable[[str], int]:
    """A converter for whole numbers from `low` to `high`."""
    def convert(text: str) -> int:
        value = _integer(text)
        if not low <= value <= high:
            raise ValueError(f"must be an integer from {low} to {high}")
        return value
    return convert


def mebibytes(low: int, high: int) -> Callable[[str], int]:
    """A converter for a whole number of MiB from `low` to `high`, to bytes."""
    count = integer_in(low, high)
    return lambda text: count(text) << 20


port = integer_in(0, 65535)  # 0 lets the OS choose (tests)
gpu_count = integer_in(1, 8)
thread_count = integer_in(1, 256)


def comfy_url(text: str) -> str:
    """An http(s) URL with a host."""
    parts = urlsplit(text.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host, like http://127.0.0.1:8188")
    parts.port  # raises ValueError for a bad port
    return text.strip().rstrip("/")


def node_name(text: str) -> str:
    """A fleet node's name: 1-63 letters, digits, '.', '_' or '-' (no ':', which separates
    the node from the GPU in GpuId=<node>:<n>)."""
    name = text.strip()
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,63}", name):
        raise ValueError("must be 1 to 63 letters, digits, '.', '_' or '-'")
    return name


def api_keys(text: str) -> tuple:
    """Comma-separated keys, each at least 8 characters."""
    keys = tuple(k.strip() for k in text.split(",") if k.strip())
    if not keys or any(len(k) < 8 for k in keys):
        raise ValueError("needs one or more comma-separated keys of at least 8 characters")
    return keys


RATE_UNITS = ("second", "minute", "hour", "day")
# Asymmetric signatures only: `none` and the HMAC family (HS*) would let anyone who holds
# the public key mint tokens.
JWT_ALGORITHMS = ("EdDSA", "ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256",
                  "PS384", "PS512")


def rate_limit(text: str) -> str:
    """Requests per unit of time, like 120/minute."""
    count, _, unit = text.strip().lower().partition("/")
    if not count.isdigit() or int(count) < 1 or unit not in RATE_UNITS:
        raise ValueError("must be a count per second, minute, hour or day, like 120/minute")
    return f"{int(count)}/{unit}"


def origin(text: str) -> str:
    """A browser origin (scheme://host[:port], no path), or * for any."""
    value = text.strip().rstrip("/")
    if value == "*":
        return value
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path \
            or parts.query or parts.fragment or parts.username:
        raise ValueError("must be an origin like https://app.example.com (or *)")
    parts.port  # raises ValueError for a bad port
    return value


def algorithms(text: str) -> tuple:
    """Comma-separated JWT signature algorithms, from the asymmetric ones."""
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    wrong = [name for name in names if name not in JWT_ALGORITHMS]
    if not names or wrong:
        raise ValueError(f"must be among {', '.join(JWT_ALGORITHMS)} (none and HS* are refused)")
    return names


def claim_value(text: str) -> tuple:
    """`claim=value`: a JWT claim and the word it must hold (neither empty, no spaces)."""
    claim, equals, value = text.strip().partition("=")
    if not equals or not claim or not value or any(c.isspace() for c in claim + value):
        raise ValueError("must be claim=value, like scope=cylindria:own")
    return claim, value


def positive_float(text: str) -> float:
    """A number above zero."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError("must be a number") from None
    if not value > 0:
        raise ValueError("must be a number above 0")
    return value


def log_level(text: str) -> str:
    """A logging level name."""
    name = text.strip().upper()
    if name not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ValueError("must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
    return name


def flag_bool(text: str) -> bool:
    """1/true/yes/on or 0/false/no/off."""
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("must be 1 or 0")


def ip_address(text: str) -> str:
    """One IP address, written as a client's address is (127.0.0.1, ::1)."""
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        raise ValueError("must be one IP address, like 127.0.0.1") from None


DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(text: str) -> float:
    """A span of time as seconds: a number with a unit, like 90s, 45m, 12h or 30d."""
    value = str(text).strip().lower()
    unit = DURATION_UNITS.get(value[-1:]) if value else None
    try:
        amount = float(value[:-1]) if unit else None
    except ValueError:
        amount = None
    if amount is None or not amount > 0 or amount != amount or amount == float("inf"):
        raise ValueError("must be a number above 0 with a unit s, m, h or d, like 90s, 12h or 30d")
    return amount * unit


def seconds(text: str) -> float:
    """A span of time: a number of seconds (300), or a number with a unit (5m)."""
    try:
        value = float(str(text).strip())
    except ValueError:
        return duration(text)
    if not value > 0 or value == float("inf"):
        raise ValueError("must be a number of seconds above 0, or a duration like 5m")
    return value


def database_url(text: str) -> str:
    """A store of record: `postgresql://...` (`postgres://`), libpq `key=value` parameters,
    or `sqlite:///<path>`."""
    text = text.strip()
    scheme = text.split("://")[0].lower() if "://" in text else None
    if scheme in ("postgresql", "postgres", "sqlite") or (scheme is None and "=" in text):
        return text
    raise ValueError("expected postgresql://user:pass@host:port/db (or libpq key=value "
                     "parameters), or sqlite:///<path>")
