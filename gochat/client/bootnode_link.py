"""A client's link to the bootnode (sans-I/O): register, heartbeat, notice loss, leave.

The bootnode is needed to meet peers, not to talk to them, so nothing here is fatal
once registered: a silent bootnode is reported as lost and registration resumes by
itself until it answers again; an UNKNOWN_TOKEN reply (the bootnode restarted and
forgot us) triggers a new registration at once. Only the very first registration can fail for good, after
REGISTER_TIMEOUTS_s, with a message that says what to check. Time is an argument;
datagrams for the bootnode accumulate in ``outbox`` and events in ``events``.

Every REGISTER proves possession of the client's static key with an HMAC under a key
shared with the bootnode's static key (X25519). The bootnode's public key comes in its
COOKIE; the link trusts the first one it sees unless a key was pinned (pin_bootnode_key:
the driver's pin file, or a setting), reports a newly learned key in ``learned_key`` for
the driver to remember, and refuses a COOKIE with any other key.

When the client's NAT gives it a new address, the bootnode does not move the
registration on a heartbeat's word: it answers the heartbeat with a REBIND_CHALLENGE,
which the link echoes at once (a HEARTBEAT with FLAG_REBIND) so that the new address is
proved after one round trip.
"""

from __future__ import annotations

import enum
import hashlib
import os
from collections.abc import Callable, Sequence

from gochat import events as ev
from gochat.constants import (
    HEARTBEAT_RETRIES,
    DEFAULT_REGISTER_TIMEOUT_s,
    DISCONNECT_RETRY_s,
    DISCONNECT_WAIT_s,
    HEARTBEAT_ACK_WAIT_MIN_s,
    REBIND_ANSWER_INTERVAL_s,
    REGISTER_RETRY_MAX_s,
    REGISTER_TIMEOUTS_s,
)
from gochat.crypto.identity import fingerprint
from gochat.crypto.noise import NoiseError, dh, public_key
from gochat.wire import control as wire
from gochat.wire.constants import FLAG_RELAY, PROOF_SIZE_bytes
from gochat.wire.control import FLAG_ACK_REQUESTED, FLAG_REBIND, MsgType, RefuseReason
from gochat.wire.endpoints import format_endpoint

_REPLIES = (MsgType.HEARTBEAT_ACK, MsgType.UNKNOWN_TOKEN, MsgType.DISCONNECT_ACK)


# TURN_CREDENTIALS offered in a REGISTERED and not received within TURN_WAIT_s (then twice
# as long each time) make the client send its REGISTER again, at most TURN_ASKS times.
TURN_WAIT_s = 1.0
TURN_ASKS = 5


def room_id_for(room: str) -> bytes:
    """The opaque room id the bootnode sees (it never learns the name)."""
    return hashlib.sha256(b"gochat room v1\0" + room.encode()).digest()[:16]


class LinkState(enum.Enum):
    REGISTERING = "registering"
    REGISTERED = "registered"
    FAILED = "failed"  # the first registration failed: the client cannot go on
    CLOSING = "closing"  # leaving: DISCONNECT sent, waiting for the ack
    CLOSED = "closed"


REGISTERING, REGISTERED, FAILED = LinkState.REGISTERING, LinkState.REGISTERED, LinkState.FAILED
CLOSING, CLOSED = LinkState.CLOSING, LinkState.CLOSED


