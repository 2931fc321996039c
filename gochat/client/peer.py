"""One remote peer (sans-I/O): find a path, authenticate, keep an encrypted session.

A Peer goes PUNCHING -> HANDSHAKING -> CONNECTED, or ends UNREACHABLE (no path by the
punch deadline) or FAILED (a path, but no authenticated session). Punches are
connectivity checks in the manner of ICE: a request carries a random txid and a MAC
that only the two peers can compute; a reply echoing the txid proves a two-way path,
and its source becomes the path. An authenticated request from an endpoint that is
not a candidate (the peer's symmetric NAT picked a new port towards us) is adopted as
a peer-reflexive candidate and checked at once.

The peer whose static key sorts lower initiates the Noise handshake, so simultaneous
starts give one session. The responder holds a new keypair as unconfirmed until the
initiator's first transport packet arrives on it: a replayed initiation can therefore
neither move the path nor disturb the session in use. Rekeying is a new handshake
on the same path; the previous keypair keeps decrypting packets still in flight.

The path is one endpoint and a kind ("direct"); a relayed path would be another kind
behind the same send call. Everything leaves through the PeerContext (datagrams and
events), and time is an argument.
"""

from __future__ import annotations

import struct
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Callable, List, Optional, Protocol

from gochat.wire import data as pw
from gochat.client import reliable
from gochat.wire.endpoints import format_endpoint
from gochat.constants import (
    HANDSHAKE_DEADLINE_s,
    HANDSHAKE_RETRY_s,
    HANDSHAKE_UNCONFIRMED_LIMIT,
    PUNCH_DEADLINE_s,
    PUNCH_INTERVAL_s,
    PUNCH_SCHEDULE_s,
)
from gochat.crypto.identity import fingerprint
from gochat.crypto.noise import HandshakeState, NoiseError
from gochat.crypto.transport import REKEY_AFTER_TIME_s, TransportError, TransportKeys
from gochat.wire.control import Endpoint

PUNCHING, HANDSHAKING, CONNECTED, UNREACHABLE, FAILED, GONE = (
    "punching", "handshaking", "connected", "unreachable", "failed", "gone")

T_BYE = 0x03  # inner frame after reliable's DATA (0x01) and ACK (0x02); empty = keepalive
_INIT_PAYLOAD = struct.Struct("!QQ")  # incarnation, handshake number
_RESP_PAYLOAD = struct.Struct("!Q")   # incarnation
MAX_TXIDS = 64


class PeerContext(Protocol):
    """What a Peer needs from the client that owns it."""

    public_key: bytes
    static_private: bytes
    psk: bytes
    prologue: bytes
    incarnation: int
    keepalive_s: float
    silence_s: float
    counters: Counter
    random_bytes: Callable[[int], bytes]

    def send(self, data: bytes, endpoint: Endpoint) -> None: ...
    def event(self, event: dict) -> None: ...
    def new_index(self, peer: "Peer") -> int: ...
    def release_index(self, index: int) -> None: ...
    def shared_secret(self, remote_key: bytes) -> bytes: ...


@dataclass
class Keypair:
    keys: TransportKeys
    local_index: int
    remote_index: int
    initiator: bool
    confirmed: bool
    incarnation: int   # the remote's, as its handshake payload said


