"""One remote peer (sans-I/O): find a path, authenticate, keep an encrypted session.

A Peer goes PUNCHING -> HANDSHAKING -> CONNECTED, or stops at UNREACHABLE (no path by
the punch deadline) or FAILED (a path, but no authenticated session) and tries again
later (PEER_RETRY_s, doubling up to PEER_RETRY_MAX_s): a NAT that rebound mid-handshake
or a lossy minute must not part two members for good. GONE when it left.
Finding the path is punching.py's work (connectivity checks, candidates); this module
decides what the checks mean for the session.

The peer whose static key sorts lower initiates the Noise handshake, so simultaneous
starts give one session. The responder holds a new keypair as unconfirmed until the
initiator's first transport packet arrives on it: a replayed initiation can therefore
neither move the path nor disturb the session in use. Rekeying is a new handshake
on the same path; the previous keypair keeps decrypting packets still in flight.

The path is one endpoint and a kind ("direct"); a relayed path would be another kind
behind the same send call. Everything leaves through the PeerContext (datagrams and
events), and time is an argument. Timers are named by what they do (as wireguard-go's
timers.go): ``_timers()`` lists each deadline with its handler, in the order they run.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from gochat import events as ev
from gochat.client import reliable
from gochat.client.punching import Punching, Verdict
from gochat.constants import (
    HANDSHAKE_AUTH_FAILURE_LIMIT,
    HANDSHAKE_UNCONFIRMED_LIMIT,
    HANDSHAKE_DEADLINE_s,
    HANDSHAKE_RETRY_s,
    PEER_RETRY_MAX_s,
    PEER_RETRY_s,
)
from gochat.crypto.identity import fingerprint
from gochat.crypto.noise import HandshakeState, NoiseError
from gochat.crypto.transport import REKEY_AFTER_TIME_s, TransportError, TransportKeys
from gochat.wire import data as pw
from gochat.wire.control import DecodeError, Endpoint
from gochat.wire.endpoints import format_endpoint, is_relay

# A responder that answered a new epoch's initiation sends no DATA for this long, or
# until the initiator confirms (a round trip): it would go to the peer's old record.
NEW_EPOCH_HOLD_s = 2.0
# A connected peer that the bootnode announces with a new name (/nick) proves it in a new
# handshake; the mismatch is reported only if no such proof came within this long.
NAME_PROOF_WAIT_s = 5.0
# A relayed session probes the peer's direct candidates this long after it went to the
# relay, then twice as long each time, up to DIRECT_PROBE_MAX_s.
DIRECT_PROBE_s = 5.0
DIRECT_PROBE_MAX_s = 60.0


class PeerState(enum.Enum):
    PUNCHING = "punching"
    HANDSHAKING = "handshaking"
    CONNECTED = "connected"
    UNREACHABLE = "unreachable"
    FAILED = "failed"
    GONE = "gone"


PUNCHING, HANDSHAKING, CONNECTED = PeerState.PUNCHING, PeerState.HANDSHAKING, PeerState.CONNECTED
UNREACHABLE, FAILED, GONE = PeerState.UNREACHABLE, PeerState.FAILED, PeerState.GONE

# Why a Peer gave up on a message (PeerContext.undelivered):
#   timeout      not acknowledged 30 s after it was typed: the peer may still have it
#   peer_gone    the peer left (bye, silence, or the room dropped it): it may have it
#   failed       no authenticated session (handshake_failed): it does not have it
#   unreachable  no path (peer_unreachable): it does not have it
UndeliveredReason = Literal["timeout", "peer_gone", "failed", "unreachable"]


class PeerContext(Protocol):
    """What a Peer needs from the client that owns it."""

    name: str  # our display name, sent in the handshake
    public_key: bytes
    static_private: bytes
    psk: bytes
    prologue: bytes
    keepalive_s: float
    silence_s: float
    counters: Counter
    random_bytes: Callable[[int], bytes]

    @property
    def relay_delay_s(self) -> float:
        """How far into a series of punch rounds the relay candidate joins."""
        ...

    @property
    def relay_available(self) -> bool:
        """We hold a relay binding (peers that cannot punch can still be reached)."""
        ...

    def send(self, data: bytes, endpoint: Endpoint) -> None: ...
    def event(self, event: ev.Event) -> None: ...
    def undelivered(self, peer: Peer, ref: object, text: str, reason: UndeliveredReason) -> None:
        """``peer`` gave up on the message the room named ``ref`` (sent with
        Peer.send_message); the room reports each message once, naming all its peers."""
        ...

    def name_authenticated(self, peer: Peer, announced: str, authenticated: str) -> None:
        """The name ``peer`` proved in its handshake differs from the one the bootnode
        announced (or from the one it proved before). ``peer.name`` is already the
        authenticated one; the bootnode's word was only a hint."""
        ...

    def peer_unreachable(self, peer: Peer, now: float) -> None:
        """A series of punch rounds found no path to ``peer``: what the room knows of it
        may be out of date (a lost announcement of its new card)."""
        ...

    def new_index(self, peer: Peer) -> int: ...
    def release_index(self, index: int) -> None: ...
    def shared_secret(self, remote_key: bytes) -> bytes: ...