class BootnodeLink:
    """Registration and heartbeats with one bootnode, in the room named ``room``.

    ``card`` is the peer's REGISTER card (wire.encode_card). After REGISTERED,
    ``room_tag``, ``public_endpoint``, ``rtt`` and the intervals in force are set.
    """

    def __init__(
        self,
        bootnode: wire.Endpoint,
        room: str,
        card: bytes,
        now: float,
        random_bytes: Callable[[int], bytes] = os.urandom,
        static_private: bytes | None = None,
        give_up_s: float = DEFAULT_REGISTER_TIMEOUT_s,
        alternatives: Sequence[wire.Endpoint] = (),
        relay: bool = True,
    ) -> None:
        # The bootnode's address; a name that resolves to several (localhost: 127.0.0.1
        # and ::1) gives ``alternatives``, tried in turn while registration goes unanswered.
        self.bootnode = bootnode
        self.addresses = list(dict.fromkeys([bootnode, *alternatives]))
        self.room = room
        self.room_id = room_id_for(room)
        self.card = card
        card_key, self.name, _ = wire.decode_card(card)
        if static_private is not None and public_key(static_private) != card_key:
            raise ValueError("the card's public key is not the static private key's")
        self._static_private = static_private
        self.fingerprint = fingerprint(card_key)
        # The bootnode's static public key: pinned, or learned from its first COOKIE.
        self.bootnode_key: bytes | None = None
        self.learned_key: bytes | None = None  # learned on first use: for the driver to remember
        self.learned_at: wire.Endpoint = bootnode  # the address that presented learned_key
        self._pins: dict[wire.Endpoint, tuple[bytes, str, str]] = {}  # address -> (key, where, unpin)
        self._pinned_where = "the key it presented earlier"  # where the expected key came from
        self._unpin = "restart the client"  # what to do when the bootnode's key really changed
        self._proof_key: bytes | None = None
        self._mismatch_reported: bytes | None = None
        self._random = random_bytes
        self.outbox: list[bytes] = []
        self.events: list[ev.Event] = []
        self.state = REGISTERING
        self.ever_registered = False
        self.lost = False
        self.cookie = bytes(16)
        self.token: bytes | None = None
        self.room_tag: bytes | None = None
        self.public_endpoint: wire.Endpoint | None = None
        self.heartbeat_interval = 10.0
        self.peer_timeout = 15.0
        self.rtt: float | None = None
        self.last_answer = now
        self._attempt = 0
        self._cookie_rounds = 0
        self._started = now
        self._give_up_s = give_up_s
        self._deadline = now
        self._close_deadline = now
        self._next_heartbeat: float | None = None
        self._heartbeat_sent: float | None = None
        self._heartbeat_retry_at: float | None = None  # the ACK is late: send the heartbeat again
        self._heartbeat_retries = 0
        self._rebind_answered: float | None = None
        self._request_id = 0
        self._resyncing = False
        self.room_digest: bytes | None = None  # the latest HEARTBEAT_ACK's membership digest
        self.want_relay = relay  # ask for a relay binding with every registration
        self.relay_id: bytes | None = None  # our binding, while registered with one
        self.turn_grant: wire.TurnGrant | None = None  # TURN credentials the bootnode minted for us
        self._sealed_turn: wire.TurnCredentials | None = None
        self._turn_wait: float | None = None  # TURN_CREDENTIALS were offered: ask again if none by then
        self._turn_asks = 0
        self._relay_refusal_told: object = None
        self._register(now, new_request=True)

    # --- outputs -----------------------------------------------------------------

    def _register(self, now: float, new_request: bool) -> None:
        if new_request:
            self._request_id = int.from_bytes(self._random(4), "big")
            self._cookie_rounds = 0
        self.outbox.append(self._register_bytes())
        if self.ever_registered:
            self._deadline = now + min(REGISTER_RETRY_MAX_s, REGISTER_TIMEOUTS_s[0] * 2**self._attempt)
        else:
            first = REGISTER_TIMEOUTS_s[self._attempt] if self._attempt < len(REGISTER_TIMEOUTS_s) else None
            wait = first if first is not None else REGISTER_RETRY_MAX_s
            self._deadline = min(now + wait, self._started + self._give_up_s)

    def _register_bytes(self) -> bytes:
        flags = FLAG_RELAY if self.want_relay else 0
        head = wire.header(MsgType.REGISTER, flags) + self.cookie + self._request_id.to_bytes(4, "big") + self.room_id
        signed = head + self.card
        if self._proof_key is None:  # the bootnode's key is not known yet: this only earns a COOKIE
            return signed + bytes(PROOF_SIZE_bytes)
        return signed + wire.register_proof(self._proof_key, signed)

    def rename(self, card: bytes, now: float, quiet: bool = False) -> None:
        """Register again with a new card (a new display name, or our TURN address): the
        bootnode replaces the registration and announces it to the room as a join.
        ``quiet``: no Registered event for it (nothing the user did)."""
        card_key, self.name, _ = wire.decode_card(card)
        if self._static_private is not None and public_key(self._static_private) != card_key:
            raise ValueError("the card's public key is not the static private key's")
        self.card = card
        if self.state in (REGISTERED, REGISTERING):
            self._resyncing = quiet and self.ever_registered
            self.state = REGISTERING
            self._attempt = 0
            self._register(now, new_request=True)

    # --- the bootnode's key ------------------------------------------------------

    def pin_bootnode_key(self, key: bytes, where: str, unpin: str, address: wire.Endpoint | None = None) -> None:
        """Accept only ``key`` from the bootnode at ``address`` (the current one when None).
        If it presents another, the error says ``where`` the pin came from and how to
        ``unpin`` it. Several bootnodes have a pin each."""
        address = self.bootnode if address is None else address
        self._pins[address] = (key, where, unpin)
        if address == self.bootnode:
            self._pinned_where, self._unpin = where, unpin
            self._use_key(key)

    def _switch_to(self, address: wire.Endpoint) -> None:
        """Register with another address of the bootnode list: its own pin (or none: its
        key is learned on first use), its own cookie."""
        if address == self.bootnode:
            return
        self.bootnode = address
        self.cookie = bytes(16)
        self._cookie_rounds = 0
        self.bootnode_key, self._proof_key = None, None
        pin = self._pins.get(address)
        if pin is not None:
            self._pinned_where, self._unpin = pin[1], pin[2]
            self._use_key(pin[0])

    def _use_key(self, key: bytes) -> bool:
        if self._static_private is None:
            self.bootnode_key = key
            return True
        try:
            shared = dh(self._static_private, key)
        except NoiseError:
            return False  # no bootnode holds such a key
        self.bootnode_key = key
        self._proof_key = wire.register_proof_key(shared)
        return True

    def _check_bootnode_key(self, key: bytes) -> bool:
        """Whether a COOKIE's key may be used: the pinned one, or the first one seen."""
        if self.bootnode_key is None:
            if not self._use_key(key):
                return False
            self.learned_key, self.learned_at = key, self.bootnode
            self._pins[self.bootnode] = (key, "the key it presented earlier", "restart the client")
            return True
        if key == self.bootnode_key:
            return True
        if self._mismatch_reported != key:  # once per key: the retries would repeat it
            self._mismatch_reported = key
            text = (
                f"bootnode {format_endpoint(self.bootnode)} presented the key {key.hex()}, "
                f"but this client expects {self.bootnode_key.hex()} ({self._pinned_where}). "
                "Someone may be impersonating the bootnode: not registering. If its operator "
                f"really replaced its key, {self._unpin}."
            )
            if not self.ever_registered:
                self.state = FAILED
                self.events.append(ev.Error(text, fatal=True))
            else:
                self.events.append(ev.Error(text))
        return False

    def heartbeat_soon(self, now: float) -> None:
        """Heartbeat (with an ACK) within a second: the room wants its digest again."""
        if self.state == REGISTERED and self._next_heartbeat is not None:
            self._next_heartbeat = min(self._next_heartbeat, now + HEARTBEAT_ACK_WAIT_MIN_s)

    def _ack_wait(self) -> float:
        return max(HEARTBEAT_ACK_WAIT_MIN_s, 3 * self.rtt) if self.rtt is not None else HEARTBEAT_ACK_WAIT_MIN_s

    def _token_message(self, msg_type: MsgType, flags: int = 0) -> bytes:
        assert self.token is not None
        return wire.header(msg_type, flags) + self.token

    # --- inputs ------------------------------------------------------------------

    def receive(self, msg: wire.Message, now: float) -> bool:
        """A decoded datagram that came from the bootnode's address. False when it was
        ignored (a late reply to an earlier request, or a type a client never gets)."""
        registering = self.state == REGISTERING
        if isinstance(msg, wire.Cookie):
            if registering and msg.request_id == self._request_id and self._cookie_rounds < 3:
                if not self._check_bootnode_key(msg.bootnode_key):
                    return True
                self.last_answer = now
                self.cookie = msg.cookie
                self._cookie_rounds += 1
                self.outbox.append(self._register_bytes())
                return True
        elif isinstance(msg, wire.Registered):
            if registering and msg.request_id == self._request_id:
                self._registered(msg, now)
                return True
        elif isinstance(msg, wire.Refused):
            if registering and msg.request_id == self._request_id:
                self.last_answer = now
                self._refused(msg, now)
                return True
        elif isinstance(msg, wire.TurnCredentials):
            return self._turn_credentials(msg)
        elif isinstance(msg, wire.TokenMessage) and msg.token == self.token and msg.type in _REPLIES:
            return self._token_reply(msg, now)
        elif isinstance(msg, wire.RebindChallenge) and self.state == REGISTERED:
            return self._rebind(msg, now)
        return False

    def _turn_credentials(self, msg: wire.TurnCredentials) -> bool:
        """Credentials for the bootnode's TURN server, sealed for us under our REGISTER's
        proof key and bound to our token: nobody else can read them, or make us use a
        TURN server of their choosing."""
        if self.token is None or self._proof_key is None or self.state != REGISTERED:
            self._sealed_turn = msg  # before its REGISTERED (UDP reorders): opened then
            return True
        try:
            self.turn_grant = wire.open_turn_credentials(wire.turn_credentials_key(self._proof_key), self.token, msg)
        except wire.DecodeError:
            return False
        return True

    def _rebind(self, msg: wire.RebindChallenge, now: float) -> bool:
        """Our heartbeat came from an address the bootnode has not seen us at (our NAT
        rebound): echo the challenge from here at once, so the bootnode moves us. At most
        one answer per REBIND_ANSWER_INTERVAL_s, so that forged challenges cannot make us
        flood the bootnode."""
        if self._rebind_answered is not None and now < self._rebind_answered + REBIND_ANSWER_INTERVAL_s:
            return False
        self._rebind_answered = now
        self.last_answer = now
        assert self.token is not None
        flags = FLAG_REBIND | FLAG_ACK_REQUESTED
        self.outbox.append(wire.encode(wire.TokenMessage(MsgType.HEARTBEAT, self.token, flags, msg.challenge)))
        self._heartbeat_sent = now
        return True

    def resync(self, now: float) -> None:
        """Ask for the room's member list again (the room's digest says we missed an
        announcement): the same registration again, which the bootnode answers with its
        reply and the list, announcing nothing. Quiet: no Registered event."""
        if self.state == REGISTERED:
            self._resyncing = True
            self.state = REGISTERING
            self._attempt = 0
            self._register(now, new_request=True)

    def _registered(self, msg: wire.Registered, now: float) -> None:
        quiet, self._resyncing = self._resyncing and self.ever_registered, False
        self.state = REGISTERED
        self.token, self.room_tag = msg.token, msg.room_tag
        self.relay_id = msg.relay_id or None
        self._turn_wait = None
        if msg.turn_offered and self.turn_grant is None and self._turn_asks < TURN_ASKS:
            # its TURN_CREDENTIALS may be lost (UDP): without them by then, the same
            # REGISTER again (a retry: the bootnode sends them again and announces nothing)
            self._turn_wait = now + TURN_WAIT_s * 2**self._turn_asks
        sealed, self._sealed_turn = self._sealed_turn, None
        if sealed is not None:  # (state is REGISTERED already: it opens now)
            self._turn_credentials(sealed)
        if msg.relay_refused is not None and self._relay_refusal_told != msg.relay_refused:
            self._relay_refusal_told = msg.relay_refused
            self.events.append(
                ev.Notice(
                    f"bootnode {format_endpoint(self.bootnode)} gives no relay binding "
                    f"({msg.relay_refused.name.lower()}): peers that cannot punch through to us can reach us "
                    "only through TURN, if it offers one"
                )
            )
        self.heartbeat_interval = msg.heartbeat_interval_ms / 1000.0
        self.peer_timeout = msg.peer_timeout_ms / 1000.0
        self.public_endpoint = msg.observed_endpoint
        self.last_answer = now
        self._attempt = 0
        # The first heartbeat soon: its ACK's room digest tells at once whether the
        # member list (or an announcement about us) was lost on the way.
        self._next_heartbeat = now + min(HEARTBEAT_ACK_WAIT_MIN_s, self.heartbeat_interval)
        if self.lost:
            self.lost = False
            self.events.append(ev.BootnodeRestored())
        if quiet:
            return
        self.events.append(
            ev.Registered(
                self.room,
                self.name,
                format_endpoint(msg.observed_endpoint),
                self.fingerprint,
                again=self.ever_registered,
            )
        )
        self.ever_registered = True

    def _refused(self, msg: wire.Refused, now: float) -> None:
        try:
            reason = RefuseReason(msg.reason).name.lower()
        except ValueError:
            reason = f"reason {msg.reason}"
        text = (
            f"bootnode {format_endpoint(self.bootnode)} refused the registration: {reason}"
            f" (retry after {msg.retry_after_ms / 1000:g} s)"
        )
        if not self.ever_registered:
            self.state = FAILED
            self.events.append(ev.Error(text, fatal=True))
            return
        self.events.append(ev.Error(text))
        self._deadline = now + max(msg.retry_after_ms / 1000.0, REGISTER_TIMEOUTS_s[0])

    def _token_reply(self, msg: wire.TokenMessage, now: float) -> bool:
        if msg.type is MsgType.HEARTBEAT_ACK and self.state == REGISTERED:
            self.last_answer = now
            self.room_digest = msg.digest
            self._heartbeat_retry_at = None
            if self._heartbeat_sent is not None:
                self.rtt = now - self._heartbeat_sent
                self._heartbeat_sent = None
        elif msg.type is MsgType.UNKNOWN_TOKEN and self.state == REGISTERED:
            # The bootnode forgot us (restarted, or we were silent too long): register anew.
            self.last_answer = now
            self.state = REGISTERING
            self.token = None
            self.relay_id = None
            self._attempt = 0
            self.events.append(ev.BootnodeReregistering("unknown_session"))
            self._register(now, new_request=True)
        elif msg.type is MsgType.DISCONNECT_ACK and self.state == CLOSING:
            self.state = CLOSED
        else:
            return False
        return True

    # --- timers ------------------------------------------------------------------

    def get_timer(self) -> float | None:
        if self.state == REGISTERING:
            return self._deadline
        if self.state == REGISTERED:
            assert self._next_heartbeat is not None
            due = min(self._next_heartbeat, self.last_answer + self.peer_timeout)
            if self._turn_wait is not None:
                due = min(due, self._turn_wait)
            return due if self._heartbeat_retry_at is None else min(due, self._heartbeat_retry_at)
        if self.state == CLOSING:
            return min(self._deadline, self._close_deadline)
        return None

    def handle_timer(self, now: float) -> None:
        if self.state == REGISTERING and now >= self._deadline:
            self._attempt += 1
            if not self.ever_registered:
                waited = now - self._started
                if waited >= self._give_up_s:
                    self.state = FAILED
                    self.events.append(
                        ev.Error(
                            f"bootnode {format_endpoint(self.bootnode)} did not answer after {self._attempt} tries "
                            f"over {waited:.0f} s: is it running and reachable over UDP? (REGISTER_TIMEOUT sets "
                            "how long to try)",
                            fatal=True,
                        )
                    )
                    return
                self.events.append(
                    ev.BootnodeUnanswered(
                        format_endpoint(self.bootnode), self._attempt, round(waited, 1), self._give_up_s
                    )
                )
            self._check_lost(now)
            if len(self.addresses) > 1:  # unanswered here: the next address (of the name, or bootnode)
                self._switch_to(self.addresses[(self.addresses.index(self.bootnode) + 1) % len(self.addresses)])
            self._register(now, new_request=False)
        elif self.state == REGISTERED:
            if self._check_lost(now):
                self.state = REGISTERING
                self._attempt = 0
                self._register(now, new_request=True)
                return
            if self._turn_wait is not None and now >= self._turn_wait:
                self._turn_wait = None
                if self.turn_grant is None:
                    self._turn_asks += 1
                    self.resync(now)
                    return
            assert self._next_heartbeat is not None
            if now >= self._next_heartbeat:
                self.outbox.append(self._token_message(MsgType.HEARTBEAT, FLAG_ACK_REQUESTED))
                self._heartbeat_sent = now
                self._next_heartbeat = now + self.heartbeat_interval
                self._heartbeat_retries = 0
                self._heartbeat_retry_at = now + self._ack_wait()
            elif self._heartbeat_retry_at is not None and now >= self._heartbeat_retry_at:
                self.outbox.append(self._token_message(MsgType.HEARTBEAT, FLAG_ACK_REQUESTED))
                self._heartbeat_sent = None  # Karn: an ACK now times no particular one
                self._heartbeat_retries += 1
                more = self._heartbeat_retries < HEARTBEAT_RETRIES
                self._heartbeat_retry_at = now + self._ack_wait() if more else None
        elif self.state == CLOSING:
            if now >= self._close_deadline:
                self.state = CLOSED
            elif now >= self._deadline:
                self.outbox.append(self._token_message(MsgType.DISCONNECT))
                self._deadline = now + DISCONNECT_RETRY_s

    def _check_lost(self, now: float) -> bool:
        if self.ever_registered and not self.lost and now >= self.last_answer + self.peer_timeout:
            self.lost = True
            self.events.append(ev.BootnodeLost())
            return True
        return False

    # --- leaving -----------------------------------------------------------------

    def disconnect(self, now: float) -> None:
        """Leave: DISCONNECT until acknowledged or DISCONNECT_WAIT_s passed; then CLOSED."""
        if self.state == REGISTERED and not self.lost:
            self.state = CLOSING
            self.outbox.append(self._token_message(MsgType.DISCONNECT))
            self._deadline = now + DISCONNECT_RETRY_s
            self._close_deadline = now + DISCONNECT_WAIT_s
        elif self.state != CLOSING:
            self.state = CLOSED

    @property
    def closed(self) -> bool:
        return self.state in (CLOSED, FAILED)
