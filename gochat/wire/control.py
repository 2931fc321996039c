"""Wire protocol v1: message values and their exact encoding (pure-Python reference).

This module owns the byte layouts described in docs/PROTOCOL.md and nothing else: it
does no I/O and keeps no state. Every decoder raises only :class:`DecodeError`, whose
``reason`` is a short stable string used as a counter label. The Cython fast path
frames the hot messages (heartbeats) itself; tests check it against this module.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
import socket
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gochat.wire import constants as C
from gochat.wire.constants import (
    FLAG_ACK_REQUESTED as FLAG_ACK_REQUESTED,  # re-exported: callers use wire.FLAG_ACK_REQUESTED
)
from gochat.wire.constants import (
    FLAG_REBIND as FLAG_REBIND,  # re-exported: callers use wire.FLAG_REBIND
)
from gochat.wire.constants import (
    MAGIC,
    MAX_LOCAL_ENDPOINTS,
    REGISTER_PROOF_LABEL,
    VERSION,
    CHALLENGE_SIZE_bytes,
    COOKIE_SIZE_bytes,
    HEADER_SIZE_bytes,
    MAX_DATAGRAM_bytes,
    MAX_NAME_bytes,
    PROOF_SIZE_bytes,
    PUBLIC_KEY_SIZE_bytes,
    ROOM_DIGEST_SIZE_bytes,
    ROOM_ID_SIZE_bytes,
    ROOM_TAG_SIZE_bytes,
    TOKEN_SIZE_bytes,
)
from gochat.wire.endpoints import V4_MAPPED_PREFIX as _V4_MAPPED
from gochat.wire.endpoints import endpoint_key, key_endpoint

Endpoint = tuple[str, int]
"""An (IP address text, port) pair; IPv4-mapped IPv6 addresses are shown as IPv4."""


class DecodeError(ValueError):
    """A datagram that is not a valid v1 message. ``reason`` is a counter label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


# Every ``DecodeError.reason`` the decoders raise (docs/PROTOCOL.md, section 6).
DECODE_REASONS = ("truncated", "oversized", "bad_magic", "bad_version", "unknown_type", "trailing_bytes", "bad_field")


def room_digest(keys: Iterable[bytes]) -> bytes:
    """A room's membership digest, as HEARTBEAT_ACK carries it: the bytewise XOR of the
    first ROOM_DIGEST_SIZE_bytes of every member's public key."""
    d = 0
    for key in keys:
        d ^= int.from_bytes(key[:ROOM_DIGEST_SIZE_bytes], "little")
    return d.to_bytes(ROOM_DIGEST_SIZE_bytes, "little")


class MsgType(enum.IntEnum):
    """Control-plane message types; the values are those of gochat.wire.constants."""

    REGISTER = C.T_REGISTER
    COOKIE = C.T_COOKIE
    REGISTERED = C.T_REGISTERED
    REFUSED = C.T_REFUSED
    HEARTBEAT = C.T_HEARTBEAT
    HEARTBEAT_ACK = C.T_HEARTBEAT_ACK
    UNKNOWN_TOKEN = C.T_UNKNOWN_TOKEN
    DISCONNECT = C.T_DISCONNECT
    DISCONNECT_ACK = C.T_DISCONNECT_ACK
    PEER_LIST = C.T_PEER_LIST
    PEER_JOINED = C.T_PEER_JOINED
    PEER_LEFT = C.T_PEER_LEFT
    REBIND_CHALLENGE = C.T_REBIND_CHALLENGE
    RELAY = C.T_RELAY
    RELAYED = C.T_RELAYED
    RELAY_REFUSED = C.T_RELAY_REFUSED
    TURN_CREDENTIALS = C.T_TURN_CREDENTIALS


class RefuseReason(enum.IntEnum):
    SERVER_FULL = 1
    ROOM_FULL = 2
    RATE_LIMITED = 3
    BAD_PROOF = 4  # the REGISTER's proof of possession of its key does not check
    SOURCE_FULL = 5  # the source IP holds MAX_PEERS_PER_SOURCE registrations in the room


class RelayRefuseReason(enum.IntEnum):
    """Why a relay binding was not made (REGISTERED) or a RELAY not forwarded (RELAY_REFUSED)."""

    NOT_BOUND = 1  # the sender's registration has no binding
    NO_SUCH_PEER = 2  # the destination is not a binding in the sender's room (it left, or moved)
    RATE_LIMITED = 3  # the sender's bytes per second (burst) are spent
    BUSY = 4  # the bootnode's total relayed bandwidth is spent
    DISABLED = 5  # this bootnode does not relay
    SOURCE_FULL = 6  # the source IP holds the most bindings one IP may
    FULL = 7  # the bootnode holds the most bindings it serves


class LeaveReason(enum.IntEnum):
    DISCONNECTED = 1
    TIMED_OUT = 2


