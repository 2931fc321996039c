"""A room's conversation kept across restarts, for the terminal UI.

One file of JSON lines per room and bootnode host (the name is a hash of both, so the
directory listing does not show room names; the port is left out, so that the demo's
bootnode on a new port each run keeps one history), mode 0600 in a 0700 directory under the
data directory, bounded: past 2 x ``limit`` lines it is rewritten with the newest
``limit``. The text is stored in clear (the disk is the user's own, as is irssi's log);
``--no-history`` turns it off and ``/clear`` deletes the room's file. A damaged line is
skipped, never fatal: a history is a convenience, not a record.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

HISTORY_LIMIT_LINES = 1000


@dataclass(frozen=True)
class Entry:
    """One message as it was shown: ``sender`` is None for our own."""

    time: float  # Unix time
    sender: str | None
    fingerprint: str | None
    text: str
    style: str = "say"  # say, action, private
    to: str | None = None  # our private message's recipient


def history_path(data_dir: Path, bootnode_host: str, room: str) -> Path:
    digest = hashlib.sha256(f"gochat history v1\0{bootnode_host}\0{room}".encode()).hexdigest()[:24]
    return data_dir / "history" / f"{digest}.jsonl"


class History:
    def __init__(self, path: Path, limit: int = HISTORY_LIMIT_LINES) -> None:
        self.path = path
        self.limit = limit
        self._lines = self._count()

    def _count(self) -> int:
        try:
            with open(self.path, "rb") as f:
                return sum(1 for _ in f)
        except OSError:
            return 0

    def load(self) -> list[Entry]:
        """The newest ``limit`` entries, oldest first (damaged lines skipped)."""
        try:
            raw = self.path.read_bytes().decode("utf-8", "replace").splitlines()
        except OSError:
            return []
        entries = []
        for line in raw[-self.limit :]:
            try:
                entries.append(Entry(**json.loads(line)))
            except (ValueError, TypeError):
                continue
        return entries

    def append(self, entry: Entry) -> None:
        try:
            self._write([entry], mode=os.O_APPEND)
            self._lines += 1
            if self._lines > 2 * self.limit:
                keep = self.load()
                self._write(keep, mode=os.O_TRUNC)
                self._lines = len(keep)
        except OSError:
            pass  # a full disk or a read-only home must not stop the chat

    def _write(self, entries: list[Entry], mode: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | mode, 0o600)
        with os.fdopen(fd, "a" if mode == os.O_APPEND else "w", encoding="utf-8") as f:
            for entry in entries:
                f.write(json.dumps(asdict(entry), ensure_ascii=False) + "\n")

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
        self._lines = 0
