"""The client's state machine for one room (sans-I/O): bootnode link plus peers.

It routes every datagram: bootnode messages (only from the bootnode's address) to the
BootnodeLink, data-plane packets to the Peer they belong to (punches by sender key,
handshake responses and transport packets by our receiver index, initiations by the
static key the Noise message authenticates). It turns the bootnode's announcements
into Peers, sends group messages to every peer that can still get them, and leaves
gracefully. Drivers feed it ``receive_datagram``/``handle_timer`` with the time and
drain ``outbox`` (datagram, endpoint) and ``events`` (gochat.events values).
"""

from __future__ import annotations

import heapq
import itertools
import os
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence

from gochat import events as ev
from gochat.client.bootnode_link import FAILED, REGISTERED, BootnodeLink, room_id_for
from gochat.client.nat_discovery import NatDiscovery
from gochat.client.peer import CONNECTED, GONE, UNREACHABLE, Peer
from gochat.client.peer import FAILED as PEER_FAILED
from gochat.client.punching import punchable
from gochat.client.reliable import check_length
from gochat.constants import (
    HANDSHAKE_INIT_BURST_PER_IP,
    HANDSHAKE_INIT_PATH_BURST,
    HANDSHAKE_INIT_PATH_RATE,
    HANDSHAKE_INIT_RATE_PER_IP,
    HANDSHAKE_INIT_SOURCES,
    MAX_PEERS_PER_CLIENT,
    DEFAULT_REGISTER_TIMEOUT_s,
    PEER_KEEPALIVE_MAX_s,
)
from gochat.crypto.identity import fingerprint
from gochat.crypto.noise import HandshakeState, NoiseError, dh, public_key
from gochat.ratelimit import TokenBuckets
from gochat.wire import control as wire
from gochat.wire import data as pw
from gochat.wire import stun
from gochat.wire.constants import MAX_DATAGRAM_bytes, RELAY_OVERHEAD_bytes
from gochat.wire.control import DecodeError, Endpoint, LeaveReason, RelayRefuseReason
from gochat.wire.endpoints import (
    canonical_endpoint,
    format_endpoint,
    is_bootnode_relay,
    relay_endpoint,
    relay_id_of,
    turn_endpoint,
)

# Announcements that arrive before our REGISTERED (UDP reorders the reply and the peer
# list) are kept, this many at most, and read once the room tag is known.
MAX_EARLY_ANNOUNCEMENTS = 16
# Give-ups of one message are gathered for this long before they are reported, so that
# peers that fail within moments of each other (a batch of fakes reaching their punch
# deadline) make one report naming them all.
UNDELIVERED_GATHER_s = 2.0
# A HEARTBEAT_ACK whose membership digest differs from ours this many times in a row
# makes us ask for the member list again (once may be an announcement on its way).
ROSTER_MISSES_BEFORE_RESYNC = 2
MAX_ROSTER = 1 << 16  # keys of the bootnode's view kept at most (a lying bootnode cannot fill memory)
NAT_INDEPENDENT_MESSAGE = "your NAT keeps one public port for every destination: direct connections likely"
NAT_DEPENDENT_MESSAGE = (
    "your NAT gives each destination a public port of its own (a symmetric NAT): it needs the "
    "bootnode's relay for peers behind port-restricted or symmetric NATs"
)
NAT_DEPENDENT_NO_RELAY_MESSAGE = (
    "your NAT gives each destination a public port of its own (a symmetric NAT): peers behind "
    "port-restricted or symmetric NATs cannot reach you directly, and there is no relay"
)
# The relay candidate joins a series of punch rounds this long after it starts (at once
# when our NAT maps per destination): direct paths, when they exist, are found first.
RELAY_AFTER_s = 2.0
# ... and this long when our NAT maps per destination: such a pair needs the relay unless
# the peer's NAT is a full or restricted cone, whose direct path the first rounds find
# well within a second (a pair that can punch must stay direct).
RELAY_AFTER_SYMMETRIC_s = 1.0
# A peer found unreachable makes the room ask for the member list again (at most this
# often): a lost announcement of its new card would otherwise never be repaired.
UNREACHABLE_RESYNC_s = 10.0
# Introductions refused while the peer table was full, kept to retry when room frees.
MAX_WAITING_INTRODUCTIONS = 1024