_HEADER = struct.Struct("!BBBB")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_CONTROL_CHARS = re.compile("[\x00-\x1f\x7f]")
_REGISTER_HEAD = struct.Struct("!16sI16s32s")
REGISTER_CARD_OFFSET = HEADER_SIZE_bytes + _REGISTER_HEAD.size - PUBLIC_KEY_SIZE_bytes
"""A valid Register's bytes from here up to the proof are exactly the card the bootnode stores."""
_FAMILY_V4 = 4
_FAMILY_V6 = 6


# --- values -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PeerEntry:
    """A room member as announced by the bootnode.

    Fields: ``public_key`` (32 bytes), ``name`` (display name, <= 32 UTF-8 bytes),
    ``endpoints`` (the observed public endpoint first, then the peer's local ones).
    """

    public_key: bytes
    name: str
    endpoints: tuple[Endpoint, ...]
    relay: bytes = b""  # the member's relay binding (8-byte relay id), if it has one
    turn: Endpoint | None = None  # the member's TURN relayed address, if it announced one


@dataclass(frozen=True, slots=True)
class Register:
    """Fields: cookie (16 bytes, zero when the client has none yet), request_id,
    room_id (16-byte opaque hash), public_key, name, local_endpoints, proof (16 bytes:
    HMAC of everything before it under the client's proof key, see register_proof; zero
    when the client does not know the bootnode's key yet)."""

    cookie: bytes
    request_id: int
    room_id: bytes
    public_key: bytes
    name: str
    local_endpoints: tuple[Endpoint, ...] = ()
    proof: bytes = bytes(PROOF_SIZE_bytes)
    relay: bool = False  # FLAG_RELAY: ask for a relay binding too
    turn: Endpoint | None = None  # the client's TURN relayed address, announced with its card


@dataclass(frozen=True, slots=True)
class Cookie:
    """Fields: request_id (echoed), cookie (16 bytes to put in the next Register),
    bootnode_key (the bootnode's static X25519 public key, 32 bytes)."""

    request_id: int
    cookie: bytes
    bootnode_key: bytes


@dataclass(frozen=True, slots=True)
class Registered:
    """Fields: request_id, token (12 bytes), room_tag (8 bytes), heartbeat_interval_ms,
    peer_timeout_ms, observed_endpoint."""

    request_id: int
    token: bytes
    room_tag: bytes
    heartbeat_interval_ms: int
    peer_timeout_ms: int
    observed_endpoint: Endpoint
    relay_id: bytes = b""  # FLAG_RELAY_BOUND: the binding's relay id (8 bytes) ...
    relay_rate: int = 0  # ... and what it may relay: bytes per second ...
    relay_burst: int = 0  # ... and at once
    relay_refused: RelayRefuseReason | None = None  # FLAG_RELAY_REFUSED: why there is none
    turn_offered: bool = False  # FLAG_TURN_OFFERED: TURN_CREDENTIALS follow


@dataclass(frozen=True, slots=True)
class Refused:
    """Fields: request_id, reason (RefuseReason), retry_after_ms."""

    request_id: int
    reason: RefuseReason
    retry_after_ms: int


@dataclass(frozen=True, slots=True)
class TokenMessage:
    """HEARTBEAT, HEARTBEAT_ACK, UNKNOWN_TOKEN, DISCONNECT, DISCONNECT_ACK: a token.
    A HEARTBEAT with FLAG_REBIND also carries ``challenge`` (12 bytes, the one of a
    REBIND_CHALLENGE); a HEARTBEAT_ACK carries ``digest`` (8 bytes: the room's
    membership digest); every other has neither."""

    type: MsgType
    token: bytes
    flags: int = 0
    challenge: bytes = b""
    digest: bytes = b""


@dataclass(frozen=True, slots=True)
class RebindChallenge:
    """The answer to a heartbeat from a source other than the registration's endpoint:
    ``challenge`` (12 bytes) to echo from there in a HEARTBEAT with FLAG_REBIND."""

    challenge: bytes


@dataclass(frozen=True, slots=True)
class PeerList:
    """Fields: room_tag, part (0-based), parts, peers. Sent to a newcomer."""

    room_tag: bytes
    part: int
    parts: int
    peers: tuple[PeerEntry, ...]


@dataclass(frozen=True, slots=True)
class PeerJoined:
    """Fields: room_tag, peers. Sent to existing members when someone (re)joins."""

    room_tag: bytes
    peers: tuple[PeerEntry, ...]


@dataclass(frozen=True, slots=True)
class PeerLeft:
    """Fields: room_tag, left: tuple of (public_key, LeaveReason)."""

    room_tag: bytes
    left: tuple[tuple[bytes, LeaveReason], ...]


@dataclass(frozen=True, slots=True)
class Relay:
    """A peer datagram for the bootnode to forward: the sender's ``token``, the
    destination's relay id ``to`` (8 bytes) and the opaque ``payload`` (already
    end-to-end encrypted or authenticated by the peers; at least 1 byte)."""

    token: bytes
    to: bytes
    payload: bytes


