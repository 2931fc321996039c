"""Stateless address-validation cookies (as DTLS, QUIC Retry and WireGuard use them).

A cookie is a MAC over (client address, time bucket) under a secret only the bootnode
knows, so the bootnode keeps no state for clients it has not yet validated, and a
spoofed source address never receives more bytes than it sent. A cookie minted in
bucket b is accepted during buckets b and b+1 (60 to 120 seconds).

Rebind challenges are the same idea for a registration that heartbeats from a new
address: a MAC over (time bucket, token, new address) that only a client receiving
datagrams at that address can echo, valid for the same buckets.
"""

from __future__ import annotations

import hmac
import os

from gochat.wire.constants import CHALLENGE_SIZE_bytes, COOKIE_BUCKET_s, COOKIE_SIZE_bytes, TOKEN_SIZE_bytes
from gochat.wire.endpoints import endpoint_key


class CookieJar:
    def __init__(self, secret: bytes | None = None, bucket_s: float = COOKIE_BUCKET_s) -> None:
        self._secret = secret if secret is not None else os.urandom(32)
        self._bucket_s = bucket_s

    def _mac(self, addr: tuple, bucket: int) -> bytes:
        key, port = endpoint_key(addr)
        msg = bucket.to_bytes(8, "big", signed=True) + key + port.to_bytes(2, "big")
        return hmac.digest(self._secret, msg, "sha256")[:COOKIE_SIZE_bytes]

    def make(self, addr: tuple, now: float) -> bytes:
        return self._mac(addr, int(now // self._bucket_s))

    def verify(self, cookie: bytes, addr: tuple, now: float) -> bool:
        if len(cookie) != COOKIE_SIZE_bytes or cookie == bytes(COOKIE_SIZE_bytes):
            return False
        bucket = int(now // self._bucket_s)
        return hmac.compare_digest(cookie, self._mac(addr, bucket)) or hmac.compare_digest(
            cookie, self._mac(addr, bucket - 1)
        )

    def _challenge(self, token: bytes, addr: tuple, bucket: int) -> bytes:
        key, port = endpoint_key(addr)
        msg = bucket.to_bytes(8, "big", signed=True) + token + key + port.to_bytes(2, "big")
        return hmac.digest(self._secret, msg, "sha256")[:CHALLENGE_SIZE_bytes]

    def challenge(self, token: bytes, addr: tuple, now: float) -> bytes:
        """The REBIND_CHALLENGE for ``token`` heartbeating from ``addr``."""
        return self._challenge(token, addr, int(now // self._bucket_s))

    def verify_challenge(self, challenge: bytes, token: bytes, addr: tuple, now: float) -> bool:
        if len(challenge) != CHALLENGE_SIZE_bytes or len(token) != TOKEN_SIZE_bytes:
            return False
        bucket = int(now // self._bucket_s)
        return hmac.compare_digest(challenge, self._challenge(token, addr, bucket)) or hmac.compare_digest(
            challenge, self._challenge(token, addr, bucket - 1)
        )
