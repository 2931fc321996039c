"""Line mode (``--no-ui``), the front end for scripts and tests.

stdin: one chat message per line; lines starting with ``/`` are commands, the same
as in the terminal UI (controller.py); end of input is a graceful quit. stdout: one
JSON object per line per event (schema in README.md, values in gochat/events.py).
SIGINT and SIGTERM quit gracefully too. Exit code 0 after a graceful quit, 1 when the
client could not start or register.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import threading
from typing import IO

from gochat import events as ev
from gochat.client.driver import ClientConfig, StartupError
from gochat.crypto.identity import Identity
from gochat.frontends.controller import ChatController


class LineMode:
    """The FrontEnd of scripts: every event is one JSON line on stdout."""

    def __init__(self, config: ClientConfig, identity: Identity, stdin_fd: int, stdout: IO[str]) -> None:
        self.config = config
        self.identity = identity
        self.stdin_fd = stdin_fd
        self.stdout = stdout
        self.controller = ChatController(config, identity, self)

    # --- FrontEnd ---------------------------------------------------------------------

    def show(self, event: ev.Event) -> None:
        try:
            self.stdout.write(json.dumps(event.to_json(), ensure_ascii=False) + "\n")
            self.stdout.flush()
        except (BrokenPipeError, ValueError):  # nobody reads our output any more
            pass

    def sent(self, text: str, style: str = "say", to: str | None = None) -> None:
        """Scripts know what they sent."""

    def clear(self) -> None:
        """No screen to clear."""

    def renamed(self, name: str) -> None:
        """The notice that follows says it."""

    # --- running ------------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        controller = self.controller
        try:
            await controller.start()
        except StartupError as exc:
            self.show(ev.Error(str(exc), fatal=True))
            print(f"gochat: {exc}", file=sys.stderr)
            return 1
        self.show(ev.Started(self.config.name, self.config.room, self.identity.fingerprint, controller.port))
        controller.greet()
        threading.Thread(target=self._read_stdin, args=(loop,), daemon=True, name="stdin").start()
        await controller.wait_finished()
        return controller.exit_code()

    def _read_stdin(self, loop: asyncio.AbstractEventLoop) -> None:
        """Blocking reads in a thread: works for pipes, files, terminals and /dev/null alike.
        Raw os.read on the descriptor, not the buffered file object, so that the thread
        holds no interpreter-level lock when the process exits while it waits."""
        submit = self.controller.submit
        pending = b""
        try:
            while True:
                chunk = os.read(self.stdin_fd, 65536)
                if not chunk:
                    break
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for raw in lines:
                    loop.call_soon_threadsafe(submit, raw.decode("utf-8", "replace").rstrip("\r"))
            if pending:
                loop.call_soon_threadsafe(submit, pending.decode("utf-8", "replace").rstrip("\r"))
        except (OSError, RuntimeError):
            return
        with contextlib.suppress(RuntimeError):  # the loop is already closed
            loop.call_soon_threadsafe(submit, None)