@dataclass(frozen=True, slots=True)
class Relayed:
    """A forwarded peer datagram: the relay id of the binding that sent it (``sender``)
    and the ``payload`` as it was sent."""

    sender: bytes
    payload: bytes


@dataclass(frozen=True, slots=True)
class RelayRefused:
    """A RELAY that was not forwarded: ``reason``, ``retry_after_ms`` and the relay id
    it is about (the destination; zeros when about the sender's own binding)."""

    reason: RelayRefuseReason
    retry_after_ms: int
    relay_id: bytes


@dataclass(frozen=True, slots=True)
class TurnCredentials:
    """A TURN server and credentials for it, as a bootnode mints them (sealed on the
    wire: ``nonce`` and ``sealed``; open_turn_credentials reads them)."""

    nonce: bytes
    sealed: bytes


@dataclass(frozen=True, slots=True)
class TurnGrant:
    """What TURN_CREDENTIALS says, opened: the server's URL, a username and password
    valid until ``expires`` (Unix seconds)."""

    expires: int
    url: str
    username: str
    password: str


Message = (
    Register
    | Cookie
    | Registered
    | Refused
    | TokenMessage
    | RebindChallenge
    | PeerList
    | PeerJoined
    | PeerLeft
    | Relay
    | Relayed
    | RelayRefused
    | TurnCredentials
)

TOKEN_TYPES = frozenset(
    {
        MsgType.HEARTBEAT,
        MsgType.HEARTBEAT_ACK,
        MsgType.UNKNOWN_TOKEN,
        MsgType.DISCONNECT,
        MsgType.DISCONNECT_ACK,
    }
)


# --- endpoints ----------------------------------------------------------------------


def normalize_host(host: str) -> str:
    """Canonical text of an IP address; IPv4-mapped IPv6 becomes plain IPv4."""
    return key_endpoint(*endpoint_key((host, 1)))[0]


def encode_endpoint(endpoint: Endpoint) -> bytes:
    """family (4|6), address, port. IPv4-mapped IPv6 is sent as IPv4."""
    port = endpoint[1]
    if not 0 < port < 65536:
        raise ValueError(f"port out of range: {port}")
    try:
        key, _ = endpoint_key(endpoint)
    except OSError:
        raise ValueError(f"not an IP address: {endpoint[0]!r}") from None
    if key[:12] == _V4_MAPPED:
        return b"\x04" + key[12:] + _U16.pack(port)
    return b"\x06" + key + _U16.pack(port)


class _Reader:
    """Cursor over a datagram body; every shortfall is a DecodeError('truncated')."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes, pos: int) -> None:
        self.data = data
        self.pos = pos

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise DecodeError("truncated", f"need {end} bytes, have {len(self.data)}")
        chunk = self.data[self.pos : end]
        self.pos = end
        return bytes(chunk)

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def u32(self) -> int:
        return int.from_bytes(self.take(4), "big")

    def endpoint(self) -> Endpoint:
        family = self.u8()
        if family == _FAMILY_V4:
            addr = socket.inet_ntop(socket.AF_INET, self.take(4))
        elif family == _FAMILY_V6:
            addr = key_endpoint(self.take(16), 0)[0]
        else:
            raise DecodeError("bad_field", f"address family {family}")
        port = self.u16()
        if port == 0:
            raise DecodeError("bad_field", "port 0")
        return (addr, port)

    def name(self) -> str:
        n = self.u8()
        if n > MAX_NAME_bytes:
            raise DecodeError("bad_field", f"name of {n} bytes")
        raw = self.take(n)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise DecodeError("bad_field", "name is not UTF-8") from None
        if not text or _CONTROL_CHARS.search(text):
            raise DecodeError("bad_field", "name empty or with control characters")
        return text

    def endpoints(self, limit: int) -> tuple[Endpoint, ...]:
        n = self.u8()
        if n > limit:
            raise DecodeError("bad_field", f"{n} endpoints")
        return tuple(self.endpoint() for _ in range(n))

    def card_endpoints(self) -> tuple[tuple[Endpoint, ...], Endpoint | None]:
        """A card's local endpoints (at most 4), then its TURN relayed address if any."""
        n = self.u8()
        if n > MAX_LOCAL_ENDPOINTS + 1:
            raise DecodeError("bad_field", f"{n} endpoints")
        locals_: list[Endpoint] = []
        turn = None
        for k in range(n):
            if k == n - 1 and self.pos < len(self.data) and self.data[self.pos] == C.FAMILY_TURN:
                self.pos += 1
                turn = self.endpoint()
            elif k == MAX_LOCAL_ENDPOINTS:
                raise DecodeError("bad_field", f"{n} endpoints")
            else:
                locals_.append(self.endpoint())
        return tuple(locals_), turn

    def peer_entry(self) -> PeerEntry:
        """Key, name, then the public endpoint, the local ones and, last, the relay
        binding if the member has one (family FAMILY_RELAY and its 8-byte relay id)."""
        key = self.take(PUBLIC_KEY_SIZE_bytes)
        name = self.name()
        n = self.u8()
        if n > MAX_LOCAL_ENDPOINTS + 3:
            raise DecodeError("bad_field", f"{n} endpoints")
        endpoints = []
        relay = b""
        turn = None
        for k in range(n):
            family = self.data[self.pos] if self.pos < len(self.data) else None
            if family == C.FAMILY_RELAY:
                if k != n - 1 or k == 0:
                    raise DecodeError("bad_field", "a relay binding must come last, after the public endpoint")
                self.pos += 1
                relay = self.take(C.RELAY_ID_SIZE_bytes)
            elif family == C.FAMILY_TURN:
                if k == 0 or turn is not None:
                    raise DecodeError("bad_field", "one TURN address at most, after the public endpoint")
                self.pos += 1
                turn = self.endpoint()
            elif turn is not None:
                raise DecodeError("bad_field", "a TURN address must follow the local endpoints")
            else:
                endpoints.append(self.endpoint())
        if len(endpoints) > MAX_LOCAL_ENDPOINTS + 1:
            raise DecodeError("bad_field", f"{len(endpoints)} endpoints")
        return PeerEntry(key, name, tuple(endpoints), relay, turn)

    def rest(self) -> bytes:
        """Everything left (a relayed payload: at least one byte)."""
        if self.pos >= len(self.data):
            raise DecodeError("truncated", "no payload")
        out = self.data[self.pos :]
        self.pos = len(self.data)
        return out

    def done(self) -> None:
        if self.pos != len(self.data):
            raise DecodeError("trailing_bytes", f"{len(self.data) - self.pos} extra")