def prologue_for(room_id: bytes) -> bytes:
    """Bound into every handshake: a session belongs to one room."""
    return b"gochat peer v1\0" + room_id


class RoomClient:
    """The client's machine for one room: the bootnode link and a Peer per member."""

    def __init__(
        self,
        *,
        static_private: bytes,
        name: str,
        room: str,
        psk: bytes,
        bootnode: Endpoint,
        now: float,
        local_endpoints: Sequence[Endpoint] = (),
        peer_timeout: float = 15.0,
        register_timeout: float = DEFAULT_REGISTER_TIMEOUT_s,
        random_bytes: Callable[[int], bytes] = os.urandom,
        bootnode_alternatives: Sequence[Endpoint] = (),
        relay: bool = True,
    ) -> None:
        self.static_private = static_private
        self.public_key = public_key(static_private)
        self.fingerprint = fingerprint(self.public_key)
        self.name = name
        self.room = room
        self.room_id = room_id_for(room)
        self.psk = psk
        self.prologue = prologue_for(self.room_id)
        self.random_bytes = random_bytes
        self.incarnation = int.from_bytes(random_bytes(8), "big")
        # Five keepalives per silence timeout: losing them all (and so the peer) takes 5
        # losses in a row, not 2 (20% loss: 1 in 3,000 windows instead of 1 in 25).
        self.keepalive_s = min(PEER_KEEPALIVE_MAX_s, peer_timeout / 5)
        self.silence_s = peer_timeout
        self.counters: Counter = Counter()
        self.outbox: list[tuple[bytes, Endpoint]] = []
        self.events: list[ev.Event] = []
        self.peers: dict[bytes, Peer] = {}
        # Each peer's next deadline, and a heap of them (stale entries are skipped), so
        # that finding the next timer does not visit every peer after every event.
        self._deadlines: dict[bytes, float] = {}
        self._heap: list[tuple[float, int, bytes]] = []
        self._heap_order = itertools.count()
        self._early: list[wire.PeerList | wire.PeerJoined | wire.PeerLeft] = []
        self._roster: set[bytes] = set()  # the members' keys as the bootnode announced them
        self._entries: dict[bytes, wire.PeerEntry] = {}  # each peer's latest announcement
        self.turn: Endpoint | None = None  # our TURN relayed address, once allocated
        self._nat: NatDiscovery | None = None  # started at the first registration
        self._nat_told = False
        self._list_parts: dict[int, list[bytes]] = {}  # a PEER_LIST being received, by part
        self._digest_misses = 0
        self._last_unreachable_resync: float | None = None
        self._waiting: OrderedDict[bytes, wire.PeerEntry] = OrderedDict()  # refused while full
        self._unannounced: set[bytes] = set()  # introduced by a punch, not yet named by a handshake
        self._unannounced_fingerprints: set[str] = set()
        # (message ref, reason) -> (text, peers, when the first was seen), reported together
        self._give_ups: dict[tuple[object, str], tuple[str, list[Peer], float]] = {}
        self._now = now
        self._message_refs = itertools.count()
        self._indexes: dict[int, Peer] = {}
        self._secrets: dict[bytes, bytes] = {}
        self._path_initiations = TokenBuckets(  # per connected peer, from its own path
            HANDSHAKE_INIT_PATH_RATE, HANDSHAKE_INIT_PATH_BURST, MAX_PEERS_PER_CLIENT
        )
        self._initiations = TokenBuckets(
            HANDSHAKE_INIT_RATE_PER_IP, HANDSHAKE_INIT_BURST_PER_IP, HANDSHAKE_INIT_SOURCES
        )
        bootnode = canonical_endpoint(bootnode)
        self.local_endpoints = list(local_endpoints)
        card = wire.encode_card(self.public_key, name, self.local_endpoints)
        self.link = BootnodeLink(
            bootnode,
            room,
            card,
            now,
            random_bytes,
            static_private=static_private,
            give_up_s=register_timeout,
            alternatives=[canonical_endpoint(a) for a in bootnode_alternatives],
            relay=relay,
        )
        self.quitting = False
        self._failure: str | None = None
        self._drain_link(now)

    # --- PeerContext ----------------------------------------------------------------

    def send(self, data: bytes, endpoint: Endpoint) -> None:
        if is_bootnode_relay(endpoint):  # through our binding at the bootnode
            token, own = self.link.token, self.link.relay_id
            if token is None or own is None or not 0 < len(data) <= MAX_DATAGRAM_bytes - RELAY_OVERHEAD_bytes:
                self.counters["relay_unavailable"] += 1
                return
            self.counters["relay_sent"] += 1
            self.outbox.append((wire.encode_relay(token, relay_id_of(endpoint), data), self.bootnode))
            return
        self.outbox.append((data, endpoint))

    @property
    def relay_delay_s(self) -> float:
        """When the relay candidate joins a series of punch rounds (PeerContext)."""
        symmetric = self._nat is not None and self._nat.independent is False
        return RELAY_AFTER_SYMMETRIC_s if symmetric else RELAY_AFTER_s

    @property
    def relay_available(self) -> bool:
        return self.link.relay_id is not None or self.turn is not None

    def event(self, event: ev.Event) -> None:
        if getattr(event, "fingerprint", None) in self._unannounced_fingerprints:
            return  # a peer introduced by its punch is not shown before its handshake names it
        self.events.append(event)

    def undelivered(self, peer: Peer, ref: object, text: str, reason: str) -> None:
        """Gathered for UNDELIVERED_GATHER_s, then reported once per message and reason
        naming all its peers: 255 peers that never answered make one line per message,
        not 255."""
        if peer.key in self._unannounced:
            return
        self._give_ups.setdefault((ref, reason), (text, [], self._now))[1].append(peer)

    def _report_undelivered(self, now: float, everything: bool = False) -> None:
        due = [k for k, (_, _, first) in self._give_ups.items() if everything or now >= first + UNDELIVERED_GATHER_s]
        for key in due:
            text, peers, _ = self._give_ups.pop(key)
            names = tuple(p.name for p in peers)
            self.events.append(ev.Undelivered(names, tuple(p.fingerprint for p in peers), text, key[1]))

    def name_authenticated(self, peer: Peer, announced: str, authenticated: str) -> None:
        if peer.key in self._unannounced:  # introduced by its punch: it joins now, by its proved name
            self._unannounced.discard(peer.key)
            self._unannounced_fingerprints.discard(peer.fingerprint)
            self.event(ev.PeerJoined(authenticated, peer.fingerprint, peer.key.hex()))
        else:
            self.event(ev.PeerNamed(authenticated, peer.fingerprint, peer.key.hex(), announced))

    def peer_unreachable(self, peer: Peer, now: float) -> None:
        """No path to a peer: its announced card may be out of date (the digest covers
        keys, not cards: a lost PEER_JOINED with a peer's new TURN address, name or
        endpoint leaves it unchanged). Ask for the room's list again, at most once per
        UNREACHABLE_RESYNC_s; the peer's retry (PEER_RETRY_s later) uses what it says."""
        if self._last_unreachable_resync is None or now >= self._last_unreachable_resync + UNREACHABLE_RESYNC_s:
            self._last_unreachable_resync = now
            self.counters["roster_resync_unreachable"] += 1
            self.link.resync(now)

    def new_index(self, peer: Peer) -> int:
        while True:
            index = int.from_bytes(self.random_bytes(4), "big")
            if index not in self._indexes:
                self._indexes[index] = peer
                return index

    def release_index(self, index: int) -> None:
        self._indexes.pop(index, None)

    def shared_secret(self, remote_key: bytes) -> bytes:
        secret = self._secrets.get(remote_key)
        if secret is None:
            secret = self._secrets[remote_key] = dh(self.static_private, remote_key)
        return secret

    # --- inputs ---------------------------------------------------------------------

    @property
    def bootnode(self) -> Endpoint:
        """The bootnode's address (the one registration is trying, then the one that answered)."""
        return self.link.bootnode

    def receive_datagram(self, data: bytes, addr: tuple, now: float) -> None:
        """One datagram from the socket. Never raises for bad input: it is counted."""
        self._now = now
        try:
            source = canonical_endpoint(addr)
        except (OSError, ValueError):
            self.counters["bad_source"] += 1
            return
        try:
            if self._nat is not None and stun.is_stun(data) and self._nat.on_datagram(data, source, now):
                pass  # an answer of NAT discovery (drained below)
            elif pw.is_peer_datagram(data):
                self._peer_datagram(pw.decode(data), source, now)
            elif source == self.bootnode:
                msg = wire.decode(data)
                if isinstance(msg, wire.Relayed):
                    self._relayed(msg, now)
                elif isinstance(msg, wire.RelayRefused):
                    self._relay_refused(msg, now)
                else:
                    self._bootnode_message(msg, now)
            else:
                self.counters["not_from_bootnode"] += 1
        except DecodeError as exc:
            self.counters[exc.reason] += 1
        self._drain_link(now)

    def _relayed(self, msg: wire.Relayed, now: float) -> None:
        """A peer's datagram through the bootnode's relay: it is handled as if it came
        from the peer's binding (a pseudo-endpoint), and proves what it proves directly
        (every payload is authenticated by the peers' keys, none by the bootnode)."""
        self.counters["relay_received"] += 1
        if not pw.is_peer_datagram(msg.payload):
            self.counters["relayed_not_peer"] += 1
            return
        self._peer_datagram(pw.decode(msg.payload), relay_endpoint(msg.sender), now)

    def _relay_refused(self, msg: wire.RelayRefused, now: float) -> None:
        """The relay did not forward a datagram. A binding that is gone (its member left
        or registered again) ends the path through it at once; the rest is retried by
        reliable delivery."""
        self.counters[f"relay_refused_{msg.reason.name.lower()}"] += 1
        if msg.reason is RelayRefuseReason.NO_SUCH_PEER:
            gone = relay_endpoint(msg.relay_id)
            for peer in list(self.peers.values()):
                if peer.path == gone:
                    peer.path_lost(now)
                    self._after_peer_input(peer, now)

    def _bootnode_message(self, msg: wire.Message, now: float) -> None:
        if isinstance(msg, (wire.PeerList, wire.PeerJoined, wire.PeerLeft)):
            self._announcement(msg, now)
        elif not self.link.receive(msg, now):
            self.counters["unexpected"] += 1
        elif isinstance(msg, wire.TokenMessage) and msg.type is wire.MsgType.HEARTBEAT_ACK:
            self._check_roster(msg.digest, now)

    # --- the bootnode's view of the room ------------------------------------------

    def _check_roster(self, digest: bytes, now: float) -> None:
        """UDP lost an announcement if the digest differs twice in a row (once may be an
        announcement still on its way): ask for the list again."""
        # what the bootnode's digest is if we heard every announcement (ours included)
        if digest == wire.room_digest([self.public_key, *self._roster]):
            self._digest_misses = 0
            return
        self._digest_misses += 1
        if self._digest_misses >= ROSTER_MISSES_BEFORE_RESYNC:
            self._digest_misses = 0
            self.counters["roster_resync"] += 1
            self.link.resync(now)
        else:  # ask again in a second rather than a heartbeat interval
            self.link.heartbeat_soon(now)

    def _list_part(self, msg: wire.PeerList, now: float) -> None:
        """A whole PEER_LIST is the bootnode's view: members we knew that are not in it
        are gone as far as the bootnode knows (its PEER_LEFT was lost)."""
        self._list_parts[msg.part] = [e.public_key for e in msg.peers]
        if len(self._list_parts) < msg.parts:
            return
        listed = {key for keys in self._list_parts.values() for key in keys}
        self._list_parts = {}
        for key in self._roster - listed:
            self._announced_left(key, "timed_out", now)
        self._roster = set(itertools.islice(listed - {self.public_key}, MAX_ROSTER))

    def _announcement(self, msg: wire.PeerList | wire.PeerJoined | wire.PeerLeft, now: float) -> None:
        if self.link.room_tag is None:
            # Before our REGISTERED: keep it (bounded) until the room tag can be checked.
            if len(self._early) < MAX_EARLY_ANNOUNCEMENTS:
                self._early.append(msg)
            else:
                self.counters["early_announcement_dropped"] += 1
            return
        if msg.room_tag != self.link.room_tag:
            self.counters["bad_room_tag"] += 1
            return
        self.link.last_answer = now
        if isinstance(msg, wire.PeerLeft):
            for key, reason in msg.left:
                self._roster.discard(key)
                self._announced_left(key, LeaveReason(reason).name.lower(), now)
        else:
            for entry in msg.peers:
                if entry.public_key != self.public_key and len(self._roster) < MAX_ROSTER:
                    self._roster.add(entry.public_key)
                self._introduce(entry, now, listed=isinstance(msg, wire.PeerList))
            if isinstance(msg, wire.PeerList):
                self._list_part(msg, now)

    def _announced_left(self, key: bytes, reason: str, now: float) -> None:
        """The bootnode's word alone does not end a live, authenticated session: a peer
        whose authenticated packets still arrive stays (its bootnode link may be what
        failed); if it is really gone, its silence ends it (or its bye)."""
        self._waiting.pop(key, None)
        peer = self.peers.get(key)
        if peer is None:
            return
        if peer.state is CONNECTED and now < peer.last_received + self.silence_s:
            self.counters["peer_left_but_alive"] += 1
            return
        peer.leave(reason)
        self._forget(peer, now)

    def _introduce(
        self,
        entry: wire.PeerEntry,
        now: float,
        announce: bool = True,
        punched_from: Endpoint | None = None,
        listed: bool = False,
    ) -> None:
        """A member the bootnode told us of (or whose punch from ``punched_from`` did)."""
        if entry.public_key == self.public_key:
            return  # a coalesced PEER_JOINED may list ourselves
        self._entries[entry.public_key] = entry
        endpoints = self._candidates(entry)
        if punched_from is not None:
            endpoints = [*endpoints, punched_from]
        peer = self.peers.get(entry.public_key)
        if peer is not None:
            if peer.key in self._unannounced:  # the announcement came after all: show it as told
                self._unannounced.discard(peer.key)
                self._unannounced_fingerprints.discard(peer.fingerprint)
                self.event(ev.PeerJoined(entry.name, peer.fingerprint, peer.key.hex()))
            peer.reintroduced(entry.name, endpoints, now, listed)
            self._schedule(peer)
            return
        if len(self.peers) >= MAX_PEERS_PER_CLIENT and not self._evict_one_unanswered():
            self.counters["too_many_peers"] += 1
            self._waiting[entry.public_key] = entry  # retried when room frees
            self._waiting.move_to_end(entry.public_key)
            while len(self._waiting) > MAX_WAITING_INTRODUCTIONS:
                self._waiting.popitem(last=False)
            return
        self._waiting.pop(entry.public_key, None)
        try:
            peer = Peer(self, entry.public_key, entry.name, endpoints, now)
        except NoiseError:  # a key that is not a usable X25519 point
            self.counters["bad_peer_key"] += 1
            return
        self.peers[entry.public_key] = peer
        if announce:
            self.event(ev.PeerJoined(peer.name, peer.fingerprint, peer.key.hex()))
        else:
            self._unannounced.add(peer.key)
            self._unannounced_fingerprints.add(peer.fingerprint)
        peer.handle_timer(now)  # the first punch round goes out at once
        self._schedule(peer)

    def _candidates(self, entry: wire.PeerEntry) -> list[Endpoint]:
        """Where to look for a member: its announced endpoints (filtered, punchable()),
        its TURN relayed address through our own allocation when both are on the same
        TURN server (we send nothing to an address of the member's choosing but through
        that server, which relays only to addresses we gave it permission for), else its
        binding at the bootnode's relay."""
        endpoints = punchable(entry.endpoints, self.link.public_endpoint)
        if entry.turn is not None and self.turn is not None and entry.turn[0] == self.turn[0]:
            endpoints.append(turn_endpoint(entry.turn))  # TURN, where both have it, instead of the bootnode
        elif entry.relay:
            endpoints.append(relay_endpoint(entry.relay))
        return endpoints

    def set_turn(self, relayed: Endpoint, now: float) -> None:
        """Our TURN allocation is up at ``relayed``: announce it with our card (a new
        registration, seen by the room as a join) and look for members on the same TURN
        server through it."""
        self.turn = canonical_endpoint(relayed)
        self.events.append(
            ev.Notice(f"relaying through TURN when needed (our relayed address {format_endpoint(relayed)})")
        )
        self.link.rename(wire.encode_card(self.public_key, self.name, self.local_endpoints, self.turn), now, quiet=True)
        for key, peer in self.peers.items():
            entry = self._entries.get(key)
            if entry is not None:
                peer.reintroduced(entry.name, self._candidates(entry), now)
                self._schedule(peer)
        self._drain_link(now)

    def receive_via_turn(self, data: bytes, addr: tuple, now: float) -> None:
        """A datagram our TURN server relayed from ``addr`` (a peer's relayed address)."""
        self._now = now
        try:
            source = turn_endpoint(canonical_endpoint(addr))
            if not pw.is_peer_datagram(data):
                self.counters["turn_not_peer"] += 1
            else:
                self._peer_datagram(pw.decode(data), source, now)
        except (OSError, ValueError) as exc:  # DecodeError included
            self.counters[getattr(exc, "reason", "bad_source")] += 1
        self._drain_link(now)

    def _introduced_by_punch(self, punch: pw.Punch, source: Endpoint, now: float) -> Peer | None:
        """A valid punch from a key we were never told about: its announcement was lost
        (UDP), so the punch itself introduces the peer. Only the key's holder can make
        the MAC; the handshake that follows proves it is a member of this room (the PSK
        and the prologue bind the room) and gives its name. Rate-limited per source IP,
        like initiations, before the X25519 that checking the MAC costs."""
        if punch.reply or self.link.room_tag is None or punch.sender_key == self.public_key:
            self.counters["unknown_peer"] += 1
            return None
        if not self._initiations.allow(source[0], now)[0]:
            self.counters["punch_rate_limited"] += 1
            return None
        try:
            key = pw.punch_key(dh(self.static_private, punch.sender_key))  # not cached: a stranger
        except NoiseError:
            self.counters["bad_peer_key"] += 1
            return None
        if not pw.verify_punch(key, punch):
            self.counters["unknown_peer"] += 1
            return None
        announced = self._waiting.get(punch.sender_key)  # told of, but refused while full
        if announced is not None:
            entry = announced
        else:  # named "peer <fingerprint>" until its handshake names it
            entry = wire.PeerEntry(punch.sender_key, "peer " + fingerprint(punch.sender_key)[:9], ())
        self._introduce(entry, now, announce=announced is not None, punched_from=source)
        peer = self.peers.get(punch.sender_key)
        if peer is not None and announced is None:
            self.counters["introduced_by_punch"] += 1
        return peer

    def _initiation_allowed(self, source: Endpoint, now: float) -> bool:
        """Initiations cost X25519 work, so they are rate-limited per source IP. Those
        from a connected peer's own path (its rekeys, a restart behind the same mapping)
        have a small bucket of their own, so that a flood from the same IP (a shared NAT,
        another port) cannot starve the rekey of a live session."""
        for peer in self.peers.values():
            if peer.state is CONNECTED and peer.path == source:
                return self._path_initiations.allow(peer.key, now)[0]
        return self._initiations.allow(source[0], now)[0]

    def _evict_one_unanswered(self) -> bool:
        """Make room by dropping a peer that never answered (unreachable or failed, never
        connected): the oldest such one. Fake members that flood a room end up here."""
        for peer in self.peers.values():
            if peer.state in (UNREACHABLE, PEER_FAILED) and peer.current is None and peer.previous is None:
                self.counters["evicted_unanswered"] += 1
                peer.leave("evicted")
                self._forget(peer, None)
                return True
        return False

    def _forget(self, peer: Peer, now: float | None) -> None:
        self._entries.pop(peer.key, None)
        peer.release()
        self.peers.pop(peer.key, None)
        self._secrets.pop(peer.key, None)
        self._unannounced.discard(peer.key)
        self._unannounced_fingerprints.discard(peer.fingerprint)
        self._deadlines.pop(peer.key, None)
        if now is not None:
            self._admit_waiting(now)

    def _admit_waiting(self, now: float) -> None:
        """Introductions refused while the table was full get their turn as soon as a
        place is free or a peer that never answered can make one."""
        while self._waiting and (len(self.peers) < MAX_PEERS_PER_CLIENT or self._evict_one_unanswered()):
            _, entry = self._waiting.popitem(last=False)
            self._introduce(entry, now)

    def _peer_datagram(self, msg: pw.PeerMessage, source: Endpoint, now: float) -> None:
        if isinstance(msg, pw.Punch):
            peer = self.peers.get(msg.sender_key) or self._introduced_by_punch(msg, source, now)
            if peer is None:
                return
            peer.on_punch(msg, source, now)
        elif isinstance(msg, pw.HandshakeInit):
            if not self._initiation_allowed(source, now):  # before any X25519 work
                self.counters["handshake_rate_limited"] += 1
                return
            hs = HandshakeState(
                initiator=False, static_private=self.static_private, psk=self.psk, prologue=self.prologue
            )
            try:
                payload = hs.read_message(msg.noise)
            except NoiseError:
                self.counters["handshake_auth_failed"] += 1
                return
            peer = self.peers.get(hs.remote_static or b"")
            if peer is None:
                self.counters["unknown_peer"] += 1
                return
            peer.on_handshake_init(hs, msg, payload, source, now)
        else:
            index = msg.receiver_index
            peer = self._indexes.get(index)
            if peer is None:
                self.counters["unknown_index"] += 1
                return
            if isinstance(msg, pw.HandshakeResp):
                peer.on_handshake_resp(msg, source, now)
            else:
                peer.on_transport(msg, source, now)
        self._after_peer_input(peer, now)

    def _after_peer_input(self, peer: Peer, now: float) -> None:
        if peer.state is GONE:
            self._forget(peer, now)
        else:
            self._schedule(peer)

    # --- user actions ---------------------------------------------------------------

    def send_message(self, text: str, now: float, to: bytes | None = None) -> int:
        """Send ``text`` to every peer of the room that can still get it (or to the peer
        whose key is ``to`` alone, over its own session); returns how many. Messages to
        peers still connecting wait for the session (and may end undelivered). Raises
        MessageTooLong over 64 KiB."""
        check_length(text.encode("utf-8"))  # before anyone gets it, so all or nobody do
        recipients = [
            p
            for p in self.peers.values()
            if p.accepts_messages and p.key not in self._unannounced and (to is None or p.key == to)
        ]
        ref = next(self._message_refs)
        for peer in recipients:
            peer.send_message(text, now, ref)
            self._schedule(peer)
        return len(recipients)

    def rename(self, name: str, now: float) -> None:
        """/nick: our display name becomes ``name``. The bootnode announces it (a hint to
        the others); each session proves it in a new handshake: we start one towards the
        peers we initiate with and ask the others to (a punch from the session's path)."""
        self.name = name
        self.link.rename(wire.encode_card(self.public_key, name, self.local_endpoints, self.turn), now)
        for peer in self.peers.values():
            peer.renamed(now)
            self._schedule(peer)

    def peer_snapshot(self) -> list[ev.PeerStatus]:
        return [p.snapshot() for p in self.peers.values()]

    def quit(self, now: float) -> None:
        """Graceful leave: bye to every connected peer, disconnect from the bootnode."""
        if self.quitting:
            return
        self._now = now
        self.quitting = True
        self._report_undelivered(now, everything=True)
        for peer in self.peers.values():
            peer.bye(now)
        self.link.disconnect(now)
        self._drain_link(now)

    @property
    def finished(self) -> bool:
        """Quit completed (or the first registration failed for good)."""
        return self.link.closed and (self.quitting or self.link.state == FAILED)

    @property
    def failure(self) -> str | None:
        """Why the client cannot go on (the first registration failed), or None."""
        return self._failure

    # --- timers ---------------------------------------------------------------------

    def _schedule(self, peer: Peer) -> None:
        """Record the peer's next deadline (after anything that may have changed it)."""
        t = peer.get_timer()
        if t is None:
            self._deadlines.pop(peer.key, None)
        elif self._deadlines.get(peer.key) != t:
            self._deadlines[peer.key] = t
            heapq.heappush(self._heap, (t, next(self._heap_order), peer.key))

    def _next_peer_deadline(self) -> float | None:
        heap, deadlines = self._heap, self._deadlines
        while heap and deadlines.get(heap[0][2]) != heap[0][0]:
            heapq.heappop(heap)  # superseded, or the peer is gone
        return heap[0][0] if heap else None

    def get_timer(self) -> float | None:
        times = [t for t in (self.link.get_timer(),) if t is not None]
        if self._nat is not None and (t := self._nat.get_timer()) is not None:
            times.append(t)
        times += [first + UNDELIVERED_GATHER_s for _, _, first in self._give_ups.values()]
        if not self.quitting:
            t = self._next_peer_deadline()
            if t is not None:
                times.append(t)
        return min(times, default=None)

    def handle_timer(self, now: float) -> None:
        self._now = now
        self.link.handle_timer(now)
        if self._nat is not None:
            self._nat.handle_timer(now)
        if not self.quitting:
            due = []
            while (t := self._next_peer_deadline()) is not None and t <= now:
                _, _, key = heapq.heappop(self._heap)
                del self._deadlines[key]
                due.append(key)
            for key in due:
                peer = self.peers.get(key)
                if peer is not None:
                    peer.handle_timer(now)
                    self._after_peer_input(peer, now)
            self._admit_waiting(now)
        self._drain_link(now)

    def _drain_nat(self) -> None:
        nat = self._nat
        if nat is None:
            return
        self.outbox += nat.outbox
        nat.outbox.clear()
        if nat.independent is not None and not self._nat_told:
            self._nat_told = True
            if nat.independent:
                message = NAT_INDEPENDENT_MESSAGE
            else:
                message = NAT_DEPENDENT_MESSAGE if self.relay_available else NAT_DEPENDENT_NO_RELAY_MESSAGE
            self.events.append(ev.NatMapping(nat.independent, message))

    def _drain_link(self, now: float) -> None:
        """The end of every input: the link's datagrams and events, give-ups due."""
        self._report_undelivered(now)
        for data in self.link.outbox:
            self.outbox.append((data, self.bootnode))
        self.link.outbox.clear()
        registered = False
        for event in self.link.events:
            if isinstance(event, ev.Error) and event.fatal:
                self._failure = event.message
            registered |= isinstance(event, ev.Registered)
            self.events.append(event)
        self.link.events.clear()
        if registered and self._nat is None:  # once: what our NAT does does not change with a room
            self._nat = NatDiscovery(self.bootnode, self.random_bytes, now)
            self._nat.handle_timer(now)
        self._drain_nat()
        if registered and self._early:
            early, self._early = self._early, []
            for msg in early:
                self._announcement(msg, now)

    def bootnode_status(self) -> ev.BootnodeStatus:
        link = self.link
        state = "connected" if link.state is REGISTERED else ("lost" if link.lost else link.state.value)
        return ev.BootnodeStatus(
            state, format_endpoint(self.bootnode), round(link.rtt * 1000, 1) if link.rtt is not None else None
        )
