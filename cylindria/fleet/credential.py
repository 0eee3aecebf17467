"""The fleet credential: one random secret in the database's meta table, made by the first
node that asks for it (the meta row is added only if absent, so nodes starting together read
the same one), that the nodes present to each other's internal endpoints. A client's key
never travels between nodes; this secret is never logged nor part of any answer."""
from __future__ import annotations

import hmac
import secrets

from cylindria.storage import Meta

HEADER = "X-Cylindria-Fleet"
ENVIRON_HEADER = "HTTP_X_CYLINDRIA_FLEET"  # the same header as a WSGI environ key
META_KEY = "fleet_credential"


class FleetCredential:
    """The secret, shown by no repr or str (a log line of the object shows nothing)."""

    __slots__ = ("_secret",)

    def __init__(self, secret: str):
        self._secret = secret.encode("ascii")

    def __repr__(self) -> str:
        return "FleetCredential(<hidden>)"

    def headers(self) -> dict[str, str]:
        """The header a call to another node carries."""
        return {HEADER: self._secret.decode("ascii")}

    def accepts(self, presented: str | None) -> bool:
        """Whether a request presented this credential (compared in constant time)."""
        if not presented:
            return False
        return hmac.compare_digest(presented.encode("utf-8", "surrogateescape"), self._secret)


def load_credential(meta: Meta) -> FleetCredential:
    """The fleet's credential, created in the database if no node has made it yet."""
    return FleetCredential(meta.get(META_KEY, secrets.token_urlsafe(32)))