# --- encoding -------------------------------------------------------------------------


def header(msg_type: int, flags: int = 0) -> bytes:
    return _HEADER.pack(MAGIC, VERSION, msg_type, flags)


def encode_name(name: str) -> bytes:
    raw = name.encode("utf-8")
    if not raw or len(raw) > MAX_NAME_bytes:
        raise ValueError(f"name must be 1..{MAX_NAME_bytes} UTF-8 bytes")
    return bytes([len(raw)]) + raw


def encode_card(
    public_key: bytes, name: str, local_endpoints: Sequence[Endpoint], turn: Endpoint | None = None
) -> bytes:
    """What the bootnode stores per peer: key, name, local endpoints and the TURN
    relayed address if there is one (entry minus the public endpoint, which it learns
    from the socket and may change)."""
    if len(public_key) != PUBLIC_KEY_SIZE_bytes:
        raise ValueError("public key must be 32 bytes")
    if len(local_endpoints) > MAX_LOCAL_ENDPOINTS:
        raise ValueError(f"at most {MAX_LOCAL_ENDPOINTS} local endpoints")
    tail = bytes([C.FAMILY_TURN]) + encode_endpoint(turn) if turn is not None else b""
    return (
        public_key
        + encode_name(name)
        + bytes([len(local_endpoints) + bool(tail)])
        + b"".join(encode_endpoint(e) for e in local_endpoints)
        + tail
    )


def entry_from_card(card: bytes, public_endpoint: Endpoint, relay_id: bytes = b"") -> bytes:
    """Wire PeerEntry: the card with the public endpoint put first (and the relay
    binding last, if there is one)."""
    name_end = PUBLIC_KEY_SIZE_bytes + 1 + card[PUBLIC_KEY_SIZE_bytes]
    n_local = card[name_end]
    relay = bytes([C.FAMILY_RELAY]) + relay_id if relay_id else b""
    return (
        card[:name_end]
        + bytes([n_local + 1 + bool(relay)])
        + encode_endpoint(public_endpoint)
        + card[name_end + 1 :]
        + relay
    )


def encode_peer_entry(entry: PeerEntry) -> bytes:
    relay = b""
    if entry.relay:
        _check_len(entry.relay, C.RELAY_ID_SIZE_bytes, "relay id")
        relay = bytes([C.FAMILY_RELAY]) + entry.relay
    turn = bytes([C.FAMILY_TURN]) + encode_endpoint(entry.turn) if entry.turn is not None else b""
    return (
        entry.public_key
        + encode_name(entry.name)
        + bytes([len(entry.endpoints) + bool(turn) + bool(relay)])
        + b"".join(encode_endpoint(e) for e in entry.endpoints)
        + turn
        + relay
    )


def relay_grant(relay_id: bytes, rate: int, burst: int) -> tuple[int, bytes]:
    """REGISTERED's flags and trailer for a binding made with the registration."""
    _check_len(relay_id, C.RELAY_ID_SIZE_bytes, "relay id")
    return C.FLAG_RELAY_BOUND, relay_id + _U32.pack(rate) + _U32.pack(burst)


def relay_refusal(reason: RelayRefuseReason) -> tuple[int, bytes]:
    """REGISTERED's flags and trailer when the binding asked for was not made."""
    return C.FLAG_RELAY_REFUSED, bytes([int(reason)])


