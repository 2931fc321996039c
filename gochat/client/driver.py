"""asyncio driver of a chat client: owns the UDP socket, the clock and the one timer.

All protocol decisions are in chat.py (and below it); this module feeds it datagrams
and timer ticks with ``loop.time()``, sends what it returns, and hands its events to
a front end (line mode, or the terminal UI) through one callback. It also does the
client's local file work that a state machine must not: trust on first use of the
peers' keys (known_peers.json beside the identity file).
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import hashlib
import logging
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aioice import stun
from aioice.turn import create_turn_endpoint

from gochat import events as ev
from gochat.client.bootnode_link import room_id_for
from gochat.client.known_bootnodes import FILE_NAME as KNOWN_BOOTNODES_FILE
from gochat.client.known_bootnodes import KnownBootnodes
from gochat.client.room import RoomClient
from gochat.constants import DEFAULT_REGISTER_TIMEOUT_s
from gochat.crypto.identity import Identity, KnownPeers, fingerprint
from gochat.crypto.noise import room_psk
from gochat.turn import TurnServer, parse_turn_url
from gochat.wire.endpoints import canonical_endpoint, format_endpoint, is_turn, sockaddr_for, turn_target

TURN_ALLOCATE_TIMEOUT_s = 10.0  # an allocation not made by then is given up (the bootnode's relay remains)

log = logging.getLogger("gochat.client")

EventSink = Callable[[ev.Event], None]


class StartupError(Exception):
    """The client cannot start (bootnode name does not resolve, port in use...)."""


@dataclass
class ClientConfig:
    bootnode: tuple[str, int]
    room: str
    name: str
    port: int
    passphrase: str | None
    peer_timeout: float
    bootnode_public_key: bytes | None = None  # pinned by a setting (else: known_bootnodes.json)
    register_timeout: float = DEFAULT_REGISTER_TIMEOUT_s  # how long the first registration tries
    # Where the peers' and bootnodes' keys seen so far are remembered (known_peers.json,
    # known_bootnodes.json); None: beside the identity file.
    trust_dir: Path | None = None
    # False when the name is the default (login name and fingerprint): the front end
    # says how to choose one.
    name_chosen: bool = True
    bell: bool = True  # terminal UI: ring the bell on a mention of our name or a private message
    history: bool = True  # terminal UI: keep the room's conversation on disk (beside the trust files)
    # More bootnodes serving the same rooms (BOOTNODE=a:9595,b:9595): the room's hash picks
    # where all its members start, the list's order is the failover order.
    more_bootnodes: tuple[tuple[str, int], ...] = ()
    relay: bool = True  # ask the bootnode for a relay binding and use it for peers that cannot punch
    # A TURN server of our own (TURN_URL) and its credentials; without credentials, those
    # the bootnode mints (for its own TURN server, or this one) are used.
    turn: TurnServer | None = None
    turn_credentials: tuple[str, str] | None = None


def bootnode_addresses(
    bootnodes: Sequence[tuple[str, int]],
    room: str,
    resolve: Callable[[str, int], tuple[int, list[tuple[str, int]]]] = lambda host, port: resolve_bootnode(host, port),
) -> tuple[int, list[tuple[str, int]], dict[tuple[str, int], str]]:
    """(socket family, every address to try in order, address -> the bootnode as
    configured) for this room. A name with several machines behind it is ordered by the
    room's hash too (sorted first: resolvers rotate their answers), IPv4 before IPv6."""
    family, addresses, names = socket.AF_INET, [], {}
    for configured in bootnode_order(bootnodes, room):
        its_family, its_addresses = resolve(*configured)
        family = socket.AF_INET6 if socket.AF_INET6 in (family, its_family) else family
        ipv4 = sorted(a for a in its_addresses if ":" not in a[0])
        ipv6 = sorted(a for a in its_addresses if ":" in a[0])
        for address in [*bootnode_order(ipv4, room), *bootnode_order(ipv6, room)]:
            if address not in names:
                names[address] = format_endpoint(configured)
                addresses.append(address)
    return family, addresses, names


def bootnode_order(bootnodes: Sequence[tuple[str, int]], room: str) -> list[tuple[str, int]]:
    """The bootnodes in the order this room's members try them: the same list for every
    member, starting at one picked by hashing the room id, so that they meet."""
    if not bootnodes:
        return []
    start = int.from_bytes(hashlib.sha256(room_id_for(room)).digest()[:4], "big") % len(bootnodes)
    return [*bootnodes[start:], *bootnodes[:start]]