@dataclass
class Keypair:
    keys: TransportKeys
    local_index: int
    remote_index: int
    initiator: bool
    confirmed: bool
    epoch: int  # the remote's, as its handshake payload said
    name: str  # the remote's display name, as its handshake payload said


class Peer:
    def __init__(self, ctx: PeerContext, key: bytes, name: str, endpoints: Sequence[Endpoint], now: float) -> None:
        self.ctx = ctx
        self.key = key
        self.announced_name = name  # the bootnode's word: a hint
        self.authenticated_name: str | None = None  # what the peer's handshake says
        self.name = name  # the authenticated name once known, the announced one until then
        self.fingerprint = fingerprint(key)
        self.initiator = ctx.public_key < key
        # Random per Peer object, that is per sequence space of our reliable delivery to
        # this peer: a new Peer (or a new process) is a new epoch, and the other side
        # starts its receiving side over when a confirmed handshake shows one.
        self.epoch = int.from_bytes(ctx.random_bytes(8), "big")
        self.punching = Punching(pw.punch_key(ctx.shared_secret(key)), ctx.public_key, ctx.random_bytes, endpoints)
        self.state = PUNCHING
        self.path: Endpoint | None = None
        self._last_direct = -1e18  # the latest authenticated packet from a direct path
        self._probe_due: float | None = None  # relayed: when to probe the direct candidates next
        self._probe_interval = DIRECT_PROBE_s
        self.reconnecting = False  # silent once connected: punching again before giving up
        self.failures = 0  # punch series or handshakes that ended without a session, in a row
        self._retry_due: float | None = None  # UNREACHABLE / FAILED: when to look again
        self._names_check_due: float | None = None  # an announced rename waits this long for its proof
        self._next_source: Endpoint | None = None  # responder: where the latest answered initiation came from
        self._reported: str | None = None  # the last failure told to the user (told once)
        self._start_punching(now)
        # handshake in flight (initiator side)
        self._hs: HandshakeState | None = None
        self._hs_index: int | None = None
        self._hs_next: float | None = None
        self._hs_deadline: float | None = None
        self._hs_number = 0
        self._auth_failures = 0
        # responder side
        self._last_init: tuple[int, int] | None = None  # (epoch, number) of the newest initiation
        self._names_told: tuple[str, str] | None = None  # (announced, authenticated) last told
        self._retired_epochs: list[int] = []  # the remote's epochs a newer one replaced: never again
        self._unconfirmed_inits = 0
        self.next_keypair: Keypair | None = None  # responder: answered, awaiting confirmation
        self.current: Keypair | None = None
        self.previous: Keypair | None = None
        self.remote_epoch: int | None = None
        self._hold_until: float | None = None  # sending waits for a new epoch's confirmation
        # delivery
        self.sender = reliable.ReliableSender(now)
        self.receiver = reliable.ReliableReceiver()
        self.last_received = now
        self.last_sent = now
        self._timer_table = self._timers()

    # --- punching -------------------------------------------------------------------

    @property
    def path_kind(self) -> str:
        """ "relay" while the session runs through the bootnode's relay, else "direct"."""
        return "relay" if self.path is not None and is_relay(self.path) else "direct"

    def _start_punching(self, now: float) -> None:
        self.state = PUNCHING
        self.punching.start(now)

    def _send_all(self, datagrams: Sequence[tuple[bytes, Endpoint]]) -> None:
        for data, endpoint in datagrams:
            self.ctx.send(data, endpoint)

    def on_punch(self, punch: pw.Punch, source: Endpoint, now: float) -> None:
        verdict = self.punching.check(punch, source)
        if verdict in (Verdict.BAD_MAC, Verdict.STALE, Verdict.UNEXPECTED_REPLY):
            self.ctx.counters[verdict.value] += 1
        elif verdict is Verdict.PATH_FOUND:
            if self.state in (PUNCHING, UNREACHABLE, FAILED):
                self.path = source
                self._retry_due = None
                self._begin_handshake(now)
            elif self.state is CONNECTED and self.initiator and self._hs is None:
                # Our check answered a request the peer sent while we were connected:
                # it lost its session (it restarted), and this address is proven.
                self._send_initiation(now, to=source)
        else:
            self._on_punch_request(punch, source, now)

    def _on_punch_request(self, punch: pw.Punch, source: Endpoint, now: float) -> None:
        """A fresh request. A validated source is answered; from one nobody validated
        (a peer-reflexive candidate), the initiator sends a check instead, within the
        budget of that address, and the responder answers (its answer is all the
        initiator needs). A series starts again only from an announced candidate."""
        validated = self.punching.on_request(source, adopt=self.initiator)
        if validated or not self.initiator:
            self._send_all([self.punching.answer(punch, source, now)])
        else:
            self._send_all(self.punching.triggered_check(source, now))
        if is_relay(source) and self.state in (PUNCHING, UNREACHABLE, FAILED) and validated:
            # The peer went to the relay (its NAT cannot be punched, say): so do we, now,
            # rather than at our own relay delay. Our check's reply proves the path.
            self.punching.relay_open = True
            if self.state is PUNCHING:
                self._send_all([self.punching.request(source, now)])
        if self.state in (UNREACHABLE, FAILED) and self.punching.is_announced(source):
            self._on_retry(now)
        elif self.state is CONNECTED and self.initiator and self._hs is None and validated:
            # A connected peer does not punch: this one lost its session (it restarted).
            # The path moves only when the handshake completes.
            self._send_initiation(now, to=source)

    # --- handshake --------------------------------------------------------------------

    def _begin_handshake(self, now: float) -> None:
        self.state = HANDSHAKING
        self._hs_deadline = now + HANDSHAKE_DEADLINE_s
        self._auth_failures = 0
        self._unconfirmed_inits = 0
        if self.initiator:
            self._send_initiation(now)

    def _send_initiation(self, now: float, to: Endpoint | None = None) -> None:
        to = to or self.path
        if to is None:
            return
        if self._hs_index is not None:
            self.ctx.release_index(self._hs_index)
        self._hs = HandshakeState(
            initiator=True,
            static_private=self.ctx.static_private,
            remote_static=self.key,
            psk=self.ctx.psk,
            prologue=self.ctx.prologue,
        )
        self._hs_index = self.ctx.new_index(self)
        self._hs_number += 1
        noise = self._hs.write_message(pw.encode_init_payload(self.epoch, self._hs_number, self.ctx.name))
        self._hs_next = now + HANDSHAKE_RETRY_s
        if self._hs_deadline is None:
            self._hs_deadline = now + HANDSHAKE_DEADLINE_s
        self.ctx.send(pw.encode_handshake_init(self._hs_index, noise), to)
        self.last_sent = now

    def on_handshake_init(
        self, hs: HandshakeState, init: pw.HandshakeInit, payload: bytes, source: Endpoint, now: float
    ) -> None:
        """An initiation whose first message already authenticated this peer's key."""
        if self.initiator:
            self.ctx.counters["init_from_responder"] += 1  # the tie-break says we initiate
            return
        try:
            epoch, number, name = pw.decode_init_payload(payload)
        except DecodeError:
            self.ctx.counters["bad_handshake_payload"] += 1
            return
        if epoch in self._retired_epochs or (
            self._last_init is not None and self._last_init[0] == epoch and number <= self._last_init[1]
        ):
            self.ctx.counters["replayed_initiation"] += 1
            return
        self._last_init = (epoch, number)
        index = self.ctx.new_index(self)
        try:
            noise = hs.write_message(pw.encode_resp_payload(self.epoch, self.ctx.name))
            send, recv = hs.split()
        except NoiseError:
            self.ctx.release_index(index)
            self.ctx.counters["handshake_error"] += 1
            return
        assert send.key is not None and recv.key is not None
        if self.next_keypair is not None:
            self.ctx.release_index(self.next_keypair.local_index)
        self.next_keypair = Keypair(
            TransportKeys(send.key, recv.key, now),
            index,
            init.sender_index,
            initiator=False,
            confirmed=False,
            epoch=epoch,
            name=name,
        )
        self.ctx.send(pw.encode_handshake_resp(index, init.sender_index, noise), source)
        self._next_source = source  # where the initiator is, before its confirmation moves the path
        self.last_sent = now
        if self.state is CONNECTED and self.remote_epoch is not None and epoch != self.remote_epoch:
            # A new epoch: what we would send until the initiator confirms (a round trip)
            # would go to its old record. Bounded: a stranger can replay an initiation.
            self._hold_until = now + NEW_EPOCH_HOLD_s
        if self.state in (PUNCHING, UNREACHABLE, FAILED):
            self.state = HANDSHAKING
            self._hs_deadline = now + HANDSHAKE_DEADLINE_s
        if self.current is None or self.state is not CONNECTED:
            self._unconfirmed_inits += 1
            if self._unconfirmed_inits >= HANDSHAKE_UNCONFIRMED_LIMIT and self.state is not FAILED:
                self._fail("the peer could not authenticate us (a different room passphrase?)", now)

    def on_handshake_resp(self, resp: pw.HandshakeResp, source: Endpoint, now: float) -> None:
        if self._hs is None or resp.receiver_index != self._hs_index:
            self.ctx.counters["unexpected_handshake_resp"] += 1
            return
        try:
            payload = self._hs.read_message(resp.noise)
            send, recv = self._hs.split()
        except NoiseError:
            self.ctx.counters["handshake_auth_failed"] += 1
            self._hs = None  # this attempt is dead; retry until the limit (it may be forged)
            self._auth_failures += 1
            if self._auth_failures >= HANDSHAKE_AUTH_FAILURE_LIMIT:
                self._fail("authentication failed (a different room passphrase?)", now)
            return
        try:
            epoch, name = pw.decode_resp_payload(payload)
        except DecodeError:
            self.ctx.counters["bad_handshake_payload"] += 1
            return
        assert self._hs_index is not None and send.key is not None and recv.key is not None
        keypair = Keypair(
            TransportKeys(send.key, recv.key, now),
            self._hs_index,
            resp.sender_index,
            initiator=True,
            confirmed=True,
            epoch=epoch,
            name=name,
        )
        self._hs, self._hs_index, self._hs_next = None, None, None
        self._move_path(source, now)
        self._install(keypair, now)
        self._send_frame(pw.KEEPALIVE_FRAME, now)  # confirms the session to the responder at once

    def _move_path(self, endpoint: Endpoint, now: float | None = None) -> None:
        """The path is where authenticated packets come from; a change on a live session
        (a NAT rebinding, a restarted peer on a new port, relay to direct and back) is
        reported."""
        previous = self.path
        self.path = endpoint
        if is_relay(endpoint):
            if now is not None and self._probe_due is None:
                self._probe_due, self._probe_interval = now + DIRECT_PROBE_s, DIRECT_PROBE_s
        else:
            self._probe_due = None
        if self.state is CONNECTED and previous is not None and endpoint != previous:
            self.ctx.event(
                ev.PathChanged(
                    self.name, self.fingerprint, self.path_kind, format_endpoint(endpoint), format_endpoint(previous)
                )
            )

    def _install(self, keypair: Keypair, now: float) -> None:
        if self.remote_epoch is not None and keypair.epoch != self.remote_epoch:
            self._remote_started_over(self.remote_epoch)
        self.remote_epoch = keypair.epoch
        self._hold_until = None
        self._authenticated(keypair.name)
        if self.previous is not None:
            self.ctx.release_index(self.previous.local_index)
        self.previous, self.current = self.current, keypair
        self.last_received = now
        self._unconfirmed_inits = 0
        self._auth_failures = 0
        self._hs_deadline = None
        self.reconnecting = False
        self.failures, self._retry_due, self._reported = 0, None, None
        self.punching.connected()
        if self.state is not CONNECTED:
            self.state = CONNECTED
            assert self.path is not None
            self.ctx.event(ev.PeerConnected(self.name, self.fingerprint, self.path_kind, format_endpoint(self.path)))
        self._flush(now)  # messages typed while the session was coming up

    def _authenticated(self, name: str) -> None:
        """A confirmed handshake named the peer: that name is its name from now on. A
        proved name that replaces a proved one is a rename (/nick), told as such."""
        previous, shown = self.authenticated_name, self.name
        self.authenticated_name = self.name = name
        if previous is not None and name != previous:
            self.ctx.event(ev.PeerRenamed(name, self.fingerprint, previous))
            self._names_told = (self.announced_name, name)
            if name == self.announced_name:
                self._names_check_due = None
                return
        if name != shown or name != self.announced_name:
            self._tell_names()

    def _tell_names(self) -> None:
        assert self.authenticated_name is not None
        pair = (self.announced_name, self.authenticated_name)
        if pair != self._names_told:
            self._names_told = pair
            self.ctx.name_authenticated(self, *pair)

    def _remote_started_over(self, old_epoch: int) -> None:
        """The peer has a new sequence space towards us (it restarted, or dropped its
        record of us and made a new one): our receiving side starts over. What we had
        sent and not seen acknowledged went to a record that no longer exists; it may
        have shown it (its ACKs can have been lost), so sending it again to the new one
        could show it twice: it is reported instead. What was never sent goes out now,
        in our same sequence space (the new receiver starts at our ``base``)."""
        self._retired_epochs = [*self._retired_epochs[-7:], old_epoch]
        self.receiver = reliable.ReliableReceiver()
        for ref, text in self.sender.restart():
            self._undelivered(ref, text, "peer_gone")

    def _fail(self, reason: str, now: float) -> None:
        self.state = FAILED
        self._hs, self._hs_next, self._hs_deadline = None, None, None
        if self._reported != reason:  # a retry that fails the same way is not news
            self._reported = reason
            self.ctx.event(ev.HandshakeFailed(self.name, self.fingerprint, reason))
        self._give_up_pending("failed")
        self._schedule_retry(now)

    def _schedule_retry(self, now: float) -> None:
        self.failures += 1
        self._retry_due = now + min(PEER_RETRY_MAX_s, PEER_RETRY_s * 2 ** (self.failures - 1))

    # --- transport --------------------------------------------------------------------

    def keypair_for(self, index: int) -> Keypair | None:
        for kp in (self.current, self.next_keypair, self.previous):
            if kp is not None and kp.local_index == index:
                return kp
        return None

    def on_transport(self, packet: pw.Transport, source: Endpoint, now: float) -> None:
        kp = self.keypair_for(packet.receiver_index)
        if kp is None:
            self.ctx.counters["unknown_index"] += 1
            return
        try:
            plaintext = kp.keys.decrypt(packet.counter, packet.ciphertext, packet.ad, now)
        except TransportError as exc:
            self.ctx.counters[exc.reason] += 1
            return
        if kp is self.next_keypair:  # the initiator's first packet: the handshake is confirmed
            self.next_keypair = None
            kp.confirmed = True
            self._move_path(source, now)
            self._install(kp, now)
        elif source != self.path and self._may_move_to(source, now):
            # Authenticated and fresh: the peer roamed (a NAT rebinding), or a direct
            # path opened while we were relayed, or the direct path failed.
            self._move_path(source, now)
        if not is_relay(source):
            self._last_direct = now
        self.last_received = now
        self._on_frame(plaintext, now)

    def _on_frame(self, frame: bytes, now: float) -> None:
        if frame == pw.KEEPALIVE_FRAME:
            return
        kind = frame[0]
        try:
            if kind == pw.FrameType.DATA:
                messages, ack = self.receiver.on_data(frame)
                self._send_frame(ack, now)
                for message in messages:
                    style, body = pw.message_style(message.decode("utf-8", "replace"))
                    self.ctx.event(ev.MessageReceived(self.name, self.fingerprint, body, style))
            elif kind == pw.FrameType.ACK:
                self.sender.on_ack(*reliable.parse_ack(frame), now)
                self._flush(now)  # fragments the ACK showed lost go again at once
            elif frame == pw.BYE_FRAME:
                self.leave("quit")
            else:
                self.ctx.counters["bad_frame"] += 1
        except reliable.BadAck:
            self.ctx.counters["bad_ack"] += 1
        except reliable.FrameError:
            self.ctx.counters["bad_frame"] += 1

    def _may_move_to(self, source: Endpoint, now: float) -> bool:
        """A direct source always wins over the relay; the relay takes over from a direct
        path only once that path has been silent for two keepalive intervals (packets the
        peer relayed before it moved to the direct path arrive for a while)."""
        if self.path is None or not is_relay(source) or is_relay(self.path):
            return True
        return now >= self._last_direct + 2 * self.ctx.keepalive_s

    def path_lost(self, now: float) -> None:
        """The relay says the binding our path goes through is gone (the peer left, or
        registered again with a new one): look for the peer again at once."""
        if self.state is CONNECTED:
            self._on_silence(now)

    def _usable_keypair(self) -> Keypair | None:
        for kp in (self.current, self.previous):
            if kp is not None and kp.confirmed:
                return kp
        return None

    def _send_frame(self, frame: bytes, now: float, to: Endpoint | None = None) -> bool:
        """Encrypt and send one frame on the path (or to ``to``: a probe, which does not
        count as traffic on the path)."""
        kp = self._usable_keypair()
        dest = to or self.path
        if kp is None or dest is None:
            return False
        ad = pw.transport_ad(kp.remote_index, kp.keys.send_counter)  # the counter encrypt() uses next
        try:
            _, ciphertext = kp.keys.encrypt(frame, ad, now)
        except TransportError:
            self.ctx.counters["keys_expired_send"] += 1
            return False
        self.ctx.send(ad + ciphertext, dest)
        if to is None:
            self.last_sent = now
        return True

    # --- chat ---------------------------------------------------------------------------

    @property
    def accepts_messages(self) -> bool:
        return self.state in (PUNCHING, HANDSHAKING, CONNECTED)

    def send_message(self, text: str, now: float, ref: object = None) -> None:
        """Queue ``text`` for this peer. ``ref`` is the room's reference of the message:
        a give-up is reported with it (PeerContext.undelivered), never as an event."""
        self.sender.send(text.encode("utf-8"), now, ref)
        self._flush(now)

    def _flush(self, now: float) -> None:
        """Send what reliable delivery has due: new fragments and retransmissions."""
        if self._hold_until is not None and now < self._hold_until:
            return  # the peer's new epoch is being confirmed: this would go to its old record
        if self.state is CONNECTED and self._usable_keypair() is not None:
            for frame in self.sender.datagrams_to_send(now):
                self._send_frame(frame, now)

    def _give_up_pending(self, reason: UndeliveredReason) -> None:
        for ref, text in self.sender.abandon():
            self._undelivered(ref, text, reason)

    def _undelivered(self, ref: object, text: bytes, reason: UndeliveredReason) -> None:
        self.ctx.undelivered(self, ref, text.decode("utf-8"), reason)  # we encoded it

    def bye(self, now: float) -> None:
        """Tell the peer we leave (twice: it is not acknowledged). A responder whose new keys
        the initiator has not confirmed yet says it on those keys, to where the initiation
        came from: the initiator holds them if our response reached it (and nobody else
        can read them), so it learns of the leave now rather than from our silence."""
        if self.state is CONNECTED:
            self._send_frame(pw.BYE_FRAME, now)
            self._send_frame(pw.BYE_FRAME, now)
        elif self.next_keypair is not None and self._next_source is not None:
            kp = self.next_keypair
            for _ in range(2):
                ad = pw.transport_ad(kp.remote_index, kp.keys.send_counter)
                try:
                    _, ciphertext = kp.keys.encrypt(pw.BYE_FRAME, ad, now)
                except TransportError:
                    return
                self.ctx.send(ad + ciphertext, self._next_source)

    def leave(self, reason: str) -> None:
        if self.state is GONE:
            return
        self.state = GONE
        self.ctx.event(ev.PeerLeft(self.name, self.fingerprint, reason))
        self._give_up_pending("peer_gone")

    def release(self) -> None:
        """Give the indexes back (the peer is being forgotten)."""
        for kp in (self.current, self.previous, self.next_keypair):
            if kp is not None:
                self.ctx.release_index(kp.local_index)
        if self._hs_index is not None:
            self.ctx.release_index(self._hs_index)
        self.current = self.previous = self.next_keypair = None
        self._hs_index = None

    def renamed(self, now: float) -> None:
        """Our name changed: prove it in a new handshake (same epoch: nothing restarts)."""
        if self.state is not CONNECTED or self.path is None:
            return
        if self.initiator:
            if self._hs is None:
                self._send_initiation(now)
        else:  # a punch from our path while connected asks the initiator for a handshake
            self._send_all([self.punching.request(self.path, now)])

    def reintroduced(self, name: str, endpoints: Sequence[Endpoint], now: float, listed: bool = False) -> None:
        """The bootnode announced this key again (re-registration): refresh candidates and
        try again if we had given up. The name is the bootnode's word: it names the peer
        only until its handshake does. ``listed``: it came in a member list we asked for
        again, which says nothing new unless the candidates changed (the retry backoff
        goes on otherwise)."""
        self.announced_name = name
        if self.authenticated_name is None:
            self.name = name
        elif name != self.authenticated_name:
            if self.state is CONNECTED:  # a rename's handshake may be on its way: wait for it a moment
                self._names_check_due = now + NAME_PROOF_WAIT_s
            else:
                self._tell_names()
        changed = list(dict.fromkeys(endpoints)) != self.punching.announced
        self.punching.set_endpoints(endpoints)
        if self.state in (UNREACHABLE, FAILED) and (changed or not listed):
            self._on_retry(now)

    # --- timers -------------------------------------------------------------------------

    def _timers(self) -> tuple[tuple[Callable[[], float | None], Callable[[float], None]], ...]:
        """Every deadline (None: not armed in this state) with its handler, in the order
        handle_timer runs them; each deadline is read after the handlers before it ran."""
        return (
            (self._retry_at, self._on_retry),
            (self._punch_deadline_at, self._on_punch_deadline),
            (self._punch_round_at, self._on_punch_round),
            (self._handshake_deadline_at, self._on_handshake_deadline),
            (self._handshake_retry_at, self._on_handshake_retry),
            (self._give_up_at, self._on_give_up),
            (self._silence_at, self._on_silence),
            (self._rekey_at, self._on_rekey),
            (self._retransmit_at, self._flush),
            (self._hold_ends_at, self._on_hold_ends),
            (self._keepalive_at, self._on_keepalive),
            (self._probe_at, self._on_probe),
            (self._names_check_at, self._on_names_check),
        )

    def get_timer(self) -> float | None:
        """The next deadline: O(1), whatever is queued (a room asks after every event)."""
        return min((t for when, _ in self._timer_table if (t := when()) is not None), default=None)

    def handle_timer(self, now: float) -> None:
        for when, handler in self._timer_table:
            t = when()
            if t is not None and now >= t:
                handler(now)

    def _retry_at(self) -> float | None:
        return self._retry_due if self.state in (UNREACHABLE, FAILED) else None

    def _on_retry(self, now: float) -> None:
        """Look for the peer again, from its announced candidates: paths and NAT
        mappings change, and so may its passphrase. Quietly: only a different outcome
        is told to the user again."""
        self._retry_due = None
        self.path = None
        self._hs_deadline = None
        self._start_punching(now)

    def _names_check_at(self) -> float | None:
        return self._names_check_due

    def _on_names_check(self, now: float) -> None:
        """The bootnode announced another name and no handshake proved it: say so."""
        self._names_check_due = None
        if self.authenticated_name is not None and self.announced_name != self.authenticated_name:
            self._tell_names()

    def _punch_deadline_at(self) -> float | None:
        return self.punching.deadline if self.state is PUNCHING else None

    def _on_punch_deadline(self, now: float) -> None:
        if self.reconnecting:  # silent, and no path back either: it is gone
            self.leave("timed_out")
            return
        self.state = UNREACHABLE
        self.ctx.peer_unreachable(self, now)
        if self._reported != "unreachable":  # a retry that fails the same way is not news
            self._reported = "unreachable"
            if self.ctx.relay_available:
                why = f"no path to {self.name}, direct or through the relay (is its relay binding refused?)"
            else:
                why = f"no direct path to {self.name}, and no relay binding: its NAT and ours may both filter"
            self.ctx.event(ev.PeerUnreachable(self.name, self.fingerprint, why))
        self._give_up_pending("unreachable")
        self._schedule_retry(now)

    def _punch_round_at(self) -> float | None:
        return self.punching.next_round if self.state is PUNCHING else None

    def _on_punch_round(self, now: float) -> None:
        self._send_all(self.punching.run_round(now, self.ctx.relay_delay_s))

    def _handshake_deadline_at(self) -> float | None:
        return self._hs_deadline if self.state in (HANDSHAKING, CONNECTED) else None

    def _on_handshake_deadline(self, now: float) -> None:
        self._hs_deadline = None
        if self.state is HANDSHAKING:
            self._fail(f"no handshake completed within {HANDSHAKE_DEADLINE_s:g} s", now)
        else:  # a rekey that did not complete: the old keys stay until they expire
            self._hs, self._hs_next = None, None

    def _handshake_retry_at(self) -> float | None:
        return self._hs_next if self.state in (HANDSHAKING, CONNECTED) else None

    def _on_handshake_retry(self, now: float) -> None:
        self._send_initiation(now)

    def _give_up_at(self) -> float | None:
        return self.sender.give_up_timer()

    def _on_give_up(self, now: float) -> None:
        for ref, text in self.sender.expired(now):
            self._undelivered(ref, text, "timeout")

    def _silence_at(self) -> float | None:
        return self.last_received + self.ctx.silence_s if self.state is CONNECTED else None

    def _on_silence(self, now: float) -> None:
        """Silent for the peer timeout: look for a path again (both sides do) for one punch
        deadline before calling the peer gone, so a short outage heals by itself and
        queued messages still go out. A dead peer is usually announced by the bootnode
        first."""
        self.reconnecting = True
        if self.path is not None:
            self.punching.add_candidate(self.path)
        if self._hs_index is not None:
            self.ctx.release_index(self._hs_index)
        self._hs, self._hs_index, self._hs_next, self._hs_deadline = None, None, None, None
        self._start_punching(now)
        self._on_punch_round(now)  # the first round now

    def _rekey_at(self) -> float | None:
        if self.state is not CONNECTED or not self.initiator or self._hs is not None or self.current is None:
            return None
        keys = self.current.keys
        return keys.created if keys.send_counter >= keys.rekey_after_messages else keys.created + REKEY_AFTER_TIME_s

    def _on_rekey(self, now: float) -> None:
        self._send_initiation(now)

    def _retransmit_at(self) -> float | None:
        return self.sender.retransmit_timer() if self.state is CONNECTED else None

    def _hold_ends_at(self) -> float | None:
        return self._hold_until

    def _on_hold_ends(self, now: float) -> None:
        """The new epoch was not confirmed in time (a replayed initiation?): send again."""
        self._hold_until = None
        self._flush(now)

    def _keepalive_at(self) -> float | None:
        return self.last_sent + self.ctx.keepalive_s if self.state is CONNECTED else None

    def _on_keepalive(self, now: float) -> None:
        self._send_frame(pw.KEEPALIVE_FRAME, now)

    def _probe_at(self) -> float | None:
        return self._probe_due if self.state is CONNECTED and self.path_kind == "relay" else None

    def _on_probe(self, now: float) -> None:
        """Relayed: an authenticated keepalive to each direct candidate, as WireGuard's
        roaming does. Where it gets through, the peer moves to the direct path (a direct
        source always wins) and its answers move us. Every DIRECT_PROBE_s at first, then
        less often, up to DIRECT_PROBE_MAX_s: a NAT that cannot be punched stays so."""
        for endpoint in self.punching.direct_candidates():
            self._send_frame(pw.KEEPALIVE_FRAME, now, to=endpoint)
        self._probe_interval = min(DIRECT_PROBE_MAX_s, self._probe_interval * 2)
        self._probe_due = now + self._probe_interval

    # --- observation ----------------------------------------------------------------------

    def snapshot(self) -> ev.PeerStatus:
        srtt = self.sender.rtt.srtt
        return ev.PeerStatus(
            name=self.name,
            fingerprint=self.fingerprint,
            state=self.state.value,
            path=self.path_kind if self.state is CONNECTED else None,
            endpoint=format_endpoint(self.path) if self.path else None,
            rtt_ms=round(srtt * 1000, 1) if srtt is not None else None,
            unacknowledged=self.sender.unacknowledged,
            retransmissions=self.sender.retransmissions,
        )
