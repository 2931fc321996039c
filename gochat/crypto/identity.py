"""Long-term identity and trust on first use.

The identity is an X25519 key pair kept in a file only its owner can read (0600, in a
0700 directory under $XDG_DATA_HOME/gochat/). Known peers are remembered by name with
their key the first time they are seen; a known name with a different key is reported
as a key change, which the UI shows loudly. Everything here is local files; no network.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from gochat.crypto.noise import generate_private_key, public_key

_MAGIC = "gochat-identity-v1"


class IdentityError(Exception):
    """An identity or known-peers file that cannot be used; the message says why."""


def data_dir(environ: Mapping[str, str] = os.environ) -> Path:
    base = environ.get("XDG_DATA_HOME") or str(Path(environ.get("HOME", "~")).expanduser() / ".local" / "share")
    return Path(base) / "gochat"


def fingerprint(key: bytes) -> str:
    """What a person compares: 16 bytes of SHA-256 of the public key as 8 hex groups."""
    digest = hashlib.sha256(b"gochat fingerprint v1\0" + key).hexdigest()[:32]
    return " ".join(digest[i : i + 4] for i in range(0, 32, 4))


def short_fingerprint(fingerprint_text: str) -> str:
    """The first two groups of a fingerprint, for headers and lists."""
    return fingerprint_text[:9]


def safety_number(a: bytes, b: bytes) -> str:
    """One number two people read to each other to verify both keys at once (the same
    on both sides: the keys are sorted first). 30 digits in groups of five."""
    digest = hashlib.sha256(b"gochat safety number v1\0" + b"".join(sorted((a, b)))).digest()
    digits = str(int.from_bytes(digest[:16], "big") % 10**30).zfill(30)
    return " ".join(digits[i : i + 5] for i in range(0, 30, 5))


@dataclass(frozen=True)
class Identity:
    private_key: bytes
    public_key: bytes
    path: Path

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.public_key)


def load_or_create(path: Path) -> Identity:
    """Read the identity at ``path``, or create it (0600) if the file does not exist."""
    if path.exists():
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise IdentityError(f"{path} is readable by others (mode {stat.S_IMODE(mode):o}); run: chmod 600 {path}")
        lines = path.read_text(encoding="utf-8", errors="replace").split()
        if len(lines) != 2 or lines[0] != _MAGIC:
            raise IdentityError(f"{path} is not a gochat identity file")
        try:
            private = bytes.fromhex(lines[1])
        except ValueError:
            raise IdentityError(f"{path}: the key is not hex") from None
        if len(private) != 32:
            raise IdentityError(f"{path}: the key must be 32 bytes")
        return Identity(private, public_key(private), path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    private = generate_private_key()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # created meanwhile by another instance: use that one
        return load_or_create(path)
    with os.fdopen(fd, "w") as f:
        f.write(f"{_MAGIC}\n{private.hex()}\n")
    return Identity(private, public_key(private), path)


class KnownPeers:
    """name -> key remembered on first sight (trust on first use), with a verified mark."""

    NEW, KNOWN, CHANGED = "new", "known", "changed"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._peers: dict[str, dict] = {}
        if path.exists():
            try:
                self._peers = json.loads(path.read_text())["peers"]
            except (ValueError, KeyError, TypeError):
                raise IdentityError(f"{path} is damaged; move it away to start trusting anew") from None

    def check(self, name: str, key: bytes) -> str:
        entry = self._peers.get(name)
        if entry is None:
            return self.NEW
        return self.KNOWN if entry["key"] == key.hex() else self.CHANGED

    def get(self, name: str) -> dict | None:
        return self._peers.get(name)

    def remember(self, name: str, key: bytes, now: float | None = None) -> str:
        """Record ``key`` for ``name`` if new; returns what check() said. A changed key is
        not recorded: the old one stays until the user verifies the new one."""
        status = self.check(name, key)
        if status == self.NEW:
            self._peers[name] = {
                "key": key.hex(),
                "first_seen": int(now if now is not None else time.time()),
                "verified": False,
            }
            self._save()
        return status

    def verify(self, name: str, key: bytes) -> None:
        """The user compared safety numbers: trust ``key`` for ``name`` from now on."""
        self._peers[name] = {
            **self._peers.get(name, {"first_seen": int(time.time())}),
            "key": key.hex(),
            "verified": True,
        }
        self._save()

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"version": 1, "peers": self._peers}, f, indent=1, sort_keys=True)
        os.replace(tmp, self.path)
