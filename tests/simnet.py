"""A simulated network for the client state machines: simulated time, a real
Rendezvous machine as the bootnode, NATs of the four classic kinds, loss and jitter.

Nothing here touches a socket. Datagrams travel through an event queue; each node's
timer is honoured exactly; NAT behaviour follows RFC 4787's mapping and filtering
classes. The NAT lab (test_natlab.py) checks the same cases with the kernel's NAT.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from gochat import events as ev
from gochat.bootnode import fastpath
from gochat.bootnode.cookie import CookieJar
from gochat.bootnode.keys import BootnodeKey
from gochat.bootnode.rendezvous import Limits, Rendezvous, Send, SendToRoom
from gochat.client.bootnode_link import BootnodeLink
from gochat.client.room import RoomClient
from gochat.crypto.noise import generate_private_key, public_key, room_psk
from gochat.wire import control as wire

Endpoint = tuple[str, int]
E = TypeVar("E", bound=ev.Event)

FULL_CONE, RESTRICTED, PORT_RESTRICTED, SYMMETRIC = "full-cone", "restricted-cone", "port-restricted", "symmetric"


@dataclass
class Nat:
    public_ip: str
    kind: str
    inside: set = field(default_factory=set)  # private IPs behind it
    _next_port: int = 40000
    _map: dict[tuple, int] = field(default_factory=dict)  # mapping key -> public port
    _back: dict[int, Endpoint] = field(default_factory=dict)  # public port -> private endpoint
    _contacted: dict[int, set] = field(default_factory=dict)  # public port -> remote endpoints sent to

    def outbound(self, src: Endpoint, dst: Endpoint) -> Endpoint:
        key = (src, dst) if self.kind == SYMMETRIC else (src,)
        port = self._map.get(key)
        if port is None:
            port = self._map[key] = self._next_port
            self._next_port += 7 if self.kind == SYMMETRIC else 1
            self._back[port] = src
        self._contacted.setdefault(port, set()).add(dst)
        return self.public_ip, port

    def inbound(self, src: Endpoint, port: int) -> Endpoint | None:
        inner = self._back.get(port)
        if inner is None:
            return None
        contacted = self._contacted.get(port, set())
        if self.kind == FULL_CONE:
            return inner
        if self.kind == RESTRICTED:
            return inner if any(c[0] == src[0] for c in contacted) else None
        return inner if src in contacted else None  # port-restricted and symmetric

    def rebind(self) -> None:
        """The NAT forgets every mapping (a reboot, an idle timeout): new ports from now
        on, and packets to the old ones are dropped."""
        self._map.clear()
        self._back.clear()
        self._contacted.clear()
        self._next_port += 1000


class SimWorld:
    def __init__(
        self, seed: int = 1, delay: float = 0.005, jitter: float = 0.0, loss: float = 0.0, duplicate: float = 0.0
    ) -> None:
        self.now = 1000.0
        self.rng = random.Random(seed)
        self.delay, self.jitter, self.loss = delay, jitter, loss
        self.duplicate = duplicate  # chance that a datagram arrives twice (each copy delayed on its own)
        self._queue: list[tuple] = []
        self._seq = itertools.count()
        self.nodes: dict[Endpoint, object] = {}  # bound endpoint -> RoomClient / Rendezvous
        self._labels: dict[int, str] = {}  # id(client) -> the name its events are kept under
        self.nats: dict[str, Nat] = {}  # public ip -> Nat
        self.nat_of: dict[str, Nat] = {}  # private ip -> Nat
        self.events: dict[str, list[ev.Event]] = {}
        self.bootnode: Rendezvous | None = None
        self.bootnode_addr: Endpoint = ("192.0.2.1", 9595)
        self.sent: list[tuple[Endpoint, Endpoint, bytes]] = []  # (from, to, data) as sent, for replay tests
        self.sent_times: list[float] = []
        self.event_times: dict[str, list[float]] = {}
        self.filter: Callable[[Endpoint, Endpoint, bytes], bool] | None = None
        self.cut_from_bootnode: set[Endpoint] = set()  # nodes whose bootnode path is down (both ways)

    # --- topology ---------------------------------------------------------------------

    def start_bootnode(
        self, timeout: float = 15.0, interval: float = 10.0, room_size: int = 100, relay: bool = True, **limits
    ) -> Rendezvous:
        table = fastpath.RegistrationTable(1000, timeout, self.now)
        self.bootnode = Rendezvous(
            table,
            heartbeat_interval_s=interval,
            peer_timeout_s=timeout,
            limits=Limits(1000, room_size, 1000.0, 1000, relay=relay, **limits),
            cookies=CookieJar(b"k" * 32),
            key=BootnodeKey(b"b" * 32),  # kept across restarts, as a real bootnode keeps its key file
            random_bytes=self.rng.randbytes,  # tokens, room tags, relay nonces: a run replays exactly
        )
        self.nodes[self.bootnode_addr] = self.bootnode
        # its second port, answering STUN for NAT discovery (as a real bootnode's DISCOVERY_PORT)
        second = (self.bootnode_addr[0], self.bootnode_addr[1] + 1)
        self.bootnode.stun_other = second
        self.nodes[second] = _SecondPort(self.bootnode)
        return self.bootnode

    def stop_bootnode(self) -> None:
        self.nodes.pop(self.bootnode_addr, None)
        self.nodes.pop((self.bootnode_addr[0], self.bootnode_addr[1] + 1), None)
        self.bootnode = None

    def add_nat(self, public_ip: str, kind: str) -> Nat:
        nat = self.nats[public_ip] = Nat(public_ip, kind)
        return nat

    def add_client(
        self,
        name: str,
        ip: str,
        port: int = 4545,
        nat: Nat | None = None,
        room: str = "lobby",
        passphrase: str | None = None,
        key: bytes | None = None,
        local: bool = True,
        bootnode: Endpoint | None = None,
        **kw,
    ) -> RoomClient:
        if nat is not None:
            nat.inside.add(ip)
            self.nat_of[ip] = nat
        client = RoomClient(
            static_private=key or generate_private_key(),
            name=name,
            room=room,
            psk=room_psk(room, passphrase),
            bootnode=bootnode or self.bootnode_addr,
            now=self.now,
            local_endpoints=[(ip, port)] if local else [],
            random_bytes=self.rng.randbytes,
            **kw,
        )
        self.nodes[(ip, port)] = client
        self.events[name] = []
        self.event_times[name] = []
        self._labels[id(client)] = name  # events stay under this name whatever /nick does
        self._drain(client, (ip, port))
        return client

    def add_silent_member(self, name: str, endpoint: Endpoint, room: str = "lobby") -> SilentMember:
        """A registered member that never answers a peer: only its bootnode link runs
        (how throwaway keys that flood a room look to everyone else)."""
        member = SilentMember(name, room, self.bootnode_addr, self.now, self.rng.randbytes)
        self.nodes[endpoint] = member
        self.events[name] = []
        self.event_times[name] = []
        self._drain(member, endpoint)
        return member

    def remove(self, endpoint: Endpoint) -> None:
        self.nodes.pop(endpoint, None)

    def cut_bootnode_path(self, node: object) -> None:
        """The node's path to the bootnode fails, both ways; its direct paths still work."""
        self.cut_from_bootnode.add(self.endpoint_of(node))

    def restore_bootnode_path(self, node: object) -> None:
        self.cut_from_bootnode.discard(self.endpoint_of(node))

    def endpoint_of(self, node: object) -> Endpoint:
        return next(ep for ep, n in self.nodes.items() if n is node)

    def inject(self, src: Endpoint, dst: Endpoint, data: bytes, after: float = 0.0) -> None:
        """A datagram that nobody in the world sent (an attacker's, with any source
        address): it arrives at ``dst`` after ``after`` seconds, through any NAT there."""
        heapq.heappush(self._queue, (self.now + after, next(self._seq), src, dst, data))

    # --- packets ----------------------------------------------------------------------

    def _transmit(self, src: Endpoint, dst: Endpoint, data: bytes) -> None:
        self.sent.append((src, dst, data))
        self.sent_times.append(self.now)
        if self.filter is not None and not self.filter(src, dst, data):
            return
        if dst == self.bootnode_addr and src in self.cut_from_bootnode:
            return
        nat = self.nat_of.get(src[0])
        if nat is not None and dst[0] not in nat.inside:
            if dst[0] == nat.public_ip:
                return  # no hairpinning
            src = nat.outbound(src, dst)
        if self.loss and self.rng.random() < self.loss:
            return
        for _ in range(2 if self.duplicate and self.rng.random() < self.duplicate else 1):
            t = self.now + self.delay + (self.rng.random() * self.jitter if self.jitter else 0.0)
            heapq.heappush(self._queue, (t, next(self._seq), src, dst, data))

    def _arrive(self, src: Endpoint, dst: Endpoint, data: bytes) -> None:
        nat = self.nats.get(dst[0])
        if nat is not None:
            inner = nat.inbound(src, dst[1])
            if inner is None:
                return
            dst = inner
        if src == self.bootnode_addr and dst in self.cut_from_bootnode:
            return
        node = self.nodes.get(dst)
        if node is None:
            return
        if isinstance(node, Rendezvous):
            self._deliver_bootnode(node.receive_datagram(data, src, self.now) + node.flush_announcements())
        elif isinstance(node, _SecondPort):
            for a in node.machine.receive_on_second_port(data, src, self.now):
                self._transmit(dst, (wire.normalize_host(a.addr[0]), a.addr[1]), a.data)
        else:
            node.receive_datagram(data, src, self.now)
            self._drain(node, dst)

    def _deliver_bootnode(self, actions) -> None:
        assert self.bootnode is not None
        for a in actions:
            if isinstance(a, Send):
                self._transmit(self.bootnode_addr, (wire.normalize_host(a.addr[0]), a.addr[1]), a.data)
            else:
                assert isinstance(a, SendToRoom)
                t = self.bootnode.table
                for i in t.room_members(a.room_id):
                    if i != a.exclude_slot:
                        self._transmit(self.bootnode_addr, t.endpoint(i), a.data)

    def _drain(self, client: RoomClient, me: Endpoint) -> None:
        for data, dst in client.outbox:
            self._transmit(me, dst, data)
        client.outbox.clear()
        label = self._labels.get(id(client), client.name)
        self.events[label].extend(client.events)
        self.event_times.setdefault(label, []).extend([self.now] * len(client.events))
        client.events.clear()

    # --- time ---------------------------------------------------------------------------

    def _next_timer(self) -> tuple[float | None, object, Endpoint | None]:
        best: tuple[float | None, object, Endpoint | None] = (None, None, None)
        for ep, node in self.nodes.items():
            t = node.get_timer(self.now) if isinstance(node, Rendezvous) else node.get_timer()
            if t is not None and (best[0] is None or t < best[0]):
                best = (t, node, ep)
        return best

    def run(self, until: float) -> None:
        """Advance simulated time to ``until`` (absolute), handling every packet and timer."""
        for _ in range(2_000_000):
            t_timer, node, ep = self._next_timer()
            t_packet = self._queue[0][0] if self._queue else None
            candidates = [t for t in (t_timer, t_packet) if t is not None]
            if not candidates or min(candidates) > until:
                self.now = until
                return
            if t_packet is not None and (t_timer is None or t_packet <= t_timer):
                t, _, src, dst, data = heapq.heappop(self._queue)
                self.now = max(self.now, t)
                self._arrive(src, dst, data)
            else:
                self.now = max(self.now, t_timer)
                if isinstance(node, Rendezvous):
                    self._deliver_bootnode(node.handle_timer(self.now))
                else:
                    node.handle_timer(self.now)
                    self._drain(node, ep)
        raise AssertionError("simulation did not settle")

    def run_for(self, seconds: float) -> None:
        self.run(self.now + seconds)

    def run_until(self, predicate: Callable[[], bool], limit: float = 60.0, step: float = 0.01) -> float:
        """Advance until predicate() holds; returns the simulated time it took."""
        start = self.now
        while not predicate():
            if self.now - start > limit:
                raise AssertionError(f"condition not met within {limit} simulated seconds")
            self.run(self.now + step)
        return self.now - start

    def kinds(self, name: str, kind: type[E]) -> list[E]:
        """``name``'s events of one type, in order."""
        return [e for e in self.events[name] if isinstance(e, kind)]

    def send(self, client: RoomClient, text: str) -> int:
        n = client.send_message(text, self.now)
        me = next(ep for ep, node in self.nodes.items() if node is client)
        self._drain(client, me)
        return n


