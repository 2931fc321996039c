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
from gochat.client.peer import Peer
from gochat.client.reliable import MessageTooLong
from gochat.config import parse_name
from gochat.crypto.identity import Identity, safety_number
from gochat.frontends import names
from gochat.wire import data as pw
from gochat.wire.endpoints import format_endpoint

COMMANDS = "/help, /quit, /peers, /verify NAME [confirm], /me ACTION, /msg NAME TEXT, /nick NAME, /whoami, /clear"
COMMAND_NAMES = ("/help", "/quit", "/peers", "/verify", "/me", "/msg", "/nick", "/whoami", "/clear")
HELP = (
    f"commands: {COMMANDS}. /me waves shows '* you waves' to everyone; /msg NAME TEXT goes to "
    "NAME alone, over NAME's own encrypted session; /nick NAME changes your name (each peer's "
    "session proves it); /whoami shows your full fingerprint to copy. "
    "/verify NAME shows the safety number to compare with NAME over another channel, and "
    "/verify NAME confirm marks NAME verified (NAME may be `bob (3ab6)` or a fingerprint's start "
    "when two peers share a name); /clear clears the messages. PgUp/PgDn scroll, Up/Down recall "
    "what you typed, Tab completes, Ctrl-C quits."
)
NOBODY_HERE = "nobody else is in the room yet: message not sent"
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class FrontEnd(Protocol):
    """What the controller needs from a front end."""

    def show(self, event: ev.Event) -> None:
        """An event from the network or the answer to a command."""

    def sent(self, text: str, style: str = "say", to: str | None = None) -> None:
        """``text`` went out (the UI echoes it; line mode does not): to the room, as an
        action (``style`` action), or to the peer labelled ``to`` alone (``private``)."""

    def clear(self) -> None:
        """/clear: forget the messages on screen (nothing to do without a screen)."""

    def renamed(self, name: str) -> None:
        """/nick: our name is ``name`` from now on."""


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
            "/me": self.action,
            "/msg": self.private,
            "/whoami": lambda _: self.whoami(),
            "/nick": self.nick,
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

    def send(self, text: str, shown: str | None = None, style: str = "say", to: Peer | None = None) -> None:
        """``text`` on the wire (``shown`` on our screen) to the room, or to ``to`` alone."""
        try:
            if self.driver.send_message(text, to.key if to is not None else None) == 0:
                self.front_end.show(ev.Error(NOBODY_HERE if to is None else f"{to.name} cannot get messages now"))
                return
        except MessageTooLong as exc:
            self.front_end.show(ev.Error(str(exc)))
            return
        self.front_end.sent(text if shown is None else shown, style, to.name if to is not None else None)

    def action(self, arg: str) -> None:
        """/me waves: an action, shown as "* alice waves"."""
        if not arg:
            self.front_end.show(ev.Error("/me ACTION: what you do, e.g. /me waves"))
            return
        self.send(pw.ACTION_PREFIX + arg, shown=arg, style="action")

    def private(self, arg: str) -> None:
        """/msg NAME TEXT: to NAME alone, over NAME's own session (the others get nothing)."""
        machine = self.driver.machine
        candidates = [(p.name, p.fingerprint, p) for p in machine.peers.values()]
        # the longest NAME that names a peer: names may have spaces, as may `bob (3ab6)`
        words = arg.split(" ")
        for cut in range(len(words) - 1, 0, -1):
            query, text = " ".join(words[:cut]), " ".join(words[cut:])
            found = names.find(query, candidates)
            if found:
                break
        else:
            self.front_end.show(ev.Error("/msg NAME TEXT: no peer called that here" if arg else "/msg NAME TEXT"))
            return
        if len(found) > 1:
            self.front_end.show(ev.Error(names.ambiguity(query, [(p.name, p.fingerprint) for p in found])))
            return
        if not text.strip():
            self.front_end.show(ev.Error("/msg NAME TEXT: the text is missing"))
            return
        peer = found[0]
        self.send(pw.PRIVATE_PREFIX + text, shown=text, style="private", to=peer)

    def nick(self, arg: str) -> None:
        """/nick NAME: register again under NAME; every peer's session proves it anew."""
        try:
            name = parse_name(arg)
        except ValueError as exc:
            self.front_end.show(ev.Error(f"/nick NAME: {exc}"))
            return
        if name == self.driver.config.name:
            self.front_end.show(ev.Notice(f"you are already {name!r}"))
            return
        self.driver.rename(name)
        self.front_end.renamed(name)
        self.front_end.show(ev.Notice(f"you are now {name!r}"))

    def whoami(self) -> None:
        config, machine = self.driver.config, self.driver.machine
        endpoint = machine.link.public_endpoint
        where = f"; the bootnode sees you at {format_endpoint(endpoint)}" if endpoint else ""
        self.front_end.show(
            ev.Notice(
                f"you are {config.name!r} in room {config.room!r}{where}; your fingerprint: "
                f"{self.driver.identity.fingerprint}"
            )
        )

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
