"""Real gochat processes for integration tests: a bootnode, and clients in line mode
whose JSON events are collected as they arrive (tests wait on events, never sleep)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence

FAST_TIMERS = ["--heartbeat-interval", "1s", "--peer-timeout", "3s"]


def gochat_command(*args: str, prefix: Sequence[str] = ()) -> list[str]:
    return [*prefix, sys.executable, "-m", "gochat", "--env-file", "", *args]


def _env(extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("ROOM", "BOOTNODE", "MODE", "NAME", "ROOM_PASSPHRASE")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


class Bootnode:
    """`gochat --mode bootnode` on loopback (or inside a namespace with ``prefix``)."""

    def __init__(self, listen: str = "127.0.0.1:0", prefix: Sequence[str] = (), extra: Sequence[str] = FAST_TIMERS):
        self.proc = subprocess.Popen(
            gochat_command("--mode", "bootnode", "--listen", listen, *extra, prefix=prefix),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
        )
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._eof = False
        threading.Thread(target=self._read, daemon=True).start()
        line = self.wait_for_line(r"bootnode listening on udp (\S+)")
        addr = re.search(r"bootnode listening on udp (\S+)", line).group(1)
        self.host, _, port = addr.rpartition(":")
        self.port = int(port)
        self.address = f"{self.host}:{self.port}"

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def wait_for_line(self, pattern: str, timeout: float = 15.0) -> str:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines:
                    if re.search(pattern, line):
                        return line
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._eof:
                    raise AssertionError(f"no line matching {pattern!r}; got:\n{''.join(self.lines)}")
                self._cond.wait(min(remaining, 0.5))

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)


class Client:
    """`gochat --mode client --no-ui`: stdin lines are messages, stdout JSON events."""

    def __init__(
        self,
        bootnode: str,
        name: str,
        tmp_path,
        room: str = "lobby",
        prefix: Sequence[str] = (),
        extra: Sequence[str] = FAST_TIMERS,
        port: int = 0,
        env: dict | None = None,
        identity: str | None = None,
        mode: str = "client",
        choose_name: bool = True,
    ) -> None:
        self.name = name
        identity = identity or str(tmp_path / name / "identity")
        where = ["--bootnode", bootnode, "--room", room] if mode == "client" else []
        named = ["--name", name] if choose_name else []
        self.proc = subprocess.Popen(
            gochat_command(
                "--mode",
                mode,
                "--no-ui",
                *where,
                *named,
                "--port",
                str(port),
                "--identity",
                identity,
                *extra,
                prefix=prefix,
            ),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=_env(env),
        )
        self.events: list[dict] = []
        self.arrivals: dict = {}  # id(event) -> time.monotonic() when the line was read
        self.stderr: list[str] = []
        self._cond = threading.Condition()
        self._eof = False
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            event = json.loads(raw)
            arrived = time.monotonic()
            with self._cond:
                self.arrivals[id(event)] = arrived
                self.events.append(event)
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            self.stderr.append(raw.decode("utf-8", "replace"))

    def wait_for(self, predicate: Callable[[dict], bool], timeout: float = 15.0, what: str = "") -> dict:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for event in self.events:
                    if predicate(event):
                        return event
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._eof:
                    raise AssertionError(
                        f"{self.name}: no event {what} within {timeout} s; events:\n"
                        + "\n".join(map(json.dumps, self.events))
                        + "\nstderr:\n"
                        + "".join(self.stderr[-20:])
                    )
                self._cond.wait(min(remaining, 0.5))

    def wait_event(self, kind: str, timeout: float = 15.0, **fields) -> dict:
        return self.wait_for(
            lambda e: e["event"] == kind and all(e.get(k) == v for k, v in fields.items()), timeout, f"{kind} {fields}"
        )

    def kinds(self, kind: str) -> list[dict]:
        with self._cond:
            return [e for e in self.events if e["event"] == kind]

    def say(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def close_stdin(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()

    def messages(self, sender: str | None = None) -> list[str]:
        return [e["text"] for e in self.kinds("message") if sender is None or e["from"] == sender]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