def turn_credentials_key(proof_key: bytes) -> bytes:
    """The key that seals TURN_CREDENTIALS: only the registered client (and the
    bootnode) hold the REGISTER's proof key."""
    return hashlib.sha256(C.TURN_CREDENTIALS_LABEL + proof_key).digest()


def _short_text(text: str, what: str) -> bytes:
    raw = text.encode("utf-8")
    if len(raw) > 255:
        raise ValueError(f"{what} longer than 255 bytes")
    return bytes([len(raw)]) + raw


def seal_turn_credentials(key: bytes, token: bytes, grant: TurnGrant, nonce: bytes) -> bytes:
    """TURN_CREDENTIALS: nonce (12), then AES-256-GCM(key, nonce, expires (8) + url +
    username + password (each a length byte and UTF-8), ad = header + token)."""
    _check_len(nonce, C.TURN_NONCE_SIZE_bytes, "nonce")
    head = header(MsgType.TURN_CREDENTIALS)
    plain = (
        grant.expires.to_bytes(8, "big")
        + _short_text(grant.url, "url")
        + _short_text(grant.username, "username")
        + _short_text(grant.password, "password")
    )
    return head + nonce + AESGCM(key).encrypt(nonce, plain, head + token)


def open_turn_credentials(key: bytes, token: bytes, msg: TurnCredentials) -> TurnGrant:
    """Raises DecodeError("bad_field") when it does not open under our key and token."""
    try:
        plain = AESGCM(key).decrypt(msg.nonce, msg.sealed, header(MsgType.TURN_CREDENTIALS) + token)
    except (InvalidTag, ValueError):
        raise DecodeError("bad_field", "TURN credentials do not open under our key") from None
    r = _Reader(plain, 8)
    texts = []
    for _ in range(3):
        n = r.u8()
        try:
            texts.append(r.take(n).decode("utf-8"))
        except UnicodeDecodeError:
            raise DecodeError("bad_field", "TURN credentials are not UTF-8") from None
    r.done()
    return TurnGrant(int.from_bytes(plain[:8], "big"), *texts)


def encode_relay(token: bytes, to: bytes, payload: bytes) -> bytes:
    return header(MsgType.RELAY) + token + to + payload


def encode_relayed(sender: bytes, payload: bytes) -> bytes:
    return header(MsgType.RELAYED) + sender + payload


def encode_relay_refused(reason: int, retry_after_ms: int, relay_id: bytes) -> bytes:
    return header(MsgType.RELAY_REFUSED) + bytes([reason]) + _U32.pack(retry_after_ms) + relay_id


_REGISTERED_HEAD = struct.Struct("!BBBBI12s8sII")


def encode_registered(
    request_id: int,
    token: bytes,
    room_tag: bytes,
    heartbeat_ms: int,
    timeout_ms: int,
    observed: bytes,
    relay: tuple[int, bytes] = (0, b""),
) -> bytes:
    """REGISTERED with the observed endpoint already in wire form (encode_endpoint);
    ``relay`` is (flags, trailer) from relay_grant or relay_refusal, if one was asked for."""
    _check_len(token, TOKEN_SIZE_bytes, "token")
    _check_len(room_tag, ROOM_TAG_SIZE_bytes, "room_tag")
    flags, trailer = relay
    return (
        _REGISTERED_HEAD.pack(
            MAGIC, VERSION, MsgType.REGISTERED, flags, request_id, token, room_tag, heartbeat_ms, timeout_ms
        )
        + observed
        + trailer
    )


