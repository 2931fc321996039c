"""What the image does for GoChat habits (client by default, a bootnode by setting),
and its HEALTHCHECK against a real bootnode. No Docker engine builds images in CI: the
image's wheel is built and installed by `make wheel`; these tests check what the image
runs and how it is configured."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from gochat.healthcheck import probe

from .procs import Bootnode

REPO = Path(__file__).resolve().parent.parent


def _healthcheck(env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("MODE", "LISTEN")}
    return subprocess.run(
        [sys.executable, "-m", "gochat.healthcheck"], env={**clean, **env}, capture_output=True, text=True, timeout=30
    )


@pytest.mark.slow
def test_the_healthcheck_passes_on_a_live_bootnode_and_fails_on_a_silent_port():
    node = Bootnode(listen="127.0.0.1:0")
    try:
        ok = _healthcheck({"MODE": "bootnode", "LISTEN": f"127.0.0.1:{node.port}"})
        assert ok.returncode == 0, ok.stderr
        assert node.stop() == 0
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:  # bound, never answers
            silent.bind(("127.0.0.1", 0))
            port = silent.getsockname()[1]
            bad = _healthcheck({"MODE": "bootnode", "LISTEN": f"0.0.0.0:{port}"})
        assert bad.returncode == 1
        assert bad.stderr.strip() == f"no answer from the bootnode at 127.0.0.1:{port} within 2 s"
    finally:
        node.stop()


def test_a_client_container_is_healthy_while_it_runs():
    assert _healthcheck({}).returncode == 0  # client: GoChat's default mode


def test_probe_names_what_answered_wrongly():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as echo:
        echo.bind(("127.0.0.1", 0))
        echo.settimeout(5)
        port = echo.getsockname()[1]

        def answer_with_garbage() -> None:
            _, addr = echo.recvfrom(2048)
            echo.sendto(b"\x47\x01\x06\x00" + bytes(20), addr)  # a HEARTBEAT_ACK, not UNKNOWN_TOKEN

        t = threading.Thread(target=answer_with_garbage)
        t.start()
        assert probe("127.0.0.1", port) == f"unexpected answer from the bootnode at 127.0.0.1:{port}: TokenMessage"
        t.join(5)


def test_the_image_runs_a_client_by_default_and_compose_sets_the_bootnode_and_passes_env():
    dockerfile = (REPO / "Dockerfile").read_text()
    assert not re.search(r"^ENV .*MODE=", dockerfile, re.M)  # `docker run IMAGE --bootnode H --room R` is a client
    assert "HEALTHCHECK" in dockerfile and '"gochat.healthcheck"' in dockerfile
    compose = (REPO / "docker-compose.yml").read_text()
    bootnode, client = compose.split("\n  client:", 1)
    assert "MODE: bootnode" in bootnode and "MODE: client" in client
    assert bootnode.count("path: .env") == 1 and client.count("path: .env") == 1  # settings reach the containers
    assert "TIMEOUT" not in compose and "INTERVAL" not in compose  # timers come from .env or the defaults


def test_the_cluster_compose_file_joins_two_bootnodes_through_two_nats_servers():
    compose = (REPO / "deploy" / "docker-compose.cluster.yml").read_text()
    assert compose.count("image: nats:2") == 2 and '"--routes"' in compose
    clusters = [line.split(":", 1)[1].strip() for line in compose.splitlines() if line.strip().startswith("CLUSTER:")]
    assert len(clusters) == 2 and all(
        {"nats://nats-1:4222", "nats://nats-2:4222"} == set(c.split(",")) for c in clusters
    )
    assert "LISTEN: 0.0.0.0:9595" in compose and "LISTEN: 0.0.0.0:9695" in compose
