"""Logs an operator can use: a bootnode that says what it did each interval (and nothing
when it did nothing), timestamps with their zone, JSON lines, the receive buffer asked
and given, and a client log file that rotates."""

from __future__ import annotations

import json
import logging
import re
import socket
from datetime import datetime

import pytest

from gochat.bootnode.summary import summarize
from gochat.logs import LOG_FILE_BACKUPS, LOG_FILE_MAX_bytes, log_to_file
from gochat.wire import control as wire

from .procs import Bootnode


def test_a_quiet_interval_says_nothing_and_a_busy_one_says_what_happened():
    before = {"peers": 3, "rooms": 1, "fast.heartbeats": 10, "refused.rate_limited": 5}
    assert summarize(before, {**before, "fast.heartbeats": 9000}, 60) is None  # heartbeats alone are not news
    after = {
        **before,
        "register.accepted": 12,
        "expired": 3,
        "refused.rate_limited": 45,
        "refused.source_full": 2,
        "malformed.truncated": 1000,
        "fast.unknown_token": 7,
        "peers": 12,
        "rooms": 2,
    }
    line = summarize(before, after, 60)
    assert line == (
        "last 60s: 12 registered, 3 expired, 7 heartbeats with an unknown token, "
        "refused 42 (rate_limited 40, source_full 2), malformed datagrams dropped 1,000 (truncated 1,000); "
        "now 12 peers in 2 rooms"
    )


@pytest.mark.slow
def test_the_bootnode_logs_json_lines_with_zoned_times_and_a_summary_of_a_flood():
    node = Bootnode(extra=["--log-format", "json", "--log-summary-interval", "0.5s", "--recv-buffer", "65536"])
    try:
        started = json.loads(node.wait_for_line(r"listening on udp"))
        assert re.search(r"asked 65536 bytes, the kernel gave \d+", started["message"])
        stamp = datetime.fromisoformat(started["time"])
        assert stamp.tzinfo is not None and started["level"] == "info" and started["logger"] == "gochat.bootnode"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for _ in range(50):
                s.sendto(b"\x47\x01", (node.host, node.port))  # truncated
            s.sendto(wire.encode(wire.TokenMessage(wire.MsgType.HEARTBEAT, bytes(12))), (node.host, node.port))
        line = json.loads(node.wait_for_line(r"malformed datagrams dropped"))
        assert "malformed datagrams dropped 50 (truncated 50)" in line["message"]
        assert "1 heartbeats with an unknown token" in line["message"]
        assert all(json.loads(raw) for raw in node.lines)  # every line is one JSON object
    finally:
        assert node.stop() == 0


@pytest.mark.slow  # writes 4.5 MiB of log lines
def test_the_client_log_file_rotates(tmp_path):
    path = tmp_path / "gochat.log"
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    log_to_file(path, "info", "text")
    try:
        logger = logging.getLogger("gochat.test")
        for i in range(int((LOG_FILE_BACKUPS + 1.5) * LOG_FILE_MAX_bytes / 100)):  # 100-byte lines
            logger.info("%06d %s", i, "x" * 90)
        files = sorted(p.name for p in tmp_path.iterdir())
        assert files == ["gochat.log"] + [f"gochat.log.{n}" for n in range(1, LOG_FILE_BACKUPS + 1)]
        assert all(p.stat().st_size <= LOG_FILE_MAX_bytes for p in tmp_path.iterdir())
        first = path.read_text().splitlines()[0]
        assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d INFO gochat.test: ", first)
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
            handler.close()
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
