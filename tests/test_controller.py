"""The one controller behind both front ends: commands, sending, quitting and exit codes,
driven through the terminal UI and through line mode alike, with a real bootnode and a
real peer on loopback (one asyncio loop, real sockets)."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Callable

import pytest

from gochat import events as ev
from gochat.bootnode.driver import Bootnode, BootnodeConfig
from gochat.bootnode.rendezvous import Limits
from gochat.client.driver import ClientConfig, ClientDriver
from gochat.client.reliable import MAX_MESSAGE_bytes
from gochat.crypto.identity import KnownPeers, load_or_create, safety_number
from gochat.frontends.controller import NOBODY_HERE
from gochat.frontends.linemode import LineMode
from gochat.frontends.ui import ChatApp

WAIT_s = 10.0


class EventLog:
    """Events as they arrive, and a bounded wait for one that matches."""

    def __init__(self) -> None:
        self.events: list[ev.Event] = []
        self._changed = asyncio.Event()

    def add(self, event: ev.Event) -> None:
        self.events.append(event)
        self._changed.set()

    async def wait_for(self, predicate: Callable[[ev.Event], bool]) -> ev.Event:
        async def scan() -> ev.Event:
            while True:
                for event in self.events:
                    if predicate(event):
                        return event
                self._changed.clear()
                await self._changed.wait()

        return await asyncio.wait_for(scan(), WAIT_s)


class Recorded(EventLog):
    """Wraps a real front end: every event it is shown is also kept, and awaitable."""

    def __init__(self, front) -> None:
        super().__init__()
        self.front = front
        self.sent_lines: list[str] = []
        show, sent = front.show, front.sent

        def recording_show(event: ev.Event) -> None:
            self.add(event)
            show(event)

        def recording_sent(text: str, style: str = "say", to: str | None = None) -> None:
            self.sent_lines.append(text if style == "say" else (text, style, to))
            sent(text, style, to)

        front.show = recording_show
        front.sent = recording_sent
        front.controller.driver.sink = recording_show  # network events take the same way

    def output(self) -> str:
        """What the user sees: the JSON lines, or the rendered screen."""
        if isinstance(self.front, LineMode):
            return self.front.stdout.getvalue()
        canvas = self.front.screen.render((160, 60), focus=True)
        return "\n".join(line.decode("utf-8") for line in canvas.text)


def _config(port: int, name: str) -> ClientConfig:
    return ClientConfig(
        bootnode=("127.0.0.1", port), room="lobby", name=name, port=0, passphrase=None, peer_timeout=3.0
    )


def _front(kind: str, config: ClientConfig, identity):
    if kind == "linemode":
        return LineMode(config, identity, stdin_fd=-1, stdout=io.StringIO())
    return ChatApp(config, identity)


@pytest.fixture(params=["linemode", "ui"])
def front_kind(request):
    return request.param


def test_commands_sending_and_quit_behave_the_same_in_both_front_ends(tmp_path, front_kind):
    async def scenario() -> None:
        node = Bootnode(
            BootnodeConfig(
                listen=("127.0.0.1", 0),
                heartbeat_interval_s=1.0,
                peer_timeout_s=3.0,
                limits=Limits(100, 100, 1000.0, 1000),
                recv_buffer_bytes=1 << 20,
            )
        )
        node.start()
        port = node.address[1]
        alice_id = load_or_create(tmp_path / "alice" / "identity")
        alice = Recorded(_front(front_kind, _config(port, "alice"), alice_id))
        c = alice.front.controller
        bob_log = EventLog()
        bob = ClientDriver(_config(port, "bob"), load_or_create(tmp_path / "bob" / "identity"), bob_log.add)
        carol_log = EventLog()
        carol = ClientDriver(_config(port, "carol"), load_or_create(tmp_path / "carol" / "identity"), carol_log.add)
        try:
            await c.start()
            await alice.wait_for(lambda e: isinstance(e, ev.Registered))

            c.submit("anyone?")  # alone in the room: refused, nothing echoed
            await alice.wait_for(lambda e: isinstance(e, ev.Error) and e.message == NOBODY_HERE)
            assert alice.sent_lines == []
            c.submit("/frobnicate")
            await alice.wait_for(
                lambda e: isinstance(e, ev.Error) and "unknown command /frobnicate: try /help" in e.message
            )
            c.submit("/help")
            await alice.wait_for(lambda e: isinstance(e, ev.Notice) and "/verify NAME" in e.message)
            c.submit("/verify bob")
            await alice.wait_for(lambda e: isinstance(e, ev.Error) and "no peer called 'bob'" in e.message)

            await bob.start()
            await alice.wait_for(lambda e: isinstance(e, ev.PeerConnected) and e.name == "bob")
            c.submit("x" * (MAX_MESSAGE_bytes + 1))
            await alice.wait_for(lambda e: isinstance(e, ev.Error) and "the limit is" in e.message)
            c.submit("hello bob")
            assert alice.sent_lines == ["hello bob"]
            c.submit("   ")  # blank lines are not messages
            assert alice.sent_lines == ["hello bob"]

            c.submit("/peers")
            status = await alice.wait_for(lambda e: isinstance(e, ev.PeersStatus))
            assert [(p.name, p.state, p.path) for p in status.peers] == [("bob", "connected", "direct")]
            assert status.bootnode.state == "connected"

            await carol.start()
            await alice.wait_for(lambda e: isinstance(e, ev.PeerConnected) and e.name == "carol")
            c.submit("/me waves")
            c.submit("/msg bob just for you")
            c.submit("/msg nobody hi")
            await alice.wait_for(lambda e: isinstance(e, ev.Error) and "/msg NAME TEXT: no peer" in e.message)
            c.submit("after")
            await carol_log.wait_for(lambda e: isinstance(e, ev.MessageReceived) and e.text == "after")
            await bob_log.wait_for(lambda e: isinstance(e, ev.MessageReceived) and e.text == "after")
            styles = [(e.text, e.style) for e in carol_log.events if isinstance(e, ev.MessageReceived)]
            assert styles == [("waves", "action"), ("after", "say")]  # nothing of bob's private message
            styles = [(e.text, e.style) for e in bob_log.events if isinstance(e, ev.MessageReceived)]
            assert styles == [("hello bob", "say"), ("waves", "action"), ("just for you", "private"), ("after", "say")]
            assert alice.sent_lines[1:] == [("waves", "action", None), ("just for you", "private", "bob"), "after"]
            c.submit("/whoami")
            who = await alice.wait_for(lambda e: isinstance(e, ev.Notice) and "your fingerprint" in e.message)
            assert alice_id.fingerprint in who.message and "'alice'" in who.message
            carol.quit()
            await asyncio.wait_for(carol.finished.wait(), WAIT_s)
            await alice.wait_for(lambda e: isinstance(e, ev.PeerLeft) and e.name == "carol")

            c.submit("/verify bob")
            verified = await alice.wait_for(lambda e: isinstance(e, ev.Verified))
            bob_key = bob.machine.public_key
            assert verified.safety_number == safety_number(alice_id.public_key, bob_key)
            known = alice_id.path.parent / "known_peers.json"
            assert not verified.confirmed and KnownPeers(known).get("bob")["verified"] is False  # nobody compared yet
            c.submit("/verify bob confirm")
            await alice.wait_for(lambda e: isinstance(e, ev.Verified) and e.confirmed)
            assert KnownPeers(known).get("bob")["verified"] is True

            c.submit("/nick " + "x" * 40)
            await alice.wait_for(lambda e: isinstance(e, ev.Error) and "/nick NAME: at most 32 bytes" in e.message)
            c.submit("/nick alicia")
            await alice.wait_for(lambda e: isinstance(e, ev.Notice) and e.message == "you are now 'alicia'")
            renamed = await bob_log.wait_for(lambda e: isinstance(e, ev.PeerRenamed))
            assert (renamed.name, renamed.previous) == ("alicia", "alice")

            c.submit("/quit")
            await alice.wait_for(lambda e: isinstance(e, ev.Notice) and e.message == "leaving…")
            await asyncio.wait_for(c.driver.finished.wait(), WAIT_s)
            assert c.exit_code() == 0
            await bob_log.wait_for(lambda e: isinstance(e, ev.PeerLeft) and e.reason == "quit")
            received = [e.text for e in bob_log.events if isinstance(e, ev.MessageReceived)]
            assert received == ["hello bob", "waves", "just for you", "after"]
        finally:
            bob.quit()
            await asyncio.wait_for(bob.finished.wait(), WAIT_s)
            c.driver.close()
            node.close()

        out = alice.output()
        if front_kind == "linemode":
            lines = [json.loads(line) for line in out.splitlines()]
            kinds = [line["event"] for line in lines]
            assert {"registered", "error", "notice", "peer_connected", "peers", "verified"} <= set(kinds)
            assert any(
                line["event"] == "verified" and line["safety_number"] == verified.safety_number for line in lines
            )
        else:
            assert "alice: hello bob" in out and "safety number with bob:" in out and verified.safety_number in out
            assert "* alice waves" in out and "alice → bob (private): just for you" in out
            assert "type /verify bob confirm" in out and "is now marked verified" in out
            assert "unknown command /frobnicate: try /help" in out and NOBODY_HERE in out
            assert "bob · " in out and "direct 127.0.0.1:" in out  # the /peers listing

    asyncio.run(scenario())