def resolve_bootnode(host: str, port: int) -> tuple[int, list[tuple[str, int]]]:
    """(socket family, the bootnode's addresses, IPv4 first: most NATs are IPv4);
    StartupError if the name does not resolve. A name with addresses of both families
    (localhost) gets an IPv6 socket that serves both, so that each can be tried."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except socket.gaierror as exc:
        raise StartupError(f"cannot resolve bootnode {host}: {exc.strerror}") from None
    infos.sort(key=lambda i: i[0] != socket.AF_INET)
    families = {i[0] for i in infos}
    family = socket.AF_INET6 if socket.AF_INET6 in families else socket.AF_INET
    addresses = list(dict.fromkeys(canonical_endpoint(i[4]) for i in infos))
    return family, addresses


def local_endpoint_towards(family: int, target: tuple[str, int], port: int) -> list[tuple[str, int]]:
    """The address the kernel would send from towards ``target`` (the LAN address behind a
    NAT), with our port: what peers behind the same NAT can reach us on."""
    probe = socket.socket(family, socket.SOCK_DGRAM)
    try:
        probe.connect(sockaddr_for(family, target))  # no packet is sent: UDP connect only routes
        return [canonical_endpoint((probe.getsockname()[0], port))]
    except OSError:
        return []
    finally:
        probe.close()


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, driver: ClientDriver) -> None:
        self.driver = driver

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.driver.datagram_received(data, addr)

    def error_received(self, exc: Exception) -> None:  # ICMP errors: a candidate that is not there
        self.driver.machine.counters["send_error"] += 1


class _TurnProtocol(asyncio.DatagramProtocol):
    """What our TURN allocation relays to us: peers' datagrams, from their addresses."""

    def __init__(self, driver: ClientDriver) -> None:
        self.driver = driver

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.driver.machine.receive_via_turn(data, addr, self.driver.loop.time())
        self.driver._after_input()

    def error_received(self, exc: Exception) -> None:  # a channel that could not be bound, say
        self.driver.machine.counters["turn_error"] += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.driver._turn_lost()


