"""Bootnodes' static keys, pinned per bootnode address on first use.

``known_bootnodes.json`` sits beside the identity file (mode 0600). The first COOKIE
from a bootnode address tells its key; from then on a COOKIE with another key is
refused loudly. Deleting the address's entry (or the file) trusts the next key seen.
Local files only: the sans-I/O link never reads or writes them, the driver does.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from gochat.crypto.identity import IdentityError

FILE_NAME = "known_bootnodes.json"


class KnownBootnodes:
    """bootnode address (``HOST:PORT`` as configured) -> its static public key."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._keys: dict[str, dict] = {}
        if path.exists():
            try:
                data = json.loads(path.read_text())["bootnodes"]
                self._keys = {str(addr): {**entry, "key": str(entry["key"])} for addr, entry in data.items()}
                for entry in self._keys.values():
                    bytes.fromhex(entry["key"])
            except (ValueError, KeyError, TypeError, AttributeError):
                raise IdentityError(f"{path} is damaged; move it away to trust the bootnodes' keys anew") from None

    def get(self, address: str) -> bytes | None:
        entry = self._keys.get(address)
        return None if entry is None else bytes.fromhex(entry["key"])

    def remember(self, address: str, key: bytes, now: float | None = None) -> None:
        self._keys[address] = {"key": key.hex(), "first_seen": int(now if now is not None else time.time())}
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"version": 1, "bootnodes": self._keys}, f, indent=1, sort_keys=True)
        os.replace(tmp, self.path)
