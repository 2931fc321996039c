"""What a user can do, in one place for every front end: the terminal UI and line mode.

A front end hands the controller each line the user typed and shows the events the
controller gives back; the controller owns the client driver, the commands, sending,
signals and the exit code. So ``/peers`` or a message to an empty room behaves the
same whether it was typed in the UI or piped into line mode.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Callable
from typing import Protocol

from gochat import events as ev
from gochat.client.driver import ClientConfig, ClientDriver
from gochat.client.reliable import MessageTooLong
from gochat.crypto.identity import Identity, safety_number
from gochat.frontends import names

COMMANDS = "/help, /quit, /peers, /verify NAME [confirm], /clear"
COMMAND_NAMES = ("/help", "/quit", "/peers", "/verify", "/clear")
HELP = (
    f"commands: {COMMANDS}. /verify NAME shows the safety number to compare with NAME over another "
    "channel, and /verify NAME confirm marks NAME verified (NAME may be `bob (3ab6)` or a fingerprint's "
    "start when two peers share a name); /clear clears the messages. PgUp/PgDn scroll, Up/Down recall "
    "what you typed, Ctrl-C quits."
)
NOBODY_HERE = "nobody else is in the room yet: message not sent"
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class FrontEnd(Protocol):
    """What the controller needs from a front end."""

    def show(self, event: ev.Event) -> None:
        """An event from the network or the answer to a command."""

    def sent(self, text: str) -> None:
        """``text`` went out to the room (the UI echoes it; line mode does not)."""

    def clear(self) -> None:
        """/clear: forget the messages on screen (nothing to do without a screen)."""


class ChatController:
    def __init__(self, config: ClientConfig, identity: Identity, front_end: FrontEnd) -> None:
        self.front_end = front_end
        self.driver = ClientDriver(config, identity, front_end.show)
        self._commands: dict[str, Callable[[str], None]] = {
            "/help": lambda _: front_end.show(ev.Notice(HELP)),
            "/quit": lambda _: self.quit(),
            "/peers": lambda _: front_end.show(self.driver.status()),
            "/verify": self.verify,
            "/clear": lambda _: front_end.clear(),
        }

    async def start(self) -> None:
        """Bind the socket and start registering; StartupError if that cannot be done."""
        await self.driver.start()

    def greet(self) -> None:
        """Once the front end has shown that it started: what a newcomer should know."""
        config = self.driver.config
        if not config.name_chosen:
            self.front_end.show(
                ev.Notice(f"you are {config.name!r} to the room; choose your name with --name or NAME (in .env)")
            )

    @property
    def port(self) -> int:
        return self.driver.port

    # --- input --------------------------------------------------------------------------

    def submit(self, line: str | None) -> None:
        """One line the user typed; None is the end of input (a graceful quit)."""
        if self.driver.finished.is_set():
            return
        if line is None:
            self.quit()
        elif not line.strip():
            return
        elif line.startswith("/"):
            self.command(line)
        else:
            self.send(line)

    def command(self, line: str) -> None:
        name, _, arg = line.strip().partition(" ")
        handler = self._commands.get(name)
        if handler is None:
            self.front_end.show(ev.Error(f"unknown command {name}: try /help"))
        else:
            handler(arg.strip())

    def send(self, text: str) -> None:
        try:
            if self.driver.send_message(text) == 0:
                self.front_end.show(ev.Error(NOBODY_HERE))
                return
        except MessageTooLong as exc:
            self.front_end.show(ev.Error(str(exc)))
            return
        self.front_end.sent(text)

    def verify(self, arg: str) -> None:
        """/verify NAME shows the safety number; /verify NAME confirm, typed after both
        sides compared it over another channel, marks NAME's key verified."""
        query, _, word = arg.rpartition(" ") if arg.endswith(" confirm") else (arg, "", "")
        confirmed = word == "confirm"
        machine = self.driver.machine
        found = names.find(query, [(p.name, p.fingerprint, p) for p in machine.peers.values()])
        if not found:
            self.front_end.show(ev.Error(f"/verify NAME: no peer called {query!r} here" if query else "/verify NAME"))
            return
        if len(found) > 1:
            self.front_end.show(ev.Error(names.ambiguity(query, [(p.name, p.fingerprint) for p in found])))
            return
        peer = found[0]
        if confirmed:
            self.driver.known.verify(peer.name, peer.key)
        number = safety_number(machine.public_key, peer.key)
        self.front_end.show(ev.Verified(peer.name, peer.fingerprint, number, confirmed))

    def quit(self) -> None:
        """Leave gracefully: a bye to every peer, a disconnect to the bootnode."""
        if not self.driver.machine.quitting:
            self.front_end.show(ev.Notice("leaving…"))
        self.driver.quit()

    # --- running ------------------------------------------------------------------------

    async def wait_finished(self) -> None:
        """Until the client has left (or could not register); SIGINT and SIGTERM quit."""
        loop = asyncio.get_running_loop()
        for sig in _SIGNALS:
            loop.add_signal_handler(sig, self.quit)
        try:
            await self.driver.finished.wait()
        finally:
            for sig in _SIGNALS:
                loop.remove_signal_handler(sig)

    def exit_code(self) -> int:
        """0 after a graceful quit; 1 (with the reason on stderr) when registration failed.
        Called after the front end gave the terminal back, so the reason stays visible."""
        failure = self.driver.machine.failure
        if failure:
            print(f"gochat: {failure}", file=sys.stderr)
            return 1
        return 0
