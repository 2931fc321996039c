"""``gochat --mode demo``: a working encrypted chat in one process, nothing to set up.

Over real UDP on loopback it starts a bootnode, a bot peer called ``echo`` that answers
every message with the same text reversed, and the terminal UI joined to the room
``lobby``. Yours is your usual identity; the bot's is kept beside it (``demo/``), the
same on every run, and the demo remembers the keys it meets in a store of its own
there: a demo never shows a key-change warning, and never touches the keys you trust
in real rooms. (With a new bot key every run, it warned that echo's key had changed,
and taught users to ignore that warning.)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from gochat import events as ev
from gochat.bootnode.driver import Bootnode, BootnodeConfig
from gochat.bootnode.rendezvous import Limits
from gochat.client.driver import ClientConfig, ClientDriver
from gochat.constants import DEFAULT_HEARTBEAT_INTERVAL_s, DEFAULT_PEER_TIMEOUT_s
from gochat.crypto.identity import Identity, load_or_create

ROOM = "lobby"
BOT_NAME = "echo"

log = logging.getLogger("gochat.demo")


FrontEndRunner = Callable[[ClientConfig, Identity], Awaitable[int]]
"""Runs a front end (the UI, or line mode) for a client until it quits; returns the exit code."""


class EchoBot:
    """A peer that answers every message with its text reversed."""

    def __init__(self, config: ClientConfig, identity: Identity) -> None:
        self.driver = ClientDriver(config, identity, self.on_event)

    def on_event(self, event: ev.Event) -> None:
        if isinstance(event, ev.MessageReceived):
            asyncio.get_running_loop().call_soon(self.driver.send_message, event.text[::-1])


def client_config(port: int, name: str, trust_dir: Path) -> ClientConfig:
    return ClientConfig(
        bootnode=("127.0.0.1", port),
        room=ROOM,
        name=name,
        port=0,
        passphrase=None,
        peer_timeout=DEFAULT_PEER_TIMEOUT_s,
        trust_dir=trust_dir,
    )


async def run_demo(identity: Identity, name: str, front_end: FrontEndRunner) -> int:
    """Bootnode and bot in this process, then ``front_end(config, identity)`` (a coroutine
    returning the exit code: the UI, or line mode) until it quits."""
    node = Bootnode(
        BootnodeConfig(
            listen=("127.0.0.1", 0),
            heartbeat_interval_s=DEFAULT_HEARTBEAT_INTERVAL_s,
            peer_timeout_s=DEFAULT_PEER_TIMEOUT_s,
            limits=Limits(1000, 100, 100.0, 100),
            recv_buffer_bytes=1 << 20,
        )
    )
    node.start()
    port = node.address[1]
    demo_dir = identity.path.parent / "demo"
    bot = EchoBot(client_config(port, BOT_NAME, demo_dir / "echo"), load_or_create(demo_dir / "echo" / "identity"))
    await bot.driver.start()
    try:
        return await front_end(client_config(port, name, demo_dir), identity)
    finally:
        bot.driver.quit()
        try:
            await asyncio.wait_for(bot.driver.finished.wait(), 2.0)
        except asyncio.TimeoutError:
            log.warning("the echo bot did not finish leaving")
        node.close()
