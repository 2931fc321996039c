"""The full-screen terminal chat (urwid), on the same asyncio loop as the network.

It shows the client's events (gochat/events.py) and draws: a header (room, you,
bootnode status), the message pane (time, sender in a stable per-peer colour, system
lines), a peer sidebar (hidden on narrow terminals) and an input line with history.
Paste of several lines sends several messages (each line is one, as typed).
Everything is event-driven: no polling, so an idle client sleeps.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from collections.abc import Callable
from typing import Any

import urwid

from gochat import events as ev
from gochat.client.driver import ClientConfig
from gochat.crypto.identity import Identity, short_fingerprint
from gochat.frontends import names
from gochat.frontends.controller import COMMAND_NAMES, ChatController
from gochat.frontends.history import Entry, History, history_path
from gochat.wire import data as pw

log = logging.getLogger("gochat.ui")

PEER_COLOURS = [
    "light cyan",
    "light magenta",
    "yellow",
    "light green",
    "light blue",
    "light red",
    "dark cyan",
    "brown",
    "dark magenta",
    "dark green",
]
PALETTE = [
    ("header", "white,bold", "dark blue"),
    ("time", "dark gray", ""),
    ("system", "dark cyan", ""),
    ("warning", "light red,bold", ""),
    ("error", "light red", ""),
    ("me", "white,bold", ""),
    ("private", "light magenta", ""),
    ("mention", "yellow,bold", ""),
    ("day", "dark gray,bold", ""),
    ("undelivered", "light red", ""),
    ("sidebar", "light gray", ""),
    ("sidebar_title", "white,bold", ""),
    ("more", "black", "yellow"),
    ("prompt", "light green,bold", ""),
] + [(f"peer{i}", colour + ",bold", "") for i, colour in enumerate(PEER_COLOURS)]

TRUST_NOTES = {"verified": " (verified)", "known": "", "new": " (new: compare fingerprints with /verify)"}
SIDEBAR_WIDTH = 30
NARROW = 60  # below this many columns the sidebar is hidden
HISTORY_LIMIT = 500
SCROLLBACK_LIMIT = 5000


JUMP_KEYS = ("ctrl end", "meta end", "ctrl g")  # back to the newest line from the scrollback


def peer_colour(fingerprint: str) -> str:
    """A stable colour per peer: the same fingerprint always gets the same one."""
    return f"peer{hashlib.sha256(fingerprint.encode()).digest()[0] % len(PEER_COLOURS)}"


class InputLine(urwid.Edit):
    """The input line: a history recalled by Up and Down, the editing keys of a shell
    (Ctrl-A/E start and end, Ctrl-U/K delete to the start or the end, Ctrl-W the word
    before the cursor) and Tab completion of peer names and commands."""

    def __init__(self, on_submit: Callable[[str], None], completions: Callable[[], list[str]] = list) -> None:
        super().__init__(("prompt", "> "))
        self.on_submit = on_submit
        self.completions = completions  # peer names and commands, asked at each Tab
        self.history: list[str] = []
        self._recall: int | None = None
        self._cycle: tuple[int, list[str], int, str] | None = None  # repeated Tabs: (start, matches, shown, inserted)

    def keypress(self, size, key):
        if key != "tab":
            self._cycle = None
        if key == "enter":
            text = self.edit_text
            self.set_edit_text("")
            self._recall = None
            if text.strip():
                self.history.append(text)
                del self.history[:-HISTORY_LIMIT]
                self.on_submit(text)
            return None
        if key in ("up", "down") and self.history:
            if key == "up":
                self._recall = len(self.history) - 1 if self._recall is None else max(0, self._recall - 1)
            elif self._recall is not None:
                self._recall += 1
                if self._recall >= len(self.history):
                    self._recall = None
            self.set_edit_text(self.history[self._recall] if self._recall is not None else "")
            self.set_edit_pos(len(self.edit_text))
            return None
        text, pos = self.edit_text, self.edit_pos
        if key == "ctrl a":
            self.set_edit_pos(0)
        elif key == "ctrl e":
            self.set_edit_pos(len(text))
        elif key == "ctrl u":
            self.set_edit_text(text[pos:])
            self.set_edit_pos(0)
        elif key == "ctrl k":
            self.set_edit_text(text[:pos])
        elif key == "ctrl w":
            start = len(text[:pos].rstrip())
            start = text.rfind(" ", 0, start) + 1
            self.set_edit_text(text[:start] + text[pos:])
            self.set_edit_pos(start)
        elif key == "tab":
            self._complete()
        else:
            return super().keypress(size, key)
        return None

    def _complete(self) -> None:
        """The word before the cursor completed: a command at the start of the line, else
        a peer's name (followed by ': ' at the start of a line, as IRC clients do). Several
        matches: their common start first, then each in turn at every Tab."""
        text, pos = self.edit_text, self.edit_pos
        if self._cycle is not None:
            start, matches, shown, inserted = self._cycle
            shown = (shown + 1) % len(matches)
            rest = text[start + len(inserted) :]
        else:
            start = text.rfind(" ", 0, pos) + 1
            word, rest = text[start:pos], text[pos:]
            if not word:
                return
            matches = sorted({c for c in self.completions() if c.lower().startswith(word.lower())})
            if not matches:
                return
            common = _common_start(matches)
            if len(matches) > 1 and len(common) > len(word):
                self.set_edit_text(text[:start] + common + rest)
                self.set_edit_pos(start + len(common))
                return
            shown = 0
        choice = matches[shown]
        inserted = choice + (": " if start == 0 and not choice.startswith("/") else " ")
        self.set_edit_text(text[:start] + inserted + rest)
        self.set_edit_pos(start + len(inserted))
        self._cycle = (start, matches, shown, inserted) if len(matches) > 1 else None


def _common_start(words: list[str]) -> str:
    """The longest start all ``words`` share (character by character)."""
    first, last = min(words), max(words)
    n = 0
    while n < len(first) and first[n] == last[n]:
        n += 1
    return first[:n]


class MessagePane(urwid.ListBox):
    """Scrollback that follows new lines unless the user scrolled up."""

    def __init__(self) -> None:
        self.walker: urwid.SimpleFocusListWalker = urwid.SimpleFocusListWalker([])
        super().__init__(self.walker)
        self.following = True
        self.unseen = 0
        self._size: tuple[int, int] | None = None

    def render(self, size, focus=False):
        self._size = size
        return super().render(size, focus)

    def add(self, widget: urwid.Widget) -> None:
        self.walker.append(widget)
        if len(self.walker) > SCROLLBACK_LIMIT:
            del self.walker[0]
        if self.following:
            self.set_focus(len(self.walker) - 1)
        else:
            self.unseen += 1

    def scroll(self, key: str) -> None:
        if self._size is None or not self.walker:
            return
        self.keypress(self._size, key)
        self.following = "bottom" in self.ends_visible(self._size)
        if self.following:
            self.set_focus(len(self.walker) - 1)
            self.unseen = 0

    def jump_to_newest(self) -> None:
        if self.walker:
            self.set_focus(len(self.walker) - 1)
        self.following, self.unseen = True, 0

    def clear(self) -> None:
        del self.walker[:]
        self.following, self.unseen = True, 0


class Body(urwid.WidgetWrap):
    """Messages with the peer sidebar, or messages alone when the terminal is narrow."""

    def __init__(self, messages: urwid.Widget, sidebar: urwid.Widget) -> None:
        self._messages = messages
        self._wide = urwid.Columns([messages, (SIDEBAR_WIDTH, urwid.LineBox(sidebar, title="peers"))], dividechars=1)
        super().__init__(self._wide)

    def render(self, size, focus=False):
        self._w = self._wide if size[0] >= NARROW and len(size) > 1 and size[1] >= 4 else self._messages
        return super().render(size, focus)

    def selectable(self) -> bool:
        return False


class ChatScreen(urwid.WidgetWrap):
    """The whole screen as one widget (rendered in tests with urwid canvases)."""

    def __init__(
        self,
        room: str,
        name: str,
        fingerprint: str,
        on_input: Callable[[str], None],
        bell: Callable[[], None] | None = None,
        history: History | None = None,
    ) -> None:
        self.room, self.name, self.fingerprint = room, name, fingerprint
        self.bell = bell  # rings on a mention of our name and on a private message; None: never
        self.history = history  # the room's conversation on disk; None: kept nowhere
        self._day: str | None = None  # of the latest line: a new day gets a line of its own
        self.header = urwid.Text("", wrap="clip")
        self.messages = MessagePane()
        self.sidebar_text = urwid.Text("")
        self.more = urwid.Text("", wrap="clip")
        self.input = InputLine(on_input, self._completions)
        self.peers: dict[str, dict] = {}  # fingerprint -> name and latest state: keyed by key, never by name
        self.bootnode_state = "registering"
        self.bootnode_rtt_ms: float | None = None
        self._own: list[tuple[str, urwid.Text, list]] = []  # (text, widget, markup) of our messages
        sidebar = urwid.ListBox(urwid.SimpleFocusListWalker([self.sidebar_text]))
        frame = urwid.Frame(
            Body(self.messages, sidebar),
            header=urwid.AttrMap(self.header, "header"),
            footer=urwid.Pile([self.more, self.input]),
            focus_part="footer",
        )
        super().__init__(frame)
        self.refresh()

    # --- drawing -----------------------------------------------------------------------

    def refresh(self) -> None:
        state = {"registered": "connected"}.get(self.bootnode_state, self.bootnode_state)
        rtt = f" {self.bootnode_rtt_ms:g} ms" if self.bootnode_rtt_ms is not None and state == "connected" else ""
        self.header.set_text(
            f" gochat · room {self.room} · {self.name} ({short_fingerprint(self.fingerprint)}) · bootnode {state}{rtt}"
        )
        lines: list = []
        for fp, peer in sorted(self.peers.items(), key=lambda item: (item[1]["name"], item[0])):
            rtt_ms = peer.get("rtt_ms")
            lines += [
                (peer_colour(fp), self.label(peer["name"], fp)),
                f" {short_fingerprint(peer['fingerprint'])}\n",
                ("sidebar", f"  {peer.get('state', '?')}" + (f" {rtt_ms:g} ms" if rtt_ms is not None else "") + "\n"),
            ]
        self.sidebar_text.set_text(lines or ("sidebar", "nobody yet"))
        m = self.messages
        self.more.set_text(("more", f" more below ({m.unseen} new) · PgDn ") if not m.following and m.unseen else "")

    def _completions(self) -> list[str]:
        return [p["name"] for p in self.peers.values()] + list(COMMAND_NAMES)

    def label(self, name: str, fingerprint: str) -> str:
        """How to show a peer: its name, with its fingerprint's first group when another
        peer here (or we) use the same name."""
        return names.label(name, fingerprint, [p["name"] for p in self.peers.values()], self.name)

    def _peer(self, name: str, fingerprint: str) -> dict:
        """The sidebar entry of a peer (made if new), its name as the event says."""
        shown = self.peers.setdefault(fingerprint, {"fingerprint": fingerprint, "name": name})
        shown["name"] = name
        return shown

    def line(self, markup: Any, when: float | None = None) -> tuple[urwid.Text, list[Any]]:
        """Add a line stamped with its time (now, or a kept message's), after a line
        naming the day when the day changed since the line before; returns the widget
        and its whole markup."""
        moment = time.localtime(time.time() if when is None else when)
        day = time.strftime("%A %d %B %Y", moment)
        if self._day is not None and day != self._day:
            self.messages.add(urwid.Text(("day", f"─── {day} ───")))
        self._day = day
        full = [("time", time.strftime("%H:%M:%S ", moment))] + (markup if isinstance(markup, list) else [markup])
        widget = urwid.Text(full)
        self.messages.add(widget)
        self.refresh()
        return widget, full

    def system(self, text: str, attr: str = "system") -> None:
        self.line((attr, f"* {text}"))

    def own_message(self, text: str, style: str = "say", to: str | None = None) -> None:
        entry = Entry(time.time(), None, None, text, style, to)
        widget, full = self.show_entry(entry)
        wire_text = {"action": pw.ACTION_PREFIX, "private": pw.PRIVATE_PREFIX}.get(style, "") + text
        self._own.append((wire_text, widget, full))  # an undelivered report names the text as sent
        del self._own[:-200]
        if self.history is not None:
            self.history.append(entry)

    def show_entry(self, entry: Entry) -> tuple[urwid.Text, list[Any]]:
        """A message (ours when ``entry.sender`` is None) as a line, at its own time."""
        if entry.sender is None:
            who: tuple[str, str] = ("me", self.name)
        else:
            fp = entry.fingerprint or ""
            who = (peer_colour(fp), self.label(entry.sender, fp) if fp in self.peers else entry.sender)
        body: Any = ("mention", entry.text) if entry.sender is not None and self.mentions_me(entry.text) else entry.text
        if entry.style == "action":
            markup: list[Any] = [(who[0], f"* {who[1]} "), body]
        elif entry.style == "private":
            to = f" → {entry.to} (private)" if entry.sender is None else " → you (private)"
            markup = [who, ("private", to), ": ", body]
        else:
            markup = [who, ": ", body]
        return self.line(markup, entry.time)

    def show_history(self) -> None:
        """The room's conversation kept from earlier runs, each line at its own time."""
        if self.history is None:
            return
        kept = self.history.load()
        for entry in kept:
            self.show_entry(entry)
        if kept:
            self.system(
                f"above: {len(kept)} earlier messages of this room (/clear forgets them; --no-history keeps none)"
            )

    def mentions_me(self, text: str) -> bool:
        """Our name in a message, as a word of its own (any case): highlighted, and a bell."""
        return re.search(rf"(?<!\w){re.escape(self.name)}(?!\w)", text, re.IGNORECASE) is not None

    def received(self, sender: str, fingerprint: str, text: str, style: str) -> None:
        entry = Entry(time.time(), sender, fingerprint, text, style)
        self.show_entry(entry)
        if self.history is not None:
            self.history.append(entry)
        if self.bell is not None and (style == "private" or self.mentions_me(text)):
            self.bell()

    def mark_undelivered(self, to: tuple[str, ...], text: str, reason: str, fingerprints: tuple[str, ...] = ()) -> None:
        """On the message itself. A timeout only says the peer did not confirm it (it may
        still have it); the other reasons say it never got there."""
        what = "not confirmed by" if reason == "timeout" else "not delivered to"
        shown = [self.label(n, fp) for n, fp in zip(to, fingerprints, strict=True)] if fingerprints else list(to)
        who = ", ".join(shown[:5]) + (f" and {len(shown) - 5} more" if len(shown) > 5 else "")
        for own_text, widget, full in reversed(self._own):
            if own_text == text:
                full.append(("undelivered", f"  ✗ {what} {who}"))
                widget.set_text(full)
                return
        self.system(f"{what} {who}: {text}", "error")

    def keypress(self, size, key):
        if key in ("page up", "page down"):
            self.messages.scroll(key)
            self.refresh()
            return None
        if key in JUMP_KEYS:
            self.messages.jump_to_newest()
            self.refresh()
            return None
        return super().keypress(size, key)

    # --- events --------------------------------------------------------------------------

    def handle_event(self, event: ev.Event) -> None:
        match event:
            case ev.Registered(public_endpoint=endpoint, again=again):
                self.bootnode_state = "registered"
                self.system(
                    ("re-registered" if again else "registered")
                    + f" with the bootnode; your public endpoint is {endpoint}"
                )
            case ev.PeerJoined(name=name, fingerprint=fp, trust=trust):
                self._peer(name, fp)["state"] = "punching"
                self.system(f"{self.label(name, fp)} joined · {fp}{TRUST_NOTES.get(trust or '', '')}")
            case ev.KeyChanged(message=message):
                self.system(message, "warning")
            case ev.NatMapping(independent=independent, message=message):
                self.system(message, "system" if independent else "warning")
            case ev.NameClash(message=message):
                self.system(message, "warning")
            case ev.PeerConnected(name=name, fingerprint=fp, path=path, endpoint=endpoint):
                self._peer(name, fp)["state"] = path
                self.system(f"{self.label(name, fp)} connected ({path}, {endpoint})")
            case ev.PathChanged(name=name, fingerprint=fp, path=path, endpoint=endpoint, previous_endpoint=previous):
                self._peer(name, fp)["state"] = path  # the sidebar says direct or relay
                how = "through the relay" if path == "relay" else "directly"
                at = "" if endpoint == "relay" else f" at {endpoint}"
                self.system(f"{self.label(name, fp)} now reached {how}{at} (was {previous})")
            case ev.MessageReceived(sender=sender, fingerprint=fp, text=text, style=style):
                self.received(sender, fp, text, style)
            case ev.Undelivered(to=to, fingerprints=fps, text=text, reason=reason):
                self.mark_undelivered(to, text, reason, fps)
            case ev.PeerNamed(name=name, fingerprint=fp, announced=announced):
                self._peer(name, fp)
                self.system(f"{announced} is {self.label(name, fp)}: the name its handshake proved ({fp})", "warning")
            case ev.PeerRenamed(name=name, fingerprint=fp, previous=previous):
                self._peer(name, fp)
                self.system(f"{previous} is now {self.label(name, fp)}")
            case ev.PeerLeft(name=name, fingerprint=fp, reason=reason):
                shown = self.label(name, fp)
                self.peers.pop(fp, None)
                self.system(f"{shown} left ({reason.replace('_', ' ')})")
            case ev.PeerUnreachable(name=name, fingerprint=fp, message=message):
                self._peer(name, fp)["state"] = "unreachable"
                self.system(message, "error")
            case ev.HandshakeFailed(name=name, fingerprint=fp, reason=reason):
                self._peer(name, fp)["state"] = "failed"
                self.system(f"handshake with {self.label(name, fp)} failed: {reason}", "error")
            case ev.BootnodeUnanswered(bootnode=bootnode, tries=tries, waited_s=waited, give_up_s=give_up):
                self.bootnode_state = f"registering (no answer for {waited:.0f} s)"
                if tries == 1:
                    self.system(f"no answer from the bootnode {bootnode} yet: trying for up to {give_up:g} s")
            case ev.BootnodeLost():
                self.bootnode_state = "lost"
                self.system("bootnode lost: conversations go on; re-registering in the background", "error")
            case ev.BootnodeRestored():
                self.bootnode_state = "registered"
                self.system("bootnode reachable again")
            case ev.BootnodeReregistering():
                self.bootnode_state = "re-registering"
                self.system("the bootnode forgot us (restarted?): re-registering")
            case ev.PeersStatus(peers=peers):
                self.update_status(event)
                if not peers:
                    self.system("no peers")
                for p in peers:
                    rtt = f", {p.rtt_ms:g} ms" if p.rtt_ms is not None else ""
                    where = f"{p.path or p.state}{' ' + p.endpoint if p.endpoint else ''}{rtt}"
                    self.system(f"{self.label(p.name, p.fingerprint)} · {p.fingerprint} · {where}")
            case ev.Verified(name=name, fingerprint=fp, safety_number=number, confirmed=False):
                shown = self.label(name, fp)
                self.system(f"safety number with {shown}:")
                self.system(number)  # a line of its own: read whole, never wrapped
                self.system(
                    f"read it to {shown} over another channel (phone, in person); if it matches on both "
                    f"screens, the session is not intercepted: then type /verify {shown} confirm"
                )
            case ev.Verified(name=name, fingerprint=fp):
                self.system(f"{self.label(name, fp)} is now marked verified in your known peers")
            case ev.Notice(message=message):
                self.system(message)
            case ev.Error(message=message):
                self.system(message, "error")
        self.refresh()

    def update_status(self, status: ev.PeersStatus) -> None:
        """Round-trip times and states from the driver (refreshed now and then)."""
        self.bootnode_state, self.bootnode_rtt_ms = status.bootnode.state, status.bootnode.rtt_ms
        for peer in status.peers:
            shown = self._peer(peer.name, peer.fingerprint)
            shown["state"] = peer.path or peer.state
            shown["rtt_ms"] = peer.rtt_ms
        self.refresh()


class ChatApp:
    """The terminal UI's FrontEnd: a ChatScreen drawn by urwid on the network's asyncio loop."""

    STATUS_EVERY_s = 2.0

    def __init__(self, config: ClientConfig, identity: Identity) -> None:
        history = None
        if config.history:
            data_dir = config.trust_dir or identity.path.parent
            history = History(history_path(data_dir, config.bootnode[0], config.room))
        self.screen = ChatScreen(
            config.room, config.name, identity.fingerprint, self.submit, self.ring if config.bell else None, history
        )
        self.screen.show_history()
        self.controller = ChatController(config, identity, self)
        self.driver = self.controller.driver
        self._status_timer: asyncio.TimerHandle | None = None
        self._redraw_pending = False
        self.loop: urwid.MainLoop | None = None
        self._terminal: urwid.display.raw.Screen | None = None

    # --- FrontEnd ---------------------------------------------------------------------

    def show(self, event: ev.Event) -> None:
        try:
            self.screen.handle_event(event)
        except Exception:  # a bug must show as a line, never take the terminal down
            log.exception("while showing %r", event)
            self.screen.system(f"internal error showing a {event.kind} event (details in the log)", "error")
        self._request_redraw()

    def sent(self, text: str, style: str = "say", to: str | None = None) -> None:
        self.screen.own_message(text, style, to)

    def renamed(self, name: str) -> None:
        self.screen.name = name
        self.screen.refresh()

    def ring(self) -> None:
        """The terminal bell (a mention, a private message)."""
        if self._terminal is not None:
            self._terminal.write("\a")
            self._terminal.flush()

    def clear(self) -> None:
        self.screen.messages.clear()
        if self.screen.history is not None:
            self.screen.history.clear()

    # --- drawing ------------------------------------------------------------------------

    def _request_redraw(self) -> None:
        """Network events arrive outside urwid's input handling: draw once, soon."""
        if self.loop is not None and not self._redraw_pending:
            self._redraw_pending = True
            asyncio.get_running_loop().call_soon(self._redraw)

    def _redraw(self) -> None:
        self._redraw_pending = False
        if self.loop is not None and not self.driver.finished.is_set():
            self.loop.draw_screen()

    def submit(self, text: str) -> None:
        try:
            self.controller.submit(text)
        except Exception:  # a bug must show as a line, never take the terminal down
            log.exception("while handling %r", text)
            self.screen.system("internal error (details in the log)", "error")

    def _refresh_status(self) -> None:
        if self.driver.finished.is_set():
            return
        self.screen.update_status(self.driver.status())
        self._request_redraw()
        self._status_timer = asyncio.get_running_loop().call_later(self.STATUS_EVERY_s, self._refresh_status)

    async def run(self) -> int:
        """Draw until the client finishes; the terminal is restored on every way out.
        Raises StartupError before touching the terminal if the client cannot start.
        Returns the exit code: 0 after a graceful quit, 1 if registration failed."""
        await self.controller.start()
        self.controller.greet()
        aloop = asyncio.get_running_loop()
        terminal = self._terminal = urwid.display.raw.Screen()
        terminal.set_terminal_properties(colors=256)
        self.loop = urwid.MainLoop(
            self.screen, PALETTE, screen=terminal, event_loop=urwid.AsyncioEventLoop(loop=aloop), handle_mouse=False
        )
        try:
            with self.loop.start():
                self._refresh_status()
                await self.controller.wait_finished()
        finally:
            if self._status_timer is not None:
                self._status_timer.cancel()
        return self.controller.exit_code()  # the screen is gone: the reason stays visible