class Peer:
    def __init__(self, ctx: PeerContext, key: bytes, name: str, endpoints: tuple, now: float) -> None:
        self.ctx = ctx
        self.key = key
        self.name = name
        self.fingerprint = fingerprint(key)
        self.candidates: List[Endpoint] = []
        self.set_endpoints(endpoints)
        self.initiator = ctx.public_key < key
        self.state = PUNCHING
        self.path: Optional[Endpoint] = None
        self.path_kind = "direct"
        self.reconnecting = False   # silent once connected: punching again before giving up
        self._punch_key = pw.punch_key(ctx.shared_secret(key))
        self._txids: "OrderedDict[bytes, None]" = OrderedDict()   # requests awaiting a reply
        self._start_punching(now)
        # handshake in flight (initiator side)
        self._hs: Optional[HandshakeState] = None
        self._hs_index: Optional[int] = None
        self._hs_next: Optional[float] = None
        self._hs_deadline: Optional[float] = None
        self._hs_number = 0
        self._auth_failures = 0
        # responder side
        self._last_init: Optional[tuple] = None   # (incarnation, number) of the newest initiation
        self._unconfirmed_inits = 0
        self.next_keypair: Optional[Keypair] = None   # responder: answered, awaiting confirmation
        self.current: Optional[Keypair] = None
        self.previous: Optional[Keypair] = None
        self.remote_incarnation: Optional[int] = None
        # delivery
        self.sender = reliable.ReliableSender(now)
        self.receiver = reliable.ReliableReceiver()
        self.last_received = now
        self.last_sent = now

    # --- candidates and punching ----------------------------------------------------

    def set_endpoints(self, endpoints: tuple) -> None:
        """The bootnode's view: public endpoint first, then local ones. Peer-reflexive
        candidates found earlier are kept behind them."""
        fresh = list(dict.fromkeys(endpoints))
        self.candidates = fresh + [c for c in self.candidates if c not in fresh]

    def _start_punching(self, now: float) -> None:
        self.state = PUNCHING
        self._punch_started = now
        self._punch_round = 0
        self._next_punch = now

    def _punch(self, endpoint: Endpoint) -> None:
        txid = self.ctx.random_bytes(pw.TXID_SIZE_bytes)
        self._txids[txid] = None
        while len(self._txids) > MAX_TXIDS:
            self._txids.popitem(last=False)
        self.ctx.send(pw.encode_punch(self._punch_key, self.ctx.public_key, txid), endpoint)

    def on_punch(self, punch: pw.Punch, source: Endpoint, now: float) -> None:
        if not pw.verify_punch(self._punch_key, punch):
            self.ctx.counters["bad_punch_mac"] += 1
            return
        if punch.reply:
            if punch.txid not in self._txids:
                self.ctx.counters["unexpected_punch_reply"] += 1
                return
            del self._txids[punch.txid]
            if self.state == PUNCHING:
                self.path = source
                self._begin_handshake(now)
            return
        # A request: answer it where it came from; a new source is a peer-reflexive candidate.
        self.ctx.send(pw.encode_punch(self._punch_key, self.ctx.public_key, punch.txid, reply=True), source)
        if source not in self.candidates:
            self.candidates.append(source)
            if self.state == PUNCHING:
                self._punch(source)   # triggered check, as ICE does
        if self.state in (UNREACHABLE, FAILED):
            self._start_punching(now)
            self._punch(source)
        elif self.state == CONNECTED and self.initiator and self._hs is None:
            # A connected peer does not punch: this one lost its session (it restarted).
            # The path moves only when the handshake completes (the punch may be replayed).
            self._send_initiation(now, to=source)

    # --- handshake --------------------------------------------------------------------

    def _begin_handshake(self, now: float) -> None:
        self.state = HANDSHAKING
        self._hs_deadline = now + HANDSHAKE_DEADLINE_s
        self._auth_failures = 0
        self._unconfirmed_inits = 0
        if self.initiator:
            self._send_initiation(now)

    def _send_initiation(self, now: float, to: Optional[Endpoint] = None) -> None:
        to = to or self.path
        if to is None:
            return
        if self._hs_index is not None:
            self.ctx.release_index(self._hs_index)
        self._hs = HandshakeState(initiator=True, static_private=self.ctx.static_private,
                                  remote_static=self.key, psk=self.ctx.psk, prologue=self.ctx.prologue)
        self._hs_index = self.ctx.new_index(self)
        self._hs_number += 1
        noise = self._hs.write_message(_INIT_PAYLOAD.pack(self.ctx.incarnation, self._hs_number))
        self._hs_next = now + HANDSHAKE_RETRY_s
        if self._hs_deadline is None:
            self._hs_deadline = now + HANDSHAKE_DEADLINE_s
        self.ctx.send(pw.encode_handshake_init(self._hs_index, noise), to)
        self.last_sent = now

    def on_handshake_init(self, hs: HandshakeState, init: pw.HandshakeInit, payload: bytes,
                          source: Endpoint, now: float) -> None:
        """An initiation whose first message already authenticated this peer's key."""
        if self.initiator:
            self.ctx.counters["init_from_responder"] += 1   # the tie-break says we initiate
            return
        if len(payload) != _INIT_PAYLOAD.size:
            self.ctx.counters["bad_handshake_payload"] += 1
            return
        incarnation, number = _INIT_PAYLOAD.unpack(payload)
        if self._last_init is not None and self._last_init[0] == incarnation and number <= self._last_init[1]:
            self.ctx.counters["replayed_initiation"] += 1
            return
        self._last_init = (incarnation, number)
        index = self.ctx.new_index(self)
        try:
            noise = hs.write_message(_RESP_PAYLOAD.pack(self.ctx.incarnation))
            send, recv = hs.split()
        except NoiseError:
            self.ctx.release_index(index)
            self.ctx.counters["handshake_error"] += 1
            return
        if self.next_keypair is not None:
            self.ctx.release_index(self.next_keypair.local_index)
        self.next_keypair = Keypair(TransportKeys(send.key, recv.key, now), index, init.sender_index,
                                    initiator=False, confirmed=False, incarnation=incarnation)
        self.ctx.send(pw.encode_handshake_resp(index, init.sender_index, noise), source)
        self.last_sent = now
        if self.state in (PUNCHING, UNREACHABLE, FAILED):
            self.state = HANDSHAKING
            self._hs_deadline = now + HANDSHAKE_DEADLINE_s
        if self.current is None or self.state != CONNECTED:
            self._unconfirmed_inits += 1
            if self._unconfirmed_inits >= HANDSHAKE_UNCONFIRMED_LIMIT and self.state != FAILED:
                self._fail("the peer could not authenticate us (a different room passphrase?)")

    def on_handshake_resp(self, resp: pw.HandshakeResp, source: Endpoint, now: float) -> None:
        if self._hs is None or resp.receiver_index != self._hs_index:
            self.ctx.counters["unexpected_handshake_resp"] += 1
            return
        try:
            payload = self._hs.read_message(resp.noise)
            send, recv = self._hs.split()
        except NoiseError:
            self.ctx.counters["handshake_auth_failed"] += 1
            self._hs = None   # this attempt is dead; retry until the limit (it may be forged)
            self._auth_failures += 1
            if self._auth_failures >= HANDSHAKE_UNCONFIRMED_LIMIT:
                self._fail("authentication failed (a different room passphrase?)")
            return
        if len(payload) != _RESP_PAYLOAD.size:
            self.ctx.counters["bad_handshake_payload"] += 1
            return
        (incarnation,) = _RESP_PAYLOAD.unpack(payload)
        assert self._hs_index is not None
        keypair = Keypair(TransportKeys(send.key, recv.key, now), self._hs_index, resp.sender_index,
                          initiator=True, confirmed=True, incarnation=incarnation)
        self._hs, self._hs_index, self._hs_next = None, None, None
        self._move_path(source)
        self._install(keypair, now)
        self._send_frame(b"", now)   # confirms the session to the responder at once

    def _move_path(self, endpoint: Endpoint) -> None:
        """The path is where authenticated packets come from; a change on a live session
        (a NAT rebinding, a restarted peer on a new port) is reported."""
        if self.state == CONNECTED and self.path is not None and endpoint != self.path:
            self.ctx.event({"event": "path_changed", "name": self.name, "fingerprint": self.fingerprint,
                            "path": self.path_kind, "endpoint": format_endpoint(endpoint),
                            "previous_endpoint": format_endpoint(self.path)})
        self.path = endpoint

    def _reconnect(self, now: float) -> None:
        """Silent for the peer timeout: look for a path again (both sides do) for one punch
        deadline before calling the peer gone, so a short outage heals by itself and
        queued messages still go out. A dead peer is usually announced by the bootnode
        first."""
        self.reconnecting = True
        if self.path is not None and self.path not in self.candidates:
            self.candidates.append(self.path)
        if self._hs_index is not None:
            self.ctx.release_index(self._hs_index)
        self._hs, self._hs_index, self._hs_next, self._hs_deadline = None, None, None, None
        self._start_punching(now)
        self.handle_timer(now)   # the first punch round now

    def _install(self, keypair: Keypair, now: float) -> None:
        if self.remote_incarnation is not None and keypair.incarnation != self.remote_incarnation:
            self.receiver = reliable.ReliableReceiver()   # the peer restarted: its sequence restarts
        self.remote_incarnation = keypair.incarnation
        if self.previous is not None:
            self.ctx.release_index(self.previous.local_index)
        self.previous, self.current = self.current, keypair
        self.last_received = now
        self._unconfirmed_inits = 0
        self._auth_failures = 0
        self._hs_deadline = None
        self.reconnecting = False
        if self.state != CONNECTED:
            self.state = CONNECTED
            self.ctx.event({"event": "peer_connected", "name": self.name, "fingerprint": self.fingerprint,
                            "path": self.path_kind, "endpoint": format_endpoint(self.path)})

    def _fail(self, reason: str) -> None:
        self.state = FAILED
        self._hs, self._hs_next, self._hs_deadline = None, None, None
        self.ctx.event({"event": "handshake_failed", "name": self.name, "fingerprint": self.fingerprint,
                        "reason": reason})
        self._give_up_pending()

    # --- transport --------------------------------------------------------------------

    def keypair_for(self, index: int) -> Optional[Keypair]:
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
        if kp is self.next_keypair:   # the initiator's first packet: the handshake is confirmed
            self.next_keypair = None
            kp.confirmed = True
            self._move_path(source)
            self._install(kp, now)
        elif source != self.path:
            self._move_path(source)   # authenticated and fresh: the peer roamed (a NAT rebinding)
        self.last_received = now
        self._on_frame(plaintext, now)

    def _on_frame(self, frame: bytes, now: float) -> None:
        if not frame:
            return   # keepalive
        kind = frame[0]
        try:
            if kind == reliable.T_DATA:
                messages, ack = self.receiver.on_data(frame)
                self._send_frame(ack, now)
                for message in messages:
                    self.ctx.event({"event": "message", "from": self.name, "fingerprint": self.fingerprint,
                                    "text": message.decode("utf-8", "replace")})
            elif kind == reliable.T_ACK:
                self.sender.on_ack(*reliable.parse_ack(frame), now)
                self._flush(now)   # fragments the ACK showed lost go again at once
            elif kind == T_BYE and len(frame) == 1:
                self.leave("quit")
            else:
                self.ctx.counters["bad_frame"] += 1
        except reliable.FrameError:
            self.ctx.counters["bad_frame"] += 1

    def _usable_keypair(self) -> Optional[Keypair]:
        for kp in (self.current, self.previous):
            if kp is not None and kp.confirmed:
                return kp
        return None

    def _send_frame(self, frame: bytes, now: float) -> bool:
        kp = self._usable_keypair()
        if kp is None or self.path is None:
            return False
        ad = pw.transport_ad(kp.remote_index, kp.keys.send_counter)   # the counter encrypt() uses next
        try:
            _, ciphertext = kp.keys.encrypt(frame, ad, now)
        except TransportError:
            self.ctx.counters["keys_expired_send"] += 1
            return False
        self.ctx.send(ad + ciphertext, self.path)
        self.last_sent = now
        return True

    # --- chat ---------------------------------------------------------------------------

    @property
    def accepts_messages(self) -> bool:
        return self.state in (PUNCHING, HANDSHAKING, CONNECTED)

    def send_message(self, text: str, now: float) -> None:
        self.sender.send(text.encode("utf-8"), now)
        self._flush(now)

    def _flush(self, now: float) -> None:
        if self.state == CONNECTED and self._usable_keypair() is not None:
            for frame in self.sender.datagrams_to_send(now):
                self._send_frame(frame, now)

    def _give_up_pending(self) -> None:
        for text in self.sender.abandon():
            self._undelivered(text)

    def bye(self, now: float) -> None:
        """Tell the peer we leave (twice: it is not acknowledged)."""
        if self.state == CONNECTED:
            self._send_frame(bytes([T_BYE]), now)
            self._send_frame(bytes([T_BYE]), now)

    def leave(self, reason: str) -> None:
        if self.state == GONE:
            return
        self.state = GONE
        self.ctx.event({"event": "peer_left", "name": self.name, "fingerprint": self.fingerprint, "reason": reason})
        self._give_up_pending()

    def release(self) -> None:
        """Give the indexes back (the peer is being forgotten)."""
        for kp in (self.current, self.previous, self.next_keypair):
            if kp is not None:
                self.ctx.release_index(kp.local_index)
        if self._hs_index is not None:
            self.ctx.release_index(self._hs_index)
        self.current = self.previous = self.next_keypair = None
        self._hs_index = None

    def reintroduced(self, name: str, endpoints: tuple, now: float) -> None:
        """The bootnode announced this key again (re-registration): refresh candidates and
        try again if we had given up."""
        self.name = name
        self.set_endpoints(endpoints)
        if self.state in (UNREACHABLE, FAILED):
            self.path = None
            self._hs_deadline = None
            self._start_punching(now)

    # --- timers -------------------------------------------------------------------------

    def get_timer(self) -> Optional[float]:
        times = []
        if self.state == PUNCHING:
            times += [self._next_punch, self._punch_started + PUNCH_DEADLINE_s]
        if self._hs_next is not None and self.state in (HANDSHAKING, CONNECTED):
            times.append(self._hs_next)
        if self._hs_deadline is not None:
            times.append(self._hs_deadline)
        if self.state == CONNECTED:
            times += [self.last_sent + self.ctx.keepalive_s, self.last_received + self.ctx.silence_s]
            if self.initiator and self.current is not None and self._hs is None:
                times.append(self.current.keys.created + REKEY_AFTER_TIME_s)
        # Retransmissions only happen on a session; otherwise only give-ups are due.
        t = self.sender.get_timer() if self.state == CONNECTED else self.sender.give_up_timer()
        if t is not None:
            times.append(t)
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        if self.state == PUNCHING:
            if now >= self._punch_started + PUNCH_DEADLINE_s:
                if self.reconnecting:   # silent, and no path back either: it is gone
                    self.leave("timed_out")
                    return
                self.state = UNREACHABLE
                self.ctx.event({"event": "peer_unreachable", "name": self.name, "fingerprint": self.fingerprint,
                                "message": f"no direct path to {self.name}: both sides' NATs may be symmetric"})
                self._give_up_pending()
                return
            if now >= self._next_punch:
                for endpoint in self.candidates:
                    self._punch(endpoint)
                self._punch_round += 1
                if self._punch_round < len(PUNCH_SCHEDULE_s):
                    self._next_punch = self._punch_started + PUNCH_SCHEDULE_s[self._punch_round]
                else:
                    self._next_punch = now + PUNCH_INTERVAL_s
        if self._hs_deadline is not None and now >= self._hs_deadline and self.state == HANDSHAKING:
            self._hs_deadline = None
            self._fail("no handshake completed within %g s" % HANDSHAKE_DEADLINE_s)
            return
        if self._hs_deadline is not None and now >= self._hs_deadline and self.state == CONNECTED:
            self._hs_deadline = None   # a rekey that did not complete: the old keys stay until they expire
            self._hs, self._hs_next = None, None
        if self._hs_next is not None and now >= self._hs_next and self.state in (HANDSHAKING, CONNECTED):
            self._send_initiation(now)
        self._expire_pending(now)
        if self.state != CONNECTED:
            return
        if now >= self.last_received + self.ctx.silence_s:
            self._reconnect(now)
            return
        if (self.initiator and self._hs is None and self.current is not None
                and self.current.keys.needs_rekey(now)):
            self._send_initiation(now)
        self._flush(now)
        if now >= self.last_sent + self.ctx.keepalive_s:
            self._send_frame(b"", now)

    def _expire_pending(self, now: float) -> None:
        for _, text in self.sender.expired(now):
            self._undelivered(text)

    def _undelivered(self, text: bytes) -> None:
        self.ctx.event({"event": "undelivered", "to": self.name, "fingerprint": self.fingerprint,
                        "text": text.decode("utf-8")})   # we encoded it: it decodes

    def snapshot(self) -> dict:
        return {"name": self.name, "fingerprint": self.fingerprint, "state": self.state,
                "path": self.path_kind if self.state == CONNECTED else None,
                "endpoint": format_endpoint(self.path) if self.path else None,
                "rtt_ms": round(self.sender.rtt.srtt * 1000, 1) if self.sender.rtt.srtt is not None else None,
                "unacknowledged": self.sender.unacknowledged, "retransmissions": self.sender.retransmissions}

