"""Transport encryption of an established peer session (after the Noise handshake).

UDP reorders and loses packets, so the counter travels with each packet (as in
WireGuard) instead of being implied: AES-256-GCM with nonce = 4 zero bytes + the 64-bit
counter, an anti-replay window checked after authentication, and limits that say when
the session must be rekeyed (a new handshake) and when its keys must no longer be used.
Sans-I/O: time is an argument.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gochat.crypto.replay import ReplayWindow

# Limits after wireguard-go's device/constants.go, with the same meaning.
REKEY_AFTER_MESSAGES = 2**60
REJECT_AFTER_MESSAGES = 2**64 - 2**13 - 1
REKEY_AFTER_TIME_s = 120.0
REJECT_AFTER_TIME_s = 180.0


class TransportError(Exception):
    """A packet that was dropped; ``reason`` is a counter label."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _nonce(counter: int) -> bytes:
    return b"\x00\x00\x00\x00" + counter.to_bytes(8, "big")


class TransportKeys:
    """One direction pair of keys with its counters, created when a handshake completes."""

    __slots__ = ("_recv", "_send", "created", "rekey_after_messages", "send_counter", "window")

    def __init__(
        self, send_key: bytes, recv_key: bytes, now: float, rekey_after_messages: int = REKEY_AFTER_MESSAGES
    ) -> None:
        self._send = AESGCM(send_key)
        self._recv = AESGCM(recv_key)
        self.send_counter = 0
        self.window = ReplayWindow()
        self.created = now
        self.rekey_after_messages = rekey_after_messages

    def encrypt(self, plaintext: bytes, ad: bytes, now: float) -> tuple[int, bytes]:
        """(counter, ciphertext) for the next packet; the counter goes on the wire."""
        if self.send_counter >= REJECT_AFTER_MESSAGES or now - self.created >= REJECT_AFTER_TIME_s:
            raise TransportError("keys_expired")
        counter = self.send_counter
        self.send_counter += 1
        return counter, self._send.encrypt(_nonce(counter), plaintext, ad)

    def decrypt(self, counter: int, ciphertext: bytes, ad: bytes, now: float) -> bytes:
        """Plaintext, or TransportError('tampered' | 'replayed' | 'stale' | 'keys_expired')."""
        if now - self.created >= REJECT_AFTER_TIME_s:
            raise TransportError("keys_expired")
        if not 0 <= counter < REJECT_AFTER_MESSAGES:
            raise TransportError("stale")
        try:
            plaintext = self._recv.decrypt(_nonce(counter), ciphertext, ad)
        except InvalidTag:
            raise TransportError("tampered") from None
        if not self.window.accept(counter, REJECT_AFTER_MESSAGES):
            raise TransportError("stale" if self.window.is_stale(counter) else "replayed")
        return plaintext

    def needs_rekey(self, now: float) -> bool:
        """Time for a new handshake: by message count or by age."""
        return self.send_counter >= self.rekey_after_messages or now - self.created >= REKEY_AFTER_TIME_s
