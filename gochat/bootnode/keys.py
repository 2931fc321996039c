"""The bootnode's long-term static X25519 key and the REGISTER proofs it checks.

A REGISTER proves that its sender holds the private key of the public key it
registers: its last 16 bytes are an HMAC under SHA-256(label || X25519(client static,
bootnode static)), which only the client and the bootnode can compute. The bootnode's
public key reaches clients in every COOKIE; clients pin it per bootnode address.

The key lives in a file only its owner can read (mode 0600, in a 0700 directory), created
on first start, refused when others can read it (as the client's identity is).
"""

from __future__ import annotations

import hmac
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from gochat.wire import control as wire
from gochat.wire.constants import PUBLIC_KEY_SIZE_bytes

_MAGIC = "gochat-bootnode-key-v1"


class BootnodeKeyError(Exception):
    """A bootnode key file that cannot be used; the message says why."""


@dataclass(frozen=True)
class BootnodeKey:
    private: bytes
    public: bytes = field(init=False)
    _key: X25519PrivateKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.private) != 32:
            raise ValueError("a bootnode key is 32 bytes")
        key = X25519PrivateKey.from_private_bytes(self.private)
        object.__setattr__(self, "_key", key)
        object.__setattr__(self, "public", key.public_key().public_bytes_raw())

    @classmethod
    def generate(cls) -> BootnodeKey:
        return cls(X25519PrivateKey.generate().private_bytes_raw())

    def proof_key(self, client_public: bytes) -> bytes | None:
        """The REGISTER proof key shared with the holder of ``client_public`` (one
        X25519); None for a key no client can hold (a low-order point)."""
        if len(client_public) != PUBLIC_KEY_SIZE_bytes:
            return None
        try:
            shared = self._key.exchange(X25519PublicKey.from_public_bytes(client_public))
        except ValueError:  # an all-zero shared secret
            return None
        return wire.register_proof_key(shared)

    def check_proof(self, head: wire.RegisterHead) -> bool:
        """Whether a decoded REGISTER's proof was made with its public key's private key."""
        key = self.proof_key(head.public_key)
        return key is not None and hmac.compare_digest(wire.register_proof(key, head.signed), head.proof)


def default_key_path(environ: Mapping[str, str] = os.environ) -> Path:
    """$XDG_DATA_HOME/gochat/bootnode.key (~/.local/share/gochat/bootnode.key)."""
    base = environ.get("XDG_DATA_HOME") or str(Path(environ.get("HOME", "~")).expanduser() / ".local" / "share")
    return Path(base) / "gochat" / "bootnode.key"


def load_or_create(path: Path) -> tuple[BootnodeKey, bool]:
    """The key kept at ``path``, created (0600) when the file does not exist. Returns the
    key and whether it was created now. BootnodeKeyError names what is wrong."""
    created = False
    if not path.exists():
        created = _create(path)
    try:
        mode = path.stat().st_mode
        if not stat.S_ISREG(mode):
            raise BootnodeKeyError(f"{path} is not a regular file")
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise BootnodeKeyError(f"{path} is readable by others (mode {stat.S_IMODE(mode):o}); run: chmod 600 {path}")
        words = path.read_text(encoding="utf-8", errors="replace").split()
    except OSError as exc:
        raise BootnodeKeyError(f"{path}: {exc.strerror or exc}") from None
    if len(words) != 2 or words[0] != _MAGIC:
        raise BootnodeKeyError(f"{path} is not a gochat bootnode key file")
    try:
        private = bytes.fromhex(words[1])
    except ValueError:
        raise BootnodeKeyError(f"{path}: the key is not hex") from None
    if len(private) != 32:
        raise BootnodeKeyError(f"{path}: the key must be 32 bytes")
    return BootnodeKey(private), created


def _create(path: Path) -> bool:
    """Write a new key to ``path`` atomically (a reader never sees a partial file);
    False when another process created it first."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"{_MAGIC}\n{BootnodeKey.generate().private.hex()}\n")
        try:
            os.link(tmp, path)  # fails if the file appeared meanwhile: keep that one
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
    except OSError as exc:
        raise BootnodeKeyError(f"cannot create {path}: {exc.strerror or exc}") from None
    return True