def encode(msg: Message) -> bytes:
    """Encode a message value. Raises ValueError for values the format cannot carry."""
    if isinstance(msg, TokenMessage):
        _check_len(msg.token, TOKEN_SIZE_bytes, "token")
        if msg.type is MsgType.HEARTBEAT and msg.flags & FLAG_REBIND:
            _check_len(msg.challenge, CHALLENGE_SIZE_bytes, "challenge")
        elif msg.challenge:
            raise ValueError("only a HEARTBEAT with FLAG_REBIND carries a challenge")
        if msg.type is MsgType.HEARTBEAT_ACK:
            _check_len(msg.digest, ROOM_DIGEST_SIZE_bytes, "digest")
        elif msg.digest:
            raise ValueError("only a HEARTBEAT_ACK carries a digest")
        return header(msg.type, msg.flags) + msg.token + msg.challenge + msg.digest
    if isinstance(msg, RebindChallenge):
        _check_len(msg.challenge, CHALLENGE_SIZE_bytes, "challenge")
        return header(MsgType.REBIND_CHALLENGE) + msg.challenge
    if isinstance(msg, Register):
        _check_len(msg.proof, PROOF_SIZE_bytes, "proof")
        return _register_body(msg) + msg.proof
    if isinstance(msg, Cookie):
        _check_len(msg.cookie, COOKIE_SIZE_bytes, "cookie")
        _check_len(msg.bootnode_key, PUBLIC_KEY_SIZE_bytes, "bootnode key")
        return header(MsgType.COOKIE) + _U32.pack(msg.request_id) + msg.cookie + msg.bootnode_key
    if isinstance(msg, Registered):
        relay: tuple[int, bytes] = (0, b"")
        if msg.relay_id:
            relay = relay_grant(msg.relay_id, msg.relay_rate, msg.relay_burst)
        elif msg.relay_refused is not None:
            relay = relay_refusal(msg.relay_refused)
        if msg.turn_offered:
            relay = (relay[0] | C.FLAG_TURN_OFFERED, relay[1])
        return encode_registered(
            msg.request_id,
            msg.token,
            msg.room_tag,
            msg.heartbeat_interval_ms,
            msg.peer_timeout_ms,
            encode_endpoint(msg.observed_endpoint),
            relay,
        )
    if isinstance(msg, Relay):
        _check_len(msg.token, TOKEN_SIZE_bytes, "token")
        _check_len(msg.to, C.RELAY_ID_SIZE_bytes, "relay id")
        if not msg.payload or C.RELAY_OVERHEAD_bytes + len(msg.payload) > MAX_DATAGRAM_bytes:
            raise ValueError("a relayed payload is 1 byte or more, within the datagram limit")
        return encode_relay(msg.token, msg.to, msg.payload)
    if isinstance(msg, Relayed):
        _check_len(msg.sender, C.RELAY_ID_SIZE_bytes, "relay id")
        return encode_relayed(msg.sender, msg.payload)
    if isinstance(msg, RelayRefused):
        _check_len(msg.relay_id, C.RELAY_ID_SIZE_bytes, "relay id")
        return encode_relay_refused(int(msg.reason), msg.retry_after_ms, msg.relay_id)
    if isinstance(msg, Refused):
        return (
            header(MsgType.REFUSED)
            + _U32.pack(msg.request_id)
            + bytes([int(msg.reason)])
            + _U32.pack(msg.retry_after_ms)
        )
    if isinstance(msg, PeerList):
        return encode_peer_list(msg.room_tag, msg.part, msg.parts, [encode_peer_entry(p) for p in msg.peers])
    if isinstance(msg, PeerJoined):
        return encode_peer_joined(msg.room_tag, [encode_peer_entry(p) for p in msg.peers])
    if isinstance(msg, PeerLeft):
        return encode_peer_left(msg.room_tag, msg.left)
    raise TypeError(f"not a message: {msg!r}")


def _register_body(msg: Register) -> bytes:
    """A REGISTER's bytes before the proof: what the proof covers."""
    _check_len(msg.cookie, COOKIE_SIZE_bytes, "cookie")
    _check_len(msg.room_id, ROOM_ID_SIZE_bytes, "room_id")
    return (
        header(MsgType.REGISTER, C.FLAG_RELAY if msg.relay else 0)
        + msg.cookie
        + _U32.pack(msg.request_id)
        + msg.room_id
        + encode_card(msg.public_key, msg.name, msg.local_endpoints, msg.turn)
    )


def register_proof_key(shared_secret: bytes) -> bytes:
    """The key of a REGISTER's proof: SHA-256(label || X25519(client static private,
    bootnode static public)). Only the holder of the client's private key (or of the
    bootnode's) can compute it."""
    return hashlib.sha256(REGISTER_PROOF_LABEL + shared_secret).digest()


def register_proof(proof_key: bytes, signed: bytes) -> bytes:
    """HMAC-SHA256(proof key, every byte of the REGISTER before the proof)[0:16]."""
    return hmac.digest(proof_key, signed, "sha256")[:PROOF_SIZE_bytes]


def encode_signed_register(msg: Register, proof_key: bytes) -> bytes:
    """A REGISTER whose proof is computed here (msg.proof is ignored)."""
    body = _register_body(msg)
    return body + register_proof(proof_key, body)


def encode_peer_list(room_tag: bytes, part: int, parts: int, entries: Sequence[bytes]) -> bytes:
    _check_len(room_tag, ROOM_TAG_SIZE_bytes, "room_tag")
    return (
        header(MsgType.PEER_LIST)
        + room_tag
        + _U16.pack(part)
        + _U16.pack(parts)
        + bytes([len(entries)])
        + b"".join(entries)
    )


def encode_peer_joined(room_tag: bytes, entries: Sequence[bytes]) -> bytes:
    _check_len(room_tag, ROOM_TAG_SIZE_bytes, "room_tag")
    return header(MsgType.PEER_JOINED) + room_tag + bytes([len(entries)]) + b"".join(entries)


def encode_peer_left(room_tag: bytes, left: Sequence[tuple[bytes, int]]) -> bytes:
    _check_len(room_tag, ROOM_TAG_SIZE_bytes, "room_tag")
    body = b"".join(_check_len(k, PUBLIC_KEY_SIZE_bytes, "public key") + bytes([int(r)]) for k, r in left)
    return header(MsgType.PEER_LEFT) + room_tag + bytes([len(left)]) + body


