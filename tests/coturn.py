"""A real coturn (Debian's turnserver) on loopback, for the TURN tests and the relay
benchmark. Each instance gets its own ports and log; it stops with the test."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

from gochat.wire import stun

# A STUN Binding request from where coturn runs (a network namespace), answered within 1 s.
_PROBE = """
import os, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(1.0)
s.sendto(bytes.fromhex("000100002112a442") + os.urandom(12), (sys.argv[1], int(sys.argv[2])))
try:
    s.recv(2048)
except OSError:
    sys.exit(1)
"""


def missing() -> str | None:
    if shutil.which("turnserver") is None:
        return "coturn's turnserver is not installed (make system-deps installs it)"
    return None


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Coturn:
    """turnserver on 127.0.0.1: anonymous (no credentials), with one long-term user, or
    with the TURN REST API's shared secret (``secret``)."""

    def __init__(
        self,
        *,
        user: tuple[str, str] | None = None,
        secret: str | None = None,
        realm: str = "gochat",
        relay_threads: int | None = None,
        ip: str = "127.0.0.1",
        prefix: list[str] | None = None,
        port: int | None = None,
    ) -> None:
        """``prefix`` runs it elsewhere (ip netns exec NS) on ``ip`` and ``port``."""
        self.prefix = prefix or []
        self.port = port or _free_udp_port()
        self.addr = (ip, self.port)
        self.realm = realm
        self._dir = tempfile.TemporaryDirectory(prefix="gochat-coturn-")
        low = 20000 + (os.getpid() * 97 + self.port) % 30000
        args = [
            "turnserver",
            "-n",  # no configuration file
            "--listening-ip",
            ip,
            "--relay-ip",
            ip,
            "--listening-port",
            str(self.port),
            "--min-port",
            str(low),
            "--max-port",
            str(low + 200),
            "--no-tls",
            "--no-dtls",
            "--no-cli",
            "--allow-loopback-peers",
            "--realm",
            realm,
            "--simple-log",
            "--log-file",
            os.path.join(self._dir.name, "turn.log"),
            "--pidfile",
            os.path.join(self._dir.name, "turn.pid"),
            "--userdb",
            os.path.join(self._dir.name, "turndb"),
        ]
        if relay_threads is not None:
            args += ["--relay-threads", str(relay_threads)]
        if secret is not None:
            args += ["--use-auth-secret", "--static-auth-secret", secret]
        elif user is not None:
            args += ["--lt-cred-mech", "--user", f"{user[0]}:{user[1]}"]
        else:
            args += ["--no-auth"]
        self.proc = subprocess.Popen([*self.prefix, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if self.prefix:
            self._wait_ready_inside()
        else:
            self._wait_ready()

    def _wait_ready_inside(self, timeout: float = 15.0) -> None:
        """Until a STUN request made beside it gets an answer (bounded: 1 s per try)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"turnserver exited with {self.proc.returncode}: {self.log()[-2000:]}")
            probe = subprocess.run([*self.prefix, sys.executable, "-c", _PROBE, *map(str, self.addr)], timeout=10)
            if probe.returncode == 0:
                return
        self.stop()
        raise RuntimeError("turnserver did not answer within 15 s")

    def _wait_ready(self, timeout: float = 15.0) -> None:
        """Until it answers a STUN Binding request (bounded)."""
        deadline = time.monotonic() + timeout
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.2)
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"turnserver exited with {self.proc.returncode}: {self.log()[-2000:]}")
                txid = os.urandom(12)
                s.sendto(stun.binding_request(txid), self.addr)
                try:
                    data, _ = s.recvfrom(2048)
                except TimeoutError:
                    continue
                if stun.parse_binding_success(data, txid) is not None:
                    return
        self.stop()
        raise RuntimeError("turnserver did not answer within 15 s")

    def cpu_seconds(self) -> tuple[float, float]:
        """(user, system) CPU seconds of the whole process (all its threads) so far."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        tick = os.sysconf("SC_CLK_TCK")
        return int(fields[11]) / tick, int(fields[12]) / tick

    def log(self) -> str:
        try:
            with open(os.path.join(self._dir.name, "turn.log")) as f:
                return f.read()
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._dir.cleanup()

    def __enter__(self) -> Coturn:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
