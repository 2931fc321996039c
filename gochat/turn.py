"""TURN (RFC 8656) settings shared by the bootnode and the client: the server's URL
(RFC 7065), and the time-limited credentials of the TURN REST API scheme that coturn
implements (``use-auth-secret``): a bootnode that shares coturn's secret mints them for
its clients, so that no long-term TURN password is handed out."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass

DEFAULT_TURN_PORT = 3478
CREDENTIAL_TTL_s = 24 * 3600  # REST credentials minted for a client are valid this long
_URL = re.compile(r"^turn:(\[[0-9A-Fa-f:.]+\]|[^\[\]:?/]+)(?::(\d{1,5}))?(?:\?transport=(udp|tcp))?$")


class TurnUrlError(ValueError):
    pass


@dataclass(frozen=True)
class TurnServer:
    """Where a TURN server listens (UDP only: gochat's peers speak UDP)."""

    host: str
    port: int = DEFAULT_TURN_PORT

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"turn:{host}:{self.port}"


def parse_turn_url(text: str) -> TurnServer:
    """``turn:HOST[:PORT][?transport=udp]``; ``turns:`` and TCP are refused (gochat relays
    UDP datagrams)."""
    m = _URL.match(text.strip())
    if m is None:
        raise TurnUrlError(f"not a TURN URL (turn:HOST[:PORT]): {text!r}")
    host, port, transport = m.group(1).strip("[]"), m.group(2), m.group(3)
    if transport == "tcp":
        raise TurnUrlError("only UDP TURN is supported (?transport=udp)")
    number = int(port) if port else DEFAULT_TURN_PORT
    if not 0 < number < 65536:
        raise TurnUrlError(f"port {number} out of range")
    return TurnServer(host, number)


def rest_credentials(secret: str, user: str, now: float, ttl_s: float = CREDENTIAL_TTL_s) -> tuple[str, str]:
    """The TURN REST API's time-limited credentials: the username is the expiry time
    (Unix seconds) and a user id joined by a colon, the password the base64 of
    HMAC-SHA1(secret, username). coturn checks both with the same secret."""
    username = f"{int(now + ttl_s)}:{user}"
    password = base64.b64encode(hmac.digest(secret.encode(), username.encode(), hashlib.sha1)).decode()
    return username, password
