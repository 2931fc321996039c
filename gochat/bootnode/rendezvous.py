"""The bootnode's rendezvous state machine (sans-I/O).

It owns the protocol decisions of the bootnode: address validation by cookie, proof
of possession of the registered key, registration limits, room announcements, proved
rebindings, disconnects and expiry. It takes ``(datagram, address, now)`` and timer
ticks and returns actions (datagrams to send); it never touches a socket or a clock.
Heartbeats from their registration's endpoint normally never reach it (the fast path
answers them) but it handles them too, so that it is complete on its own; heartbeats
from another source are its decision (a rebind challenge).

Actions must be carried out right after the call that returned them: a SendToRoom
is resolved against the room as the table holds it then. Joins are announced by
flush_announcements(), which a driver calls after each batch of datagrams.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from gochat.bootnode._purepath import TableFull  # shared by both fast paths
from gochat.bootnode.cluster import ClusterRooms
from gochat.bootnode.cookie import CookieJar
from gochat.bootnode.keys import BootnodeKey
from gochat.constants import (
    DEFAULT_MAX_PEERS_PER_SOURCE,
    DEFAULT_RELAY_BINDINGS_PER_IP,
    DEFAULT_RELAY_MAX_BINDINGS,
    MAX_RATE_LIMITED_SOURCES,
    STUN_BURST_PER_IP,
    STUN_RATE_PER_IP,
    DEFAULT_RELAY_BURST_bytes,
    DEFAULT_RELAY_RATE_bytes,
    DEFAULT_RELAY_TOTAL_RATE_bytes,
    WHEEL_TICK_ms,
)
from gochat.ratelimit import TokenBuckets
from gochat.turn import rest_credentials
from gochat.wire import control as wire
from gochat.wire import stun
from gochat.wire.constants import (
    FLAG_TURN_OFFERED,
    MAX_DATAGRAM_bytes,
    PUBLIC_KEY_SIZE_bytes,
    RELAY_NONCE_SIZE_bytes,
    ROOM_TAG_SIZE_bytes,
    TOKEN_SECRET_SIZE_bytes,
    TURN_NONCE_SIZE_bytes,
)
from gochat.wire.control import LeaveReason, MsgType, RefuseReason, RelayRefuseReason
from gochat.wire.endpoints import endpoint_key, key_endpoint

log = logging.getLogger("gochat.bootnode")

TICK_s = WHEEL_TICK_ms / 1000.0
BAD_PROOF_RETRY_s = 30.0  # a client whose proof fails has a bug or the wrong key: no hurry
SOURCE_FULL_RETRY_s = 5.0  # a place frees when one of the source's registrations leaves or expires


class Send(NamedTuple):
    """Send ``data`` to ``addr``."""

    data: bytes
    addr: tuple


class SendToRoom(NamedTuple):
    """Send ``data`` to every member of ``room_id`` except the registration in ``exclude_slot``."""

    room_id: bytes
    data: bytes
    exclude_slot: int = -1


Action = Send | SendToRoom


class Table(Protocol):
    """What the machine needs of a registration table; both fast paths' RegistrationTable
    provide it (gochat/bootnode/_fastpath.pyi, gochat/bootnode/_purepath.py)."""

    def __len__(self) -> int: ...
    @property
    def room_count(self) -> int: ...
    def add(self, room_id: bytes, room_tag: bytes, secret: bytes, card: bytes, addr: tuple, now: float) -> int: ...
    def remove(self, i: int) -> None: ...
    def token(self, i: int) -> bytes: ...
    def lookup(self, token: bytes) -> int: ...
    def touch(self, token: bytes, addr: tuple, now: float) -> int: ...
    def set_endpoint(self, i: int, addr: tuple) -> None: ...
    def expire(self, now: float) -> list[int]: ...
    def endpoint(self, i: int) -> tuple[str, int]: ...
    def card(self, i: int) -> bytes: ...
    def entry(self, i: int) -> bytes: ...
    def wire_endpoint(self, i: int) -> bytes: ...
    def room_of(self, i: int) -> bytes: ...
    def room_tag(self, room_id: bytes) -> bytes | None: ...
    def room_size(self, room_id: bytes) -> int: ...
    def room_digest(self, room_id: bytes) -> bytes: ...
    def room_members(self, room_id: bytes) -> list[int]: ...
    def count_source(self, room_id: bytes, address16: bytes) -> int: ...
    def find_in_room(self, room_id: bytes, public_key: bytes) -> int: ...
    def xor_room_digest(self, room_id: bytes, public_key: bytes) -> bool: ...
    def set_relay_limits(self, rate: int, burst: int, total_rate: int, total_burst: int) -> None: ...
    def bind_relay(self, i: int, nonce: bytes, now: float) -> None: ...
    def relay_id(self, i: int) -> bytes: ...
    def relay(self, token: bytes, to: bytes, addr: tuple, size: int, now: float) -> tuple[int, int, int, bool]: ...


@dataclass(frozen=True)
class TurnIssuer:
    """A TURN server to tell clients of, and the secret it shares with us (TURN REST API)."""

    url: str
    secret: str


@dataclass(frozen=True)
class Limits:
    max_peers: int
    max_peers_per_room: int
    register_rate_per_ip: float
    register_burst_per_ip: int
    max_peers_per_source: int = DEFAULT_MAX_PEERS_PER_SOURCE  # registrations per source IP in one room
    relay: bool = True  # serve relay bindings (RELAY)
    relay_rate: int = DEFAULT_RELAY_RATE_bytes  # bytes per second one binding may relay (RELAY_RATE)
    relay_burst: int = DEFAULT_RELAY_BURST_bytes  # ... and at once (RELAY_BURST)
    relay_total_rate: int = DEFAULT_RELAY_TOTAL_RATE_bytes  # all bindings together (RELAY_TOTAL_RATE)
    relay_bindings_per_ip: int = DEFAULT_RELAY_BINDINGS_PER_IP  # (RELAY_BINDINGS_PER_IP)
    relay_max_bindings: int = DEFAULT_RELAY_MAX_BINDINGS  # (RELAY_MAX_BINDINGS)


class Rendezvous:
    def __init__(
        self,
        table: Table,
        *,
        heartbeat_interval_s: float,
        peer_timeout_s: float,
        limits: Limits,
        cookies: CookieJar | None = None,
        key: BootnodeKey | None = None,
        random_bytes: Callable[[int], bytes] = os.urandom,
        turn: TurnIssuer | None = None,
        unix_time: Callable[[], float] = time.time,
        cluster: ClusterRooms | None = None,
    ) -> None:
        self.table = table
        # Other bootnodes' members of our rooms, through the cluster bus (--cluster).
        self.cluster = cluster
        # A coturn that shares our secret: clients that ask for a relay get credentials for it.
        self.turn = turn
        self._unix_time = unix_time
        self.heartbeat_interval_ms = int(heartbeat_interval_s * 1000)
        self.peer_timeout_ms = int(peer_timeout_s * 1000)
        self.limits = limits
        self.cookies = cookies or CookieJar()
        self.key = key or BootnodeKey.generate()
        self._random = random_bytes
        self._rate = TokenBuckets(limits.register_rate_per_ip, limits.register_burst_per_ip, MAX_RATE_LIMITED_SOURCES)
        self._stun_rate = TokenBuckets(STUN_RATE_PER_IP, STUN_BURST_PER_IP, MAX_RATE_LIMITED_SOURCES)
        # The bootnode's second port, which answers STUN alone (the driver sets it): the
        # main port's Binding responses name it in OTHER-ADDRESS, for NAT discovery.
        self.stun_other: tuple[str, int] | None = None
        self.stats: Counter = Counter()
        self.last_join_room_size = 0  # members that were announced the latest join
        self._pending_joins: dict[bytes, list[tuple]] = {}  # room id -> [(slot, token)] to announce
        # Relay bindings: slot -> the source IP it was made from, and bindings per IP.
        self._bindings: dict[int, bytes] = {}
        self._bindings_per_ip: Counter = Counter()
        table.set_relay_limits(limits.relay_rate, limits.relay_burst, limits.relay_total_rate, limits.relay_total_rate)

    # --- inputs ------------------------------------------------------------------------

    def receive_datagram(self, data: bytes, addr: tuple, now: float) -> list[Action]:
        if stun.is_stun(data):  # two zero bits and the magic cookie: not ours (0x47...)
            return self._on_stun(data, addr, now)
        try:
            if len(data) > 2 and data[2] == MsgType.REGISTER:
                return self._on_register(wire.decode_register(data), addr, now)
            msg = wire.decode(data)
        except wire.DecodeError as exc:
            self.stats[f"malformed.{exc.reason}"] += 1
            if log.isEnabledFor(logging.DEBUG):
                log.debug("dropped datagram from %s: %s", addr, exc)
            return []
        if isinstance(msg, wire.Relay):
            return self._on_relay(msg, len(data), addr, now)
        if isinstance(msg, wire.TokenMessage):
            if msg.type is MsgType.DISCONNECT:
                return self._on_disconnect(msg, addr)
            if msg.type is MsgType.HEARTBEAT:
                return self._on_heartbeat(msg, addr, now)
        self.stats[f"unexpected.{type(msg).__name__}"] += 1
        return []

    def receive_on_second_port(self, data: bytes, addr: tuple, now: float) -> list[Action]:
        """The second port answers STUN Binding requests (no OTHER-ADDRESS) and nothing else."""
        if not stun.is_stun(data):
            self.stats["stun.dropped"] += 1
            return []
        return self._on_stun(data, addr, now, second_port=True)

    def _on_stun(self, data: bytes, addr: tuple, now: float, second_port: bool = False) -> list[Action]:
        """A STUN Binding request (RFC 8489) gets the source's reflexive address (RFC 3489
        ones, without the magic cookie, are not STUN here: malformed.bad_magic). Its reply
        is larger than the smallest request (32 or 44 bytes for 20, 1.6x and 2.2x), so
        replies are limited per source IP (STUN_RATE_PER_IP, burst STUN_BURST_PER_IP)."""
        if not self._stun_rate.allow(addr[0], now)[0]:
            self.stats["stun.rate_limited"] += 1
            return []
        reply = stun.answer_binding(data, addr, None if second_port else self.stun_other)
        if reply is None:
            self.stats["stun.dropped"] += 1
            return []
        outcome = "second_port" if second_port else "error_420" if reply[:2] == b"\x01\x11" else "binding"
        self.stats[f"stun.{outcome}"] += 1
        return [Send(reply, addr)]

    def get_timer(self, now: float) -> float:
        """When handle_timer should run next: the next wheel tick."""
        t = (int(now / TICK_s) + 1) * TICK_s
        return t if t > now else t + TICK_s  # float rounding can land on ``now`` itself

    def handle_timer(self, now: float) -> list[Action]:
        return self.announce_expired(self.collect_expired(now))

    def collect_expired(self, now: float) -> list[int]:
        """Registrations silent for the peer timeout (the timing-wheel tick on its own, so a
        driver can measure it)."""
        return self.table.expire(now)

    def announce_expired(self, slots: Sequence[int]) -> list[Action]:
        if not slots:
            return []
        by_room: dict[bytes, list] = {}
        for i in slots:
            by_room.setdefault(self.table.room_of(i), []).append(i)
        actions = []
        for room_id, members in by_room.items():
            actions += self._announce_left(room_id, members, LeaveReason.TIMED_OUT, exclude=-1)
        for i in slots:
            self._remove(i, LeaveReason.TIMED_OUT)
        self.stats["expired"] += len(slots)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("expired %d registrations", len(slots))
        return actions

    # --- handlers ----------------------------------------------------------------------

    def _on_register(self, msg: wire.RegisterHead, addr: tuple, now: float) -> list[Action]:
        self.stats["register.received"] += 1
        if not self.cookies.verify(msg.cookie, addr, now):
            # Unvalidated address: answer with a cookie and our key, smaller than the request.
            self.stats["register.cookie_sent"] += 1
            cookie = wire.Cookie(msg.request_id, self.cookies.make(addr, now), self.key.public)
            return [Send(wire.encode(cookie), addr)]
        allowed, retry_after_s = self._rate.allow(addr[0], now)  # per source IP
        if not allowed:
            return self._refuse(msg, addr, RefuseReason.RATE_LIMITED, retry_after_s)
        # Proof of possession of the key (one X25519, after the rate limit): nobody can
        # register, and so replace or disconnect, someone else's key.
        if not self.key.check_proof(msg):
            return self._refuse(msg, addr, RefuseReason.BAD_PROOF, BAD_PROOF_RETRY_s)
        table = self.table
        source16, port = endpoint_key(addr)
        previous = table.find_in_room(msg.room_id, msg.public_key)
        previous_endpoint = table.endpoint(previous) if previous >= 0 else None
        duplicate = previous_endpoint == key_endpoint(source16, port) and table.card(previous) == msg.card
        if duplicate:
            # A retried register whose reply was lost: same key, endpoint and card. The
            # registration stands (same token); the reply and the peer list are sent again.
            slot = previous
            tag = table.room_tag(msg.room_id)
            assert tag is not None, "a room with a member has a tag"
            table.touch(table.token(slot), addr, now)
            self.stats["register.duplicate"] += 1
        else:
            # One source IP holds at most max_peers_per_source registrations in a room (or
            # one address could fill it with throwaway keys); the one this replaces, if it
            # came from the same IP, makes room for itself.
            held = table.count_source(msg.room_id, source16)
            if previous_endpoint is not None and endpoint_key(previous_endpoint)[0] == source16:
                held -= 1
            if held >= self.limits.max_peers_per_source:
                return self._refuse(msg, addr, RefuseReason.SOURCE_FULL, SOURCE_FULL_RETRY_s)
            if previous >= 0:
                # Same key in the same room from elsewhere, or with a new card: a restarted
                # or moved client. The new registration replaces the old; members see a join.
                self._remove(previous)
                self.stats["register.replaced"] += 1
            if table.room_size(msg.room_id) >= self.limits.max_peers_per_room:
                return self._refuse(msg, addr, RefuseReason.ROOM_FULL, 5.0)
            if len(table) >= self.limits.max_peers:
                return self._refuse(msg, addr, RefuseReason.SERVER_FULL, 30.0)
            tag = table.room_tag(msg.room_id) or self._random(ROOM_TAG_SIZE_bytes)
            try:
                slot = table.add(msg.room_id, tag, self._random(TOKEN_SECRET_SIZE_bytes), msg.card, addr, now)
            except TableFull:
                return self._refuse(msg, addr, RefuseReason.SERVER_FULL, 30.0)
            self.stats["register.accepted"] += 1
            self._cluster_joined(slot, msg.room_id)
        relay: tuple[int, bytes] = (0, b"")
        if msg.relay:
            unbound = slot not in self._bindings
            relay = self._bind(slot, source16, now)
            if self.turn is not None:  # TURN_CREDENTIALS follow: the client asks again if they do not come
                relay = (relay[0] | FLAG_TURN_OFFERED, relay[1])
            if duplicate and unbound and slot in self._bindings:  # the room must learn the binding
                self._pending_joins.setdefault(msg.room_id, []).append((slot, table.token(slot)))
        reply = wire.encode_registered(
            msg.request_id,
            table.token(slot),
            tag,
            self.heartbeat_interval_ms,
            self.peer_timeout_ms,
            table.wire_endpoint(slot),
            relay,
        )
        actions: list[Action] = [Send(reply, addr)]
        if msg.relay and self.turn is not None:
            actions.append(Send(self._turn_credentials(msg, table.token(slot)), addr))
        members = [i for i in table.room_members(msg.room_id) if i != slot]
        entries = [table.entry(i) for i in members]
        if self.cluster is not None:  # the room's members at other bootnodes too
            entries += self.cluster.entries(msg.room_id)
        batches = wire.pack_entries(entries, wire.PEER_LIST_OVERHEAD_bytes) or [[]]
        for part, batch in enumerate(batches):
            actions.append(Send(wire.encode_peer_list(tag, part, len(batches), batch), addr))
        if members and not duplicate:  # announced by flush_announcements(), coalesced
            self._pending_joins.setdefault(msg.room_id, []).append((slot, table.token(slot)))
        if log.isEnabledFor(logging.DEBUG):
            log.debug("registered %s from %s in a room of %d", msg.public_key.hex()[:16], addr, len(members) + 1)
        return actions

    # --- relay ---------------------------------------------------------------------------

    def _bind(self, slot: int, source16: bytes, now: float) -> tuple[int, bytes]:
        """A relay binding for a registration that asked for one (a retried REGISTER
        keeps the one it has): REGISTERED's flags and trailer, a grant or a refusal."""
        limits = self.limits
        if slot not in self._bindings:
            refusal = None
            if not limits.relay:
                refusal = RelayRefuseReason.DISABLED
            elif self._bindings_per_ip[source16] >= limits.relay_bindings_per_ip:
                refusal = RelayRefuseReason.SOURCE_FULL
            elif len(self._bindings) >= limits.relay_max_bindings:
                refusal = RelayRefuseReason.FULL
            if refusal is not None:
                self.stats[f"relay.bind_refused.{refusal.name.lower()}"] += 1
                return wire.relay_refusal(refusal)
            nonce = bytes(RELAY_NONCE_SIZE_bytes)
            while nonce == bytes(RELAY_NONCE_SIZE_bytes):
                nonce = self._random(RELAY_NONCE_SIZE_bytes)
            self.table.bind_relay(slot, nonce, now)
            self._bindings[slot] = source16
            self._bindings_per_ip[source16] += 1
            self.stats["relay.bound"] += 1
        return wire.relay_grant(self.table.relay_id(slot), limits.relay_rate, limits.relay_burst)

    def _turn_credentials(self, msg: wire.RegisterHead, token: bytes) -> bytes:
        """Time-limited credentials for our TURN server, sealed for the registered client
        alone (its REGISTER's proof key): they go over plain UDP."""
        assert self.turn is not None
        proof_key = self.key.proof_key(msg.public_key)
        assert proof_key is not None  # the proof checked, so the key exchange worked
        username, password = rest_credentials(self.turn.secret, msg.public_key[:8].hex(), self._unix_time())
        expires = int(username.split(":", 1)[0])
        grant = wire.TurnGrant(expires, self.turn.url, username, password)
        self.stats["turn.credentials_sent"] += 1
        key = wire.turn_credentials_key(proof_key)
        return wire.seal_turn_credentials(key, token, grant, self._random(TURN_NONCE_SIZE_bytes))

    @property
    def relay_bindings(self) -> int:
        return len(self._bindings)

    def _remove(self, slot: int, reason: LeaveReason | None = None) -> None:
        """Every registration leaves through here: its binding goes with it, and the
        cluster hears of the leave (not of a replacement: the new one's join follows)."""
        source16 = self._bindings.pop(slot, None)
        if source16 is not None:
            self._bindings_per_ip[source16] -= 1
            if self._bindings_per_ip[source16] <= 0:
                del self._bindings_per_ip[source16]
        if self.cluster is None:  # (expiry removes many at a time: nothing more to do alone)
            self.table.remove(slot)
            return
        room_id = self.table.room_of(slot)
        key = self.table.card(slot)[:PUBLIC_KEY_SIZE_bytes]
        self.table.remove(slot)
        if reason is not None:
            self.cluster.left(room_id, key, int(reason))
        if self.table.room_size(room_id) == 0:
            self.cluster.room_closed(room_id)

    # --- the cluster ---------------------------------------------------------------------

    def _cluster_joined(self, slot: int, room_id: bytes) -> None:
        """A member of ours joined (or moved): the other bootnodes of the room hear of it.
        If it was theirs until now (it failed over to us), it is ours from now on."""
        cluster = self.cluster
        if cluster is None:
            return
        key = self.table.card(slot)[:PUBLIC_KEY_SIZE_bytes]
        if self.table.room_size(room_id) == 1:
            cluster.room_opened(room_id)
        if cluster.is_remote(room_id, key):
            del cluster.remote[room_id][key]
            self.table.xor_room_digest(room_id, key)  # it is in the table's own digest now
        cluster.joined(room_id, self._bus_entry(slot))

    def _bus_entry(self, slot: int) -> bytes:
        """A member's entry for the other bootnodes: without its relay binding, which is
        only good here."""
        return wire.entry_from_card(self.table.card(slot), self.table.endpoint(slot))

    def local_entries(self, room_id: bytes) -> list[bytes]:
        """Our members of a room, as the other bootnodes get them."""
        return [self._bus_entry(i) for i in self.table.room_members(room_id)]

    def _is_local(self, room_id: bytes, public_key: bytes) -> bool:
        return self.table.find_in_room(room_id, public_key) >= 0

    def receive_bus(self, subject: str, data: bytes, now: float) -> list[Action]:
        """A message of the cluster bus: other bootnodes' members of our rooms."""
        if self.cluster is None:
            return []
        changes = self.cluster.receive(subject, data, now, self.local_entries, self._is_local)
        return self._apply_remote(changes)

    def expire_nodes(self, now: float) -> list[Action]:
        """Bootnodes of the cluster silent for the peer timeout: their members leave."""
        if self.cluster is None:
            return []
        return self._apply_remote(self.cluster.expire_nodes(now))

    def _apply_remote(self, changes: Sequence[tuple[str, bytes, bytes]]) -> list[Action]:
        actions: list[Action] = []
        for kind, room_id, data in changes:
            tag = self.table.room_tag(room_id)
            if tag is None:
                continue
            if kind == "leave":
                key, reason = data[:PUBLIC_KEY_SIZE_bytes], LeaveReason(data[PUBLIC_KEY_SIZE_bytes])
                self.table.xor_room_digest(room_id, key)
                actions.append(SendToRoom(room_id, wire.encode_peer_left(tag, [(key, reason)])))
                self.stats["cluster.remote_left"] += 1
            else:
                if kind == "join":
                    self.table.xor_room_digest(room_id, data[:PUBLIC_KEY_SIZE_bytes])
                actions.append(SendToRoom(room_id, wire.encode_peer_joined(tag, [data])))
                self.stats["cluster.remote_joined"] += 1
        return actions

    def _on_relay(self, msg: wire.Relay, size: int, addr: tuple, now: float) -> list[Action]:
        """A RELAY that reached the machine (the fast path forwards them itself; the
        decision is the table's in both cases, so that they cannot differ)."""
        table = self.table
        code, src, value, tell = table.relay(msg.token, msg.to, addr, size, now)
        if code == 0:
            self.stats["relay.forwarded"] += 1
            relayed = wire.encode_relayed(table.relay_id(src), msg.payload)
            return [Send(relayed, table.endpoint(value))]
        if code == -1:
            self.stats["relay.unknown_token"] += 1
            return [Send(wire.encode(wire.TokenMessage(MsgType.UNKNOWN_TOKEN, msg.token)), addr)]
        if code == -2:
            self.stats["relay.wrong_source"] += 1
            return []
        self.stats[f"relay.refused.{RelayRefuseReason(code).name.lower()}"] += 1
        if not tell:
            return []
        return [Send(wire.encode_relay_refused(code, value, msg.to), addr)]

    def flush_announcements(self) -> list[Action]:
        """Announce the joins registered since the last flush, one PEER_JOINED (or a few,
        within the datagram limit) per room instead of one per join. A driver calls it
        after each receive batch, so a registration storm (say, every client of a
        restarted bootnode) costs a datagram per member per batch, not per newcomer.

        Every member receives all the batch's newcomers, themselves included (clients
        skip their own key and treat entries as insert-or-update), except the latest
        newcomer, whose PEER_LIST already held everyone else."""
        if not self._pending_joins:
            return []
        table = self.table
        actions: list[Action] = []
        for room_id, joined in self._pending_joins.items():
            alive = [slot for slot, token in joined if table.lookup(token) == slot]
            tag = table.room_tag(room_id)
            if not alive or tag is None:  # (a room with a live member always has its tag)
                continue
            self.last_join_room_size = table.room_size(room_id) - 1
            for batch in wire.pack_entries([table.entry(s) for s in alive], wire.PEER_JOINED_OVERHEAD_bytes):
                actions.append(SendToRoom(room_id, wire.encode_peer_joined(tag, batch), exclude_slot=alive[-1]))
        self._pending_joins.clear()
        return actions

    def _refuse(self, msg: wire.RegisterHead, addr: tuple, reason: RefuseReason, retry_after_s: float) -> list[Action]:
        self.stats[f"refused.{reason.name.lower()}"] += 1
        retry_ms = max(1, int(retry_after_s * 1000))
        return [Send(wire.encode(wire.Refused(msg.request_id, reason, retry_ms)), addr)]

    def _on_heartbeat(self, msg: wire.TokenMessage, addr: tuple, now: float) -> list[Action]:
        """A heartbeat refreshes its registration from any source, but moves its endpoint
        only to a source that proved it receives there: the heartbeat from a new source
        gets a REBIND_CHALLENGE (no larger than the heartbeat), and only a HEARTBEAT with
        FLAG_REBIND echoing it from that source moves the endpoint. So tokens, even
        stolen ones, cannot point the room's announcements at a victim."""
        table = self.table
        status = table.touch(msg.token, addr, now)
        if status == 0:
            self.stats["heartbeat.unknown"] += 1
            return [Send(wire.encode(wire.TokenMessage(MsgType.UNKNOWN_TOKEN, msg.token)), addr)]
        self.stats["heartbeat.slow_path"] += 1
        if status == 2:
            answered = bool(msg.flags & wire.FLAG_REBIND)
            if not (answered and self.cookies.verify_challenge(msg.challenge, msg.token, addr, now)):
                if answered:
                    self.stats["rebind_refused"] += 1  # forged, stale, or for another token or address
                self.stats["rebind_challenges"] += 1
                challenge = wire.RebindChallenge(self.cookies.challenge(msg.token, addr, now))
                return [Send(wire.encode(challenge), addr)]
            # A proved move is announced to the room (as a join: members update the
            # entry), else a peer behind a filtering NAT never learns where to punch the
            # member's new mapping. Behind the same per-IP limit as registrations, since
            # each one fans out to the room.
            allowed, _ = self._rate.allow(addr[0], now)
            if not allowed:
                self.stats["rebind_rate_limited"] += 1
                return []
            slot = table.lookup(msg.token)
            table.set_endpoint(slot, addr)
            self.stats["rebinds"] += 1
            self._pending_joins.setdefault(table.room_of(slot), []).append((slot, msg.token))
            self._cluster_joined(slot, table.room_of(slot))
            if log.isEnabledFor(logging.DEBUG):
                log.debug("registration %s moved to %s", msg.token[:4].hex(), addr)
        if msg.flags & wire.FLAG_ACK_REQUESTED:
            digest = table.room_digest(table.room_of(table.lookup(msg.token)))
            return [Send(wire.encode(wire.TokenMessage(MsgType.HEARTBEAT_ACK, msg.token, digest=digest)), addr)]
        return []

    def _on_disconnect(self, msg: wire.TokenMessage, addr: tuple) -> list[Action]:
        actions: list[Action] = []
        slot = self.table.lookup(msg.token)
        if slot >= 0:
            room_id = self.table.room_of(slot)
            actions = self._announce_left(room_id, [slot], LeaveReason.DISCONNECTED, exclude=slot)
            self._remove(slot, LeaveReason.DISCONNECTED)
            self.stats["disconnected"] += 1
        else:
            self.stats["disconnect.unknown"] += 1
        # Acknowledged either way (a retransmitted disconnect finds the registration gone);
        # the ack is exactly as large as the request.
        actions.append(Send(wire.encode(wire.TokenMessage(MsgType.DISCONNECT_ACK, msg.token)), addr))
        return actions

    def _announce_left(self, room_id: bytes, slots: Sequence[int], reason: LeaveReason, exclude: int) -> list[Action]:
        tag = self.table.room_tag(room_id)
        if tag is None or self.table.room_size(room_id) <= len(slots):
            return []  # nobody left to tell
        left = [(self.table.card(i)[:PUBLIC_KEY_SIZE_bytes], reason) for i in slots]
        per = (MAX_DATAGRAM_bytes - wire.PEER_LEFT_OVERHEAD_bytes) // wire.PEER_LEFT_ITEM_bytes
        return [
            SendToRoom(room_id, wire.encode_peer_left(tag, left[k : k + per]), exclude_slot=exclude)
            for k in range(0, len(left), per)
        ]