PEER_LIST_OVERHEAD_bytes = HEADER_SIZE_bytes + ROOM_TAG_SIZE_bytes + 2 + 2 + 1
PEER_JOINED_OVERHEAD_bytes = HEADER_SIZE_bytes + ROOM_TAG_SIZE_bytes + 1
PEER_LEFT_OVERHEAD_bytes = HEADER_SIZE_bytes + ROOM_TAG_SIZE_bytes + 1
PEER_LEFT_ITEM_bytes = PUBLIC_KEY_SIZE_bytes + 1


def pack_entries(entries: Iterable[bytes], overhead: int) -> list[list[bytes]]:
    """Group encoded entries into datagram-sized batches (<= MAX_DATAGRAM_bytes, <= 255)."""
    batches: list[list[bytes]] = []
    current: list[bytes] = []
    size = overhead
    for entry in entries:
        if current and (size + len(entry) > MAX_DATAGRAM_bytes or len(current) == 255):
            batches.append(current)
            current, size = [], overhead
        current.append(entry)
        size += len(entry)
    if current:
        batches.append(current)
    return batches


def _check_len(value: bytes, n: int, what: str) -> bytes:
    if len(value) != n:
        raise ValueError(f"{what} must be {n} bytes, got {len(value)}")
    return value


# --- decoding -------------------------------------------------------------------------


def check_header(data: bytes) -> tuple[int, int]:
    """Validate what every v1 datagram shares, of either plane: its size, magic and
    version. Returns the raw (type, flags)."""
    if len(data) > MAX_DATAGRAM_bytes:
        raise DecodeError("oversized", f"{len(data)} bytes")
    if len(data) < HEADER_SIZE_bytes:
        raise DecodeError("truncated", f"{len(data)} bytes")
    magic, version, msg_type, flags = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise DecodeError("bad_magic", f"0x{magic:02x}")
    if version != VERSION:
        raise DecodeError("bad_version", str(version))
    return msg_type, flags


def decode_header(data: bytes) -> tuple[MsgType, int]:
    """Validate the 4-byte header of a control-plane message; returns (type, flags)."""
    msg_type, flags = check_header(data)
    try:
        return MsgType(msg_type), flags
    except ValueError:
        raise DecodeError("unknown_type", f"0x{msg_type:02x}") from None


def decode(data: bytes) -> Message:
    """Decode one datagram. Raises DecodeError (and nothing else) for bad input."""
    msg_type, flags = decode_header(data)
    r = _Reader(data, HEADER_SIZE_bytes)
    msg: Message
    if msg_type in TOKEN_TYPES:
        token = r.take(TOKEN_SIZE_bytes)
        rebind = msg_type is MsgType.HEARTBEAT and flags & FLAG_REBIND
        challenge = r.take(CHALLENGE_SIZE_bytes) if rebind else b""
        digest = r.take(ROOM_DIGEST_SIZE_bytes) if msg_type is MsgType.HEARTBEAT_ACK else b""
        msg = TokenMessage(msg_type, token, flags, challenge, digest)
    elif msg_type is MsgType.REBIND_CHALLENGE:
        msg = RebindChallenge(r.take(CHALLENGE_SIZE_bytes))
    elif msg_type is MsgType.REGISTER:
        if len(data) < HEADER_SIZE_bytes + _REGISTER_HEAD.size:
            raise DecodeError("truncated", f"{len(data)} bytes")
        cookie, request_id, room_id, key = _REGISTER_HEAD.unpack_from(data, HEADER_SIZE_bytes)
        r.pos += _REGISTER_HEAD.size
        name = r.name()
        locals_, turn = r.card_endpoints()
        msg = Register(
            cookie, request_id, room_id, key, name, locals_, r.take(PROOF_SIZE_bytes), bool(flags & C.FLAG_RELAY), turn
        )
    elif msg_type is MsgType.COOKIE:
        msg = Cookie(r.u32(), r.take(COOKIE_SIZE_bytes), r.take(PUBLIC_KEY_SIZE_bytes))
    elif msg_type is MsgType.REGISTERED:
        head = (r.u32(), r.take(TOKEN_SIZE_bytes), r.take(ROOM_TAG_SIZE_bytes), r.u32(), r.u32(), r.endpoint())
        offered = bool(flags & C.FLAG_TURN_OFFERED)
        if flags & C.FLAG_RELAY_BOUND:
            relay_id, rate, burst = r.take(C.RELAY_ID_SIZE_bytes), r.u32(), r.u32()
            msg = Registered(*head, relay_id=relay_id, relay_rate=rate, relay_burst=burst, turn_offered=offered)
        elif flags & C.FLAG_RELAY_REFUSED:
            msg = Registered(*head, relay_refused=_relay_reason(r.u8()), turn_offered=offered)
        else:
            msg = Registered(*head, turn_offered=offered)
    elif msg_type is MsgType.RELAY:
        token, to = r.take(TOKEN_SIZE_bytes), r.take(C.RELAY_ID_SIZE_bytes)
        msg = Relay(token, to, r.rest())
    elif msg_type is MsgType.RELAYED:
        sender = r.take(C.RELAY_ID_SIZE_bytes)
        msg = Relayed(sender, r.rest())
    elif msg_type is MsgType.TURN_CREDENTIALS:
        nonce = r.take(C.TURN_NONCE_SIZE_bytes)
        sealed = r.rest()
        if len(sealed) < 16 + 8 + 3:
            raise DecodeError("truncated", "sealed TURN credentials too short")
        msg = TurnCredentials(nonce, sealed)
    elif msg_type is MsgType.RELAY_REFUSED:
        relay_reason = _relay_reason(r.u8())
        msg = RelayRefused(relay_reason, r.u32(), r.take(C.RELAY_ID_SIZE_bytes))
    elif msg_type is MsgType.REFUSED:
        request_id = r.u32()
        code = r.u8()
        try:
            reason = RefuseReason(code)
        except ValueError:
            raise DecodeError("bad_field", f"refuse reason {code}") from None
        msg = Refused(request_id, reason, r.u32())
    elif msg_type is MsgType.PEER_LIST:
        tag = r.take(ROOM_TAG_SIZE_bytes)
        part, parts = r.u16(), r.u16()
        if parts == 0 or part >= parts:
            raise DecodeError("bad_field", f"part {part} of {parts}")
        count = r.u8()
        msg = PeerList(tag, part, parts, tuple(r.peer_entry() for _ in range(count)))
    elif msg_type is MsgType.PEER_JOINED:
        tag = r.take(ROOM_TAG_SIZE_bytes)
        count = r.u8()
        msg = PeerJoined(tag, tuple(r.peer_entry() for _ in range(count)))
    else:  # PEER_LEFT
        tag = r.take(ROOM_TAG_SIZE_bytes)
        count = r.u8()
        left = []
        for _ in range(count):
            key = r.take(PUBLIC_KEY_SIZE_bytes)
            code = r.u8()
            try:
                left.append((key, LeaveReason(code)))
            except ValueError:
                raise DecodeError("bad_field", f"leave reason {code}") from None
        msg = PeerLeft(tag, tuple(left))
    r.done()
    return msg


