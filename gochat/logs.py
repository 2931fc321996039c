"""How gochat writes its logs: ISO 8601 timestamps with their zone, as text or as one
JSON object per line (``LOG_FORMAT=json``, for log collectors), to stderr, or for the
terminal UI to a file beside the identity that rotates (the screen belongs to the UI)."""

from __future__ import annotations

import json
import logging
import logging.handlers
from datetime import datetime
from pathlib import Path

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_FILE_MAX_bytes = 1 << 20  # the UI's log file rotates at 1 MiB, keeping 3 old files
LOG_FILE_BACKUPS = 3


class TextFormatter(logging.Formatter):
    """Text lines whose timestamp says its zone: 2026-12-07T19:30:18.410+00:00."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return datetime.fromtimestamp(record.created).astimezone().isoformat(timespec="milliseconds")


class JsonFormatter(TextFormatter):
    """One JSON object per line: time, level, logger, message (and the exception)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def formatter(log_format: str) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else TextFormatter(TEXT_FORMAT)


def _replace_handlers(handler: logging.Handler, level: str) -> None:
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())


def log_to_stderr(level: str, log_format: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(formatter(log_format))
    _replace_handlers(handler, level)


def log_to_file(path: Path, level: str, log_format: str) -> None:
    """The UI's log: a file that rotates, so that a client left running for months does not
    fill the disk; nothing at all if the file cannot be opened."""
    try:
        handler: logging.Handler = logging.handlers.RotatingFileHandler(
            path, maxBytes=LOG_FILE_MAX_bytes, backupCount=LOG_FILE_BACKUPS, encoding="utf-8"
        )
    except OSError:
        handler = logging.NullHandler()
    handler.setFormatter(formatter(log_format))
    _replace_handlers(handler, level)
