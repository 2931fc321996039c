"""Line mode (``--no-ui``), the front end for scripts and tests.

stdin: one chat message per line; lines starting with ``/`` are commands (``/quit``,
``/peers``); end of input is a graceful quit. stdout: one JSON object per line per
event (schema in README.md). SIGINT and SIGTERM quit gracefully too. Exit code 0 after
a graceful quit, 1 when the client could not start or register.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import threading
from typing import IO, Optional

from gochat.client.driver import ClientConfig, ClientDriver, StartupError
from gochat.crypto.identity import Identity
from gochat.client.reliable import MessageTooLong

COMMANDS = "/quit, /peers"


class LineMode:
    def __init__(self, config: ClientConfig, identity: Identity, stdin_fd: int, stdout: IO[str]) -> None:
        self.config = config
        self.identity = identity
        self.stdin_fd = stdin_fd
        self.stdout = stdout
        self.driver: Optional[ClientDriver] = None

    def emit(self, event: dict) -> None:
        try:
            self.stdout.write(json.dumps(event, ensure_ascii=False) + "\n")
            self.stdout.flush()
        except (BrokenPipeError, ValueError):   # nobody reads our output any more
            pass

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self.driver = driver = ClientDriver(self.config, self.identity, self.emit)
        try:
            await driver.start()
        except StartupError as exc:
            self.emit({"event": "error", "message": str(exc), "fatal": True})
            print(f"gochat: {exc}", file=sys.stderr)
            return 1
        self.emit({"event": "started", "name": self.config.name, "room": self.config.room,
                   "fingerprint": self.identity.fingerprint, "port": driver.port})
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, driver.quit)
        threading.Thread(target=self._read_stdin, args=(loop,), daemon=True, name="stdin").start()
        try:
            await driver.finished.wait()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
        failure = driver.machine.failure
        if failure:
            print(f"gochat: {failure}", file=sys.stderr)
            return 1
        return 0

    def _read_stdin(self, loop: asyncio.AbstractEventLoop) -> None:
        """Blocking reads in a thread: works for pipes, files, terminals and /dev/null alike.
        Raw os.read on the descriptor, not the buffered file object, so that the thread
        holds no interpreter-level lock when the process exits while it waits."""
        pending = b""
        try:
            while True:
                chunk = os.read(self.stdin_fd, 65536)
                if not chunk:
                    break
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for raw in lines:
                    loop.call_soon_threadsafe(self.handle_line, raw.decode("utf-8", "replace").rstrip("\r"))
            if pending:
                loop.call_soon_threadsafe(self.handle_line, pending.decode("utf-8", "replace").rstrip("\r"))
        except (OSError, RuntimeError):
            return
        try:
            loop.call_soon_threadsafe(self.handle_line, None)
        except RuntimeError:   # the loop is already closed
            pass

    def handle_line(self, line: Optional[str]) -> None:
        driver = self.driver
        assert driver is not None
        if driver.finished.is_set():
            return
        if line is None or line.strip() == "/quit":
            driver.quit()
            return
        if not line.strip():
            return
        if line.startswith("/"):
            command = line.split()[0]
            if command == "/peers":
                self.emit(driver.status())
            else:
                self.emit({"event": "error", "message": f"unknown command {command} (commands: {COMMANDS})"})
            return
        try:
            if driver.send_message(line) == 0:
                self.emit({"event": "error", "message": "nobody else is in the room yet: message not sent"})
        except MessageTooLong as exc:
            self.emit({"event": "error", "message": str(exc)})