class _SecondPort:
    """The bootnode's discovery port: its machine's STUN answers, nothing else."""

    def __init__(self, machine: Rendezvous) -> None:
        self.machine = machine

    def get_timer(self) -> float | None:
        return None


class SilentMember:
    """A node with a bootnode link and nothing else: it registers and heartbeats, and
    drops every peer datagram (the node interface of RoomClient that SimWorld uses)."""

    def __init__(
        self, name: str, room: str, bootnode: Endpoint, now: float, random_bytes: Callable[[int], bytes]
    ) -> None:
        self.name = name
        self.bootnode = bootnode
        key = self.static_private = generate_private_key()
        card = wire.encode_card(public_key(key), name, [])
        self.link = BootnodeLink(bootnode, room, card, now, random_bytes, static_private=key)
        self.outbox: list[tuple[bytes, Endpoint]] = []
        self.events: list[ev.Event] = []
        self._take()

    def _take(self) -> None:
        self.outbox += [(data, self.bootnode) for data in self.link.outbox]
        self.link.outbox.clear()
        self.link.events.clear()

    def receive_datagram(self, data: bytes, addr: Endpoint, now: float) -> None:
        if addr == self.bootnode:
            try:
                msg = wire.decode(data)
            except wire.DecodeError:
                return
            if not isinstance(msg, (wire.PeerList, wire.PeerJoined, wire.PeerLeft)):
                self.link.receive(msg, now)
        self._take()

    def get_timer(self) -> float | None:
        return self.link.get_timer()

    def handle_timer(self, now: float) -> None:
        self.link.handle_timer(now)
        self._take()