def _relay_reason(code: int) -> RelayRefuseReason:
    try:
        return RelayRefuseReason(code)
    except ValueError:
        raise DecodeError("bad_field", f"relay refuse reason {code}") from None


class RegisterHead(NamedTuple):
    """A validated Register as the bootnode needs it: the card stays in wire form;
    ``signed`` is every byte before the proof (what the proof covers)."""

    cookie: bytes
    request_id: int
    room_id: bytes
    public_key: bytes
    card: bytes
    proof: bytes
    signed: bytes
    relay: bool = False  # FLAG_RELAY


def decode_register(data: bytes) -> RegisterHead:
    """Validate a REGISTER exactly as decode() does, without building endpoint values.
    Raises DecodeError like decode()."""
    if len(data) < HEADER_SIZE_bytes + _REGISTER_HEAD.size + 2 + PROOF_SIZE_bytes or data[2] != MsgType.REGISTER:
        msg = decode(data)  # the general decoder gives the precise reason
        raise DecodeError("unknown_type", f"not a register: {type(msg).__name__}")
    if len(data) > MAX_DATAGRAM_bytes or data[0] != MAGIC or data[1] != VERSION:
        decode_header(data)  # raises with the precise reason
    cookie, request_id, room_id, key = _REGISTER_HEAD.unpack_from(data, HEADER_SIZE_bytes)
    r = _Reader(data, REGISTER_CARD_OFFSET + PUBLIC_KEY_SIZE_bytes)
    r.name()
    n = r.u8()
    if n > MAX_LOCAL_ENDPOINTS + 1:
        raise DecodeError("bad_field", f"{n} endpoints")
    for k in range(n):
        family = r.u8()
        if family == C.FAMILY_TURN and k == n - 1:  # the TURN relayed address, last
            family = r.u8()
        elif k == MAX_LOCAL_ENDPOINTS:
            raise DecodeError("bad_field", f"{n} endpoints")
        if family not in (_FAMILY_V4, _FAMILY_V6):
            raise DecodeError("bad_field", f"address family {family}")
        r.take(4 if family == _FAMILY_V4 else 16)
        if r.u16() == 0:
            raise DecodeError("bad_field", "port 0")
    card_end = r.pos
    proof = r.take(PROOF_SIZE_bytes)
    r.done()
    card = data[REGISTER_CARD_OFFSET:card_end]
    return RegisterHead(cookie, request_id, room_id, key, card, proof, data[:card_end], bool(data[3] & C.FLAG_RELAY))


def decode_card(card: bytes) -> tuple[bytes, str, tuple[Endpoint, ...]]:
    """Inverse of encode_card (used by tests and diagnostics)."""
    r = _Reader(card, 0)
    key = r.take(PUBLIC_KEY_SIZE_bytes)
    name = r.name()
    locals_, _turn = r.card_endpoints()
    r.done()
    return key, name, locals_
