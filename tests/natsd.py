"""Real nats-server processes on loopback for the cluster tests (a clustered pair)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time


def missing() -> str | None:
    if shutil.which("nats-server") is None:
        return "nats-server is not installed (make system-deps installs it)"
    return None


def _free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class NatsServer:
    """nats-server on 127.0.0.1 with a client port and a cluster (route) port; ``routes``
    names the route ports of the servers it clusters with."""

    def __init__(
        self, name: str, routes: list[int] = (), cluster_port: int | None = None, monitor: bool = False
    ) -> None:
        self.port = _free_tcp_port()
        self.monitor_port = _free_tcp_port() if monitor else None
        self.cluster_port = cluster_port or _free_tcp_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        args = [
            "nats-server",
            "-a",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-n",
            name,
            "--cluster_name",
            "gochat",
            "--cluster",
            f"nats://127.0.0.1:{self.cluster_port}",
        ]
        if routes:
            args += ["--routes", ",".join(f"nats://127.0.0.1:{p}" for p in routes)]
        if self.monitor_port:
            args += ["-m", str(self.monitor_port)]  # /varz: its message and byte counters
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nats-server exited with {self.proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as c:
                    if c.recv(4) == b"INFO":
                        return
            except OSError:
                time.sleep(0.1)  # polling a server that is starting: nothing to wait on
        self.stop()
        raise RuntimeError("nats-server did not start within 15 s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