class ClientDriver:
    def __init__(self, config: ClientConfig, identity: Identity, sink: EventSink) -> None:
        self.config = config
        self.identity = identity
        self.sink = sink
        trust_dir = config.trust_dir or identity.path.parent
        self.known = KnownPeers(trust_dir / "known_peers.json")
        self.known_bootnodes = KnownBootnodes(trust_dir / KNOWN_BOOTNODES_FILE)
        self.loop = asyncio.get_running_loop()
        self.machine: RoomClient  # set by start()
        self.transport: asyncio.DatagramTransport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.finished = asyncio.Event()
        self._turn: Any = None  # aioice's TurnTransport, once allocated
        self._turn_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        bootnodes = [self.config.bootnode, *self.config.more_bootnodes]
        family, addresses, self._names = bootnode_addresses(bootnodes, self.config.room)
        try:
            try:
                sock = self._bind(family)
            except OSError as exc:
                ipv4 = [a for a in addresses if ":" not in a[0]]
                if family != socket.AF_INET6 or not ipv4 or exc.errno == errno.EADDRINUSE:
                    raise
                family, addresses = socket.AF_INET, ipv4  # no IPv6 on this host: the name's IPv4 addresses
                sock = self._bind(family)
        except OSError as exc:
            raise StartupError(
                f"cannot use UDP port {self.config.port}: {exc.strerror or exc} "
                "(choose another with --port or LOCAL_UDP_PORT)"
            ) from None
        await self._start_on(family, addresses, sock)

    def _bind(self, family: int) -> socket.socket:
        bind = ("::" if family == socket.AF_INET6 else "0.0.0.0", self.config.port)
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind(bind)
        except OSError:
            sock.close()
            raise
        return sock

    async def _start_on(self, family: int, addresses: list[tuple[str, int]], sock: socket.socket) -> None:
        bootnode = addresses[0]
        self.family = family
        self.port: int = sock.getsockname()[1]
        self.transport, _ = await self.loop.create_datagram_endpoint(lambda: _Protocol(self), sock=sock)
        psk = room_psk(self.config.room, self.config.passphrase)
        self.machine = RoomClient(
            static_private=self.identity.private_key,
            name=self.config.name,
            room=self.config.room,
            psk=psk,
            bootnode=bootnode,
            now=self.loop.time(),
            local_endpoints=local_endpoint_towards(family, bootnode, self.port),
            peer_timeout=self.config.peer_timeout,
            register_timeout=self.config.register_timeout,
            bootnode_alternatives=addresses[1:],
            relay=self.config.relay,
        )
        log.info("client on UDP port %d, bootnode %s, room %r", self.port, format_endpoint(bootnode), self.config.room)
        self._pin_bootnode_key()
        if self.config.turn is not None and self.config.turn_credentials is not None:
            self._start_turn(self.config.turn, *self.config.turn_credentials)
        self._after_input()

    # --- TURN -------------------------------------------------------------------------

    def _start_turn(self, server: TurnServer, username: str, password: str) -> None:
        if self._turn_task is None:
            self._turn_task = self.loop.create_task(self._allocate(server, username, password))

    async def _allocate(self, server: TurnServer, username: str, password: str) -> None:
        """A TURN allocation (aioice, RFC 8656): our relayed address goes into our card,
        and peers on the same TURN server are reached through it."""
        try:
            infos = await self.loop.getaddrinfo(server.host, server.port, type=socket.SOCK_DGRAM)
            infos.sort(key=lambda i: i[0] != socket.AF_INET)
            address = canonical_endpoint(infos[0][4])
            self._turn, _ = await asyncio.wait_for(
                create_turn_endpoint(lambda: _TurnProtocol(self), address, username, password),
                TURN_ALLOCATE_TIMEOUT_s,
            )
        except (OSError, ConnectionError, asyncio.TimeoutError, stun.TransactionError) as exc:
            self.sink(ev.Notice(f"TURN server {server.url}: no allocation ({exc or type(exc).__name__})"))
            log.warning("TURN server %s: no allocation: %r", server.url, exc)
            return
        relayed = self._turn.get_extra_info("sockname")
        log.info("TURN allocation at %s: relayed address %s", server.url, format_endpoint(relayed))
        self.machine.set_turn(relayed, self.loop.time())
        self._after_input()

    def _turn_lost(self) -> None:
        self._turn = None

    def _pin_bootnode_key(self) -> None:
        """Each bootnode's key from the setting, or as remembered for it."""
        link = self.machine.link
        for address, name in self._names.items():
            if self.config.bootnode_public_key is not None:  # (one bootnode only: the settings check)
                link.pin_bootnode_key(
                    self.config.bootnode_public_key, "set by BOOTNODE_PUBLIC_KEY", "change that setting", address
                )
                continue
            key = self.known_bootnodes.get(name)
            if key is not None:
                link.pin_bootnode_key(key, *self._pin_text(name), address)

    def _pin_text(self, address: str) -> tuple[str, str]:
        path = self.known_bootnodes.path
        return f"pinned in {path}", f'delete the "{address}" entry from {path} and start again'

    def _remember_bootnode_key(self, key: bytes) -> None:
        """Trust on first use: the key the bootnode presented first is kept for its address."""
        link = self.machine.link
        link.learned_key = None
        address = self._names.get(link.learned_at, format_endpoint(link.learned_at))
        try:
            self.known_bootnodes.remember(address, key)
        except OSError as exc:
            log.warning("cannot remember the key of bootnode %s: %s", address, exc)
            return
        log.info("bootnode %s has the key %s (remembered in %s)", address, key.hex(), self.known_bootnodes.path)
        for other, name in self._names.items():  # every address of that bootnode
            if name == address:
                link.pin_bootnode_key(key, *self._pin_text(address), other)

    # --- inputs ---------------------------------------------------------------------

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.machine.receive_datagram(data, addr, self.loop.time())
        self._after_input()

    def _on_timer(self) -> None:
        self._timer = None
        self.machine.handle_timer(self.loop.time())
        self._after_input()

    def send_message(self, text: str, to: bytes | None = None) -> int:
        n = self.machine.send_message(text, self.loop.time(), to)
        self._after_input()
        return n

    def rename(self, name: str) -> None:
        """/nick: our display name from now on (re-registered, proved to each peer)."""
        self.config = dataclasses.replace(self.config, name=name, name_chosen=True)
        self.machine.rename(name, self.loop.time())
        self._after_input()

    def quit(self) -> None:
        self.machine.quit(self.loop.time())
        self._after_input()

    # --- outputs --------------------------------------------------------------------

    def _after_input(self) -> None:
        machine = self.machine
        if machine.link.learned_key is not None:
            self._remember_bootnode_key(machine.link.learned_key)
        grant = machine.link.turn_grant
        if grant is not None and self._turn_task is None:  # the bootnode minted us TURN credentials
            try:
                server = self.config.turn or parse_turn_url(grant.url)
            except ValueError as exc:
                machine.link.turn_grant = None
                log.warning("the bootnode named an unusable TURN server: %s", exc)
            else:
                self._start_turn(server, grant.username, grant.password)
        if machine.outbox and self.transport is not None:
            for data, endpoint in machine.outbox:
                try:
                    if is_turn(endpoint):  # through our TURN allocation
                        if self._turn is None:
                            machine.counters["turn_unavailable"] += 1
                        else:
                            self._turn.sendto(data, turn_target(endpoint))
                        continue
                    self.transport.sendto(data, sockaddr_for(self.family, endpoint))
                except OSError:
                    machine.counters["send_error"] += 1
            machine.outbox.clear()
        if machine.events:
            events, machine.events = machine.events, []
            for event in events:
                self._emit(event)
        if machine.finished:
            self.close()
            return
        when = machine.get_timer()
        if self._timer is not None and (when is None or self._timer.when() != when):
            self._timer.cancel()
            self._timer = None
        if when is not None and self._timer is None:
            self._timer = self.loop.call_at(when, self._on_timer)

    def _emit(self, event: ev.Event) -> None:
        if isinstance(event, ev.PeerJoined):
            self._trust(event.name, event.fingerprint, event.public_key, before=event)
        elif isinstance(event, ev.PeerNamed):
            self.sink(event)
            self._trust(event.name, event.fingerprint, event.public_key, before=None)
        elif isinstance(event, ev.PeerRenamed):
            self.sink(event)
            peer = next((p for p in self.machine.peers.values() if p.fingerprint == event.fingerprint), None)
            if peer is not None:
                self._trust(event.name, event.fingerprint, peer.key.hex(), before=None)
        else:
            self.sink(event)

    def _trust(self, name: str, fp: str, key_hex: str, before: ev.PeerJoined | None) -> None:
        """Trust on first use of a name with a key: the known-peers file says new, known,
        verified or changed (then a loud KeyChanged follows). A join is shown with its
        trust first."""
        key = bytes.fromhex(key_hex)
        previous = self.known.get(name)
        status = self.known.remember(name, key)
        verified = status == KnownPeers.KNOWN and previous is not None and previous.get("verified")
        # A known name with another key stays a loud key change even when the known key is
        # still here: an impostor joining beside the real one would look just the same.
        namesakes = [p for p in self.machine.peers.values() if p.name == name and p.key != key]
        if before is not None:
            self.sink(dataclasses.replace(before, trust="verified" if verified else status))
        if name == self.config.name:
            own = self.identity.fingerprint
            self.sink(
                ev.NameClash(
                    name,
                    fp,
                    own,
                    f"someone else ({fp}) joined with your name {name!r}: you appear to the room as "
                    f"{name} ({own[:4]}), they as {name} ({fp[:4]}). A distinct name (--name or NAME) helps.",
                )
            )
        elif namesakes:
            other = namesakes[0].fingerprint
            self.sink(
                ev.NameClash(
                    name,
                    fp,
                    other,
                    f"two peers are called {name!r}: {name} ({other[:4]}) and {name} ({fp[:4]}); "
                    "tell them apart by fingerprint",
                )
            )
        if status == KnownPeers.CHANGED and previous is not None:
            old = fingerprint(bytes.fromhex(previous["key"]))
            self.sink(
                ev.KeyChanged(
                    name,
                    fp,
                    old,
                    f"WARNING: {name} has a different key than before ({old} -> {fp}). It may be "
                    f"someone else: compare safety numbers before trusting it.",
                )
            )

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.transport is not None:
            self.transport.close()
            self.transport = None
        if self._turn is not None:
            self._turn.close()  # deletes the allocation (a last request, not waited for)
            self._turn = None
        self.finished.set()

    def status(self) -> ev.PeersStatus:
        return ev.PeersStatus(
            self.machine.bootnode_status(), tuple(self.machine.peer_snapshot()), dict(self.machine.counters)
        )
