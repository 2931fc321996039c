"""Rooms that span bootnodes (sans-I/O): what one bootnode tells the others through the
cluster bus (NATS, gochat/bootnode/bus.py), and what it makes of what they tell it.

Only membership travels: a bootnode publishes its own members' joins and leaves on the
room's subject, and keeps the members the others announce (the *remote* members) for
the rooms it has members in, so that its PEER_LIST, PEER_JOINED, PEER_LEFT and room
digest cover the whole room. Heartbeats, relayed datagrams and everything per packet
stay on their bootnode. A bootnode that starts serving a room asks the others for its
members (SYNC); every bootnode says it is alive on ``gochat.nodes`` every
ALIVE_INTERVAL_s, and the members of one that falls silent for the peer timeout leave
the rooms (as a registration that stopped heartbeating would); one that stops says so.

Messages (all integers big-endian): version (1, = 1), type (1), the sender's node id
(8), then per type: JOIN an entry (a wire peer entry, its relay binding left out: relay
ids are only good at their bootnode); LEAVE a public key (32) and a reason (1); SYNC,
ALIVE and BYE nothing. Nothing here trusts the bus further than the bootnodes on it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from gochat.wire import control as wire
from gochat.wire.constants import PUBLIC_KEY_SIZE_bytes

TIMED_OUT = 2  # LeaveReason.TIMED_OUT: how members of a silent bootnode leave
BUS_VERSION = 1
T_JOIN, T_LEAVE, T_SYNC, T_ALIVE, T_BYE = 1, 2, 3, 4, 5
NODE_ID_SIZE = 8
NODES_SUBJECT = "gochat.nodes"
ALIVE_INTERVAL_s = 2.0


def room_subject(room_id: bytes) -> str:
    return "gochat.room." + room_id.hex()


def room_of_subject(subject: str) -> bytes | None:
    prefix = "gochat.room."
    if not subject.startswith(prefix):
        return None
    try:
        room_id = bytes.fromhex(subject[len(prefix) :])
    except ValueError:
        return None
    return room_id if len(room_id) == 16 else None


@dataclass
class Remote:
    node: bytes
    entry: bytes


@dataclass
class ClusterRooms:
    """One bootnode's view of the others' members, and its own messages to them."""

    node_id: bytes
    node_timeout_s: float
    remote: dict[bytes, dict[bytes, Remote]] = field(default_factory=dict)  # room -> key -> member
    nodes: dict[bytes, float] = field(default_factory=dict)  # other node -> last heard
    outbox: list[tuple[str, bytes]] = field(default_factory=list)  # (subject, message) to publish
    subscribe: set[bytes] = field(default_factory=set)  # rooms to start listening to
    unsubscribe: set[bytes] = field(default_factory=set)
    stats: dict[str, int] = field(default_factory=dict)

    def _head(self, kind: int) -> bytes:
        return bytes([BUS_VERSION, kind]) + self.node_id

    def _count(self, key: str) -> None:
        self.stats[key] = self.stats.get(key, 0) + 1

    # --- our members --------------------------------------------------------------------

    def room_opened(self, room_id: bytes) -> None:
        """We have a first member in this room: listen to it and ask who else is in it."""
        self.unsubscribe.discard(room_id)
        self.subscribe.add(room_id)
        self.remote.setdefault(room_id, {})
        self.outbox.append((room_subject(room_id), self._head(T_SYNC)))

    def room_closed(self, room_id: bytes) -> None:
        """Our last member left: the room's remote members are no concern of ours."""
        self.subscribe.discard(room_id)
        self.unsubscribe.add(room_id)
        self.remote.pop(room_id, None)

    def joined(self, room_id: bytes, entry: bytes) -> None:
        """``entry``: the member's peer entry without its relay binding."""
        self.outbox.append((room_subject(room_id), self._head(T_JOIN) + entry))
        self._count("published.join")

    def left(self, room_id: bytes, public_key: bytes, reason: int) -> None:
        self.outbox.append((room_subject(room_id), self._head(T_LEAVE) + public_key + bytes([reason])))
        self._count("published.leave")

    def alive(self) -> tuple[str, bytes]:
        return NODES_SUBJECT, self._head(T_ALIVE)

    def bye(self) -> tuple[str, bytes]:
        return NODES_SUBJECT, self._head(T_BYE)

    def entries(self, room_id: bytes) -> list[bytes]:
        return [m.entry for m in self.remote.get(room_id, {}).values()]

    def is_remote(self, room_id: bytes, public_key: bytes) -> bool:
        return public_key in self.remote.get(room_id, {})

    # --- theirs ---------------------------------------------------------------------------

    def receive(
        self,
        subject: str,
        data: bytes,
        now: float,
        local_entries: Callable[[bytes], list[bytes]],
        is_local: Callable[[bytes, bytes], bool],
    ) -> list[tuple[str, bytes, bytes]]:
        """A message from the bus. Returns what changed for our members: ("join",
        room, entry), ("leave", room, key) and (for a node that said bye) several."""
        if len(data) < 2 + NODE_ID_SIZE or data[0] != BUS_VERSION:
            self._count("dropped.malformed")
            return []
        kind, node, body = data[1], data[2 : 2 + NODE_ID_SIZE], data[2 + NODE_ID_SIZE :]
        if node == self.node_id:
            return []  # our own, back from the bus
        self.nodes[node] = now
        if subject == NODES_SUBJECT:
            if kind == T_BYE:
                return self.node_gone(node)
            return []
        room_id = room_of_subject(subject)
        if room_id is None or room_id not in self.remote:
            self._count("dropped.room")
            return []
        members = self.remote[room_id]
        if kind == T_SYNC:  # a bootnode starts serving the room: tell it our members
            for entry in local_entries(room_id):
                self.joined(room_id, entry)
            return []
        if kind == T_JOIN:
            try:
                decoded = wire._Reader(body, 0).peer_entry()
            except wire.DecodeError:
                self._count("dropped.malformed")
                return []
            key = decoded.public_key
            if is_local(room_id, key):
                return []  # registered here too (it moved here): ours is the one that counts
            fresh = key not in members
            members[key] = Remote(node, body)
            self._count("received.join")
            return [("join" if fresh else "update", room_id, body)]
        if kind == T_LEAVE and len(body) == PUBLIC_KEY_SIZE_bytes + 1:
            key = body[:PUBLIC_KEY_SIZE_bytes]
            member = members.get(key)
            if member is None or member.node != node:
                return []  # not the registration it said left (it moved between bootnodes)
            del members[key]
            self._count("received.leave")
            return [("leave", room_id, key + body[PUBLIC_KEY_SIZE_bytes:])]
        self._count("dropped.malformed")
        return []

    def expire_nodes(self, now: float) -> list[tuple[str, bytes, bytes]]:
        """Bootnodes silent for the node timeout are gone, with their members."""
        out: list[tuple[str, bytes, bytes]] = []
        for node, seen in list(self.nodes.items()):
            if now >= seen + self.node_timeout_s:
                out += self.node_gone(node)
        return out

    def node_gone(self, node: bytes) -> list[tuple[str, bytes, bytes]]:
        self.nodes.pop(node, None)
        out: list[tuple[str, bytes, bytes]] = []
        for room_id, members in self.remote.items():
            for key in [k for k, m in members.items() if m.node == node]:
                del members[key]
                out.append(("leave", room_id, key + bytes([TIMED_OUT])))
        if out:
            self._count("nodes_gone")
        return out

    def reconnected(self, local_entries: Callable[[bytes], list[bytes]]) -> None:
        """The bus is back: the others may have timed our members out, and theirs may
        have changed. Tell them ours again and ask for theirs, room by room."""
        for room_id in self.remote:
            self.outbox.append((room_subject(room_id), self._head(T_SYNC)))
            for entry in local_entries(room_id):
                self.joined(room_id, entry)
