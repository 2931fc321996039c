"""The Noise IK handshake (optionally with the psk2 modifier), exactly per the Noise
Protocol Framework revision 34, over X25519, AES-256-GCM and SHA-256.

Sans-I/O: a HandshakeState turns payloads into handshake messages and back; it never
touches a socket or a clock. Ephemeral keys can be injected, which the published test
vectors need. Used for gochat's `Noise_IKpsk2_25519_AESGCM_SHA256` peer sessions.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

DHLEN = 32
HASHLEN = 32
TAGLEN = 16
MAX_MESSAGE_bytes = 65535
MAX_NONCE = 2**64 - 1  # reserved by the spec: never used to encrypt

PROTOCOL_IK = "Noise_IK_25519_AESGCM_SHA256"
PROTOCOL_IKPSK2 = "Noise_IKpsk2_25519_AESGCM_SHA256"

# Message patterns of IK, and IKpsk2 (the psk token at the end of the second message).
_PATTERNS = {
    PROTOCOL_IK: (("e", "es", "s", "ss"), ("e", "ee", "se")),
    PROTOCOL_IKPSK2: (("e", "es", "s", "ss"), ("e", "ee", "se", "psk")),
}


class NoiseError(Exception):
    """A handshake or transport message that does not authenticate, or misuse."""


def generate_private_key() -> bytes:
    return X25519PrivateKey.generate().private_bytes_raw()


def public_key(private: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


def _dh(private: bytes, public: bytes) -> bytes:
    try:
        return X25519PrivateKey.from_private_bytes(private).exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError as exc:  # an all-zero shared secret (low-order point)
        raise NoiseError(f"bad public key: {exc}") from None


def dh(private: bytes, public: bytes) -> bytes:
    """X25519 shared secret; NoiseError for a low-order (all-zero result) public key."""
    return _dh(private, public)


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.digest(key, data, "sha256")


def hkdf(chaining_key: bytes, ikm: bytes, outputs: int) -> tuple[bytes, ...]:
    temp = _hmac(chaining_key, ikm)
    out1 = _hmac(temp, b"\x01")
    out2 = _hmac(temp, out1 + b"\x02")
    if outputs == 2:
        return out1, out2
    return out1, out2, _hmac(temp, out2 + b"\x03")


class CipherState:
    """AES-256-GCM with a 64-bit counter nonce (4 zero bytes, then the counter big-endian)."""

    __slots__ = ("_aead", "key", "n")

    def __init__(self, key: bytes | None = None) -> None:
        self.key = key
        self._aead = AESGCM(key) if key is not None else None
        self.n = 0

    @property
    def has_key(self) -> bool:
        return self._aead is not None

    def _nonce(self) -> bytes:
        if self.n >= MAX_NONCE:
            raise NoiseError("nonce space exhausted: rekey")
        return b"\x00\x00\x00\x00" + self.n.to_bytes(8, "big")

    def encrypt_with_ad(self, ad: bytes, plaintext: bytes) -> bytes:
        if self._aead is None:
            return plaintext
        out = self._aead.encrypt(self._nonce(), plaintext, ad)
        self.n += 1
        return out

    def decrypt_with_ad(self, ad: bytes, ciphertext: bytes) -> bytes:
        if self._aead is None:
            return ciphertext
        try:
            out = self._aead.decrypt(self._nonce(), ciphertext, ad)
        except InvalidTag:
            raise NoiseError("message does not authenticate") from None
        self.n += 1
        return out


class SymmetricState:
    __slots__ = ("cipher", "ck", "h")

    def __init__(self, protocol_name: str) -> None:
        name = protocol_name.encode()
        self.h = name.ljust(HASHLEN, b"\x00") if len(name) <= HASHLEN else hashlib.sha256(name).digest()
        self.ck = self.h
        self.cipher = CipherState()

    def mix_key(self, ikm: bytes) -> None:
        self.ck, temp_k = hkdf(self.ck, ikm, 2)
        self.cipher = CipherState(temp_k)

    def mix_hash(self, data: bytes) -> None:
        self.h = hashlib.sha256(self.h + data).digest()

    def mix_key_and_hash(self, ikm: bytes) -> None:
        self.ck, temp_h, temp_k = hkdf(self.ck, ikm, 3)
        self.mix_hash(temp_h)
        self.cipher = CipherState(temp_k)

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        ciphertext = self.cipher.encrypt_with_ad(self.h, plaintext)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        plaintext = self.cipher.decrypt_with_ad(self.h, ciphertext)
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[CipherState, CipherState]:
        k1, k2 = hkdf(self.ck, b"", 2)
        return CipherState(k1), CipherState(k2)


class HandshakeState:
    """One side of an IK / IKpsk2 handshake.

    The initiator must know the responder's static public key (IK's pre-message);
    the responder learns the initiator's from the first message (``remote_static``).
    After the second message, ``split()`` gives (send, receive) cipher states.
    A NoiseError leaves the state unusable: discard it and start a new handshake.
    """

    def __init__(
        self,
        *,
        initiator: bool,
        static_private: bytes,
        remote_static: bytes | None = None,
        psk: bytes | None = None,
        prologue: bytes = b"",
        ephemeral_private: bytes | None = None,
        protocol_name: str = PROTOCOL_IKPSK2,
    ) -> None:
        if protocol_name not in _PATTERNS:
            raise ValueError(f"unsupported protocol {protocol_name}")
        self.has_psk = "psk" in protocol_name.split("_")[1]
        if self.has_psk and (psk is None or len(psk) != 32):
            raise ValueError("IKpsk2 needs a 32-byte psk")
        self.initiator = initiator
        self.s = static_private
        self.s_pub = public_key(static_private)
        if not initiator:
            responder_static = self.s_pub
        elif remote_static is None or len(remote_static) != DHLEN:
            raise ValueError("the IK initiator must know the responder's static key")
        else:
            responder_static = remote_static
        self.e: bytes | None = ephemeral_private
        self.rs = remote_static
        self.re: bytes | None = None
        self.psk = psk or b""  # read only by the psk token, and a psk pattern was refused without one
        self.symmetric = SymmetricState(protocol_name)
        self.symmetric.mix_hash(prologue)
        # pre-message "<- s": both sides hash the responder's static key
        self.symmetric.mix_hash(responder_static)
        self._patterns: list[tuple[str, ...]] = list(_PATTERNS[protocol_name])
        self._my_turn = initiator

    @property
    def remote_static(self) -> bytes | None:
        return self.rs

    @property
    def complete(self) -> bool:
        return not self._patterns

    @property
    def handshake_hash(self) -> bytes:
        return self.symmetric.h

    def _dh_token(self, token: str) -> bytes:
        # "es": initiator's e with responder's s; "se": initiator's s with responder's e.
        mine_first = {"ee": ("e", "re"), "ss": ("s", "rs")}
        if token in mine_first:
            a, b = mine_first[token]
        elif token == "es":
            a, b = ("e", "rs") if self.initiator else ("s", "re")
        else:  # "se"
            a, b = ("s", "re") if self.initiator else ("e", "rs")
        return _dh(getattr(self, a), getattr(self, b))

    def write_message(self, payload: bytes = b"") -> bytes:
        if not self._patterns or not self._my_turn:
            raise NoiseError("not this side's turn to write")
        sym = self.symmetric
        out = bytearray()
        for token in self._patterns.pop(0):
            if token == "e":
                if self.e is None:
                    self.e = generate_private_key()
                e_pub = public_key(self.e)
                out += e_pub
                sym.mix_hash(e_pub)
                if self.has_psk:
                    sym.mix_key(e_pub)
            elif token == "s":
                out += sym.encrypt_and_hash(self.s_pub)
            elif token == "psk":
                sym.mix_key_and_hash(self.psk)
            else:
                sym.mix_key(self._dh_token(token))
        out += sym.encrypt_and_hash(payload)
        if len(out) > MAX_MESSAGE_bytes:
            raise NoiseError("handshake message too long")
        self._my_turn = False
        return bytes(out)

    def read_message(self, message: bytes) -> bytes:
        if not self._patterns or self._my_turn:
            raise NoiseError("not this side's turn to read")
        message = bytes(message)
        sym = self.symmetric
        pos = 0
        for token in self._patterns[0]:
            if token == "e":
                if len(message) < pos + DHLEN:
                    raise NoiseError("handshake message truncated")
                self.re = message[pos : pos + DHLEN]
                pos += DHLEN
                sym.mix_hash(self.re)
                if self.has_psk:
                    sym.mix_key(self.re)
            elif token == "s":
                n = DHLEN + (TAGLEN if sym.cipher.has_key else 0)
                if len(message) < pos + n:
                    raise NoiseError("handshake message truncated")
                self.rs = sym.decrypt_and_hash(message[pos : pos + n])
                pos += n
            elif token == "psk":
                sym.mix_key_and_hash(self.psk)
            else:
                sym.mix_key(self._dh_token(token))
        payload = sym.decrypt_and_hash(message[pos:])
        self._patterns.pop(0)
        self._my_turn = True
        return payload

    def split(self) -> tuple[CipherState, CipherState]:
        """(send, receive) cipher states for transport messages."""
        if not self.complete:
            raise NoiseError("handshake not complete")
        c1, c2 = self.symmetric.split()
        return (c1, c2) if self.initiator else (c2, c1)


def room_psk(room: str, passphrase: str | None) -> bytes:
    """The PSK of a room: scrypt over the passphrase and room name; without a passphrase,
    a public hash of the room name (which protects nothing against anyone who knows it)."""
    if passphrase:
        return hashlib.scrypt(passphrase.encode(), salt=b"gochat psk v1\0" + room.encode(), n=2**14, r=8, p=1, dklen=32)
    return hashlib.sha256(b"gochat public room psk v1\0" + room.encode()).digest()


def random_bytes(n: int) -> bytes:
    return os.urandom(n)
