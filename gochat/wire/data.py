"""Wire protocol v1, peer-to-peer data plane (types 0x20-0x23): exact encoding.

The counterpart of wire.py for what peers send each other directly: connectivity
checks (PUNCH), the two Noise handshake messages, and encrypted transport packets.
No I/O, no state; every decoder raises only wire.DecodeError with a counter label.
docs/PROTOCOL.md section 7 is the specification.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
import struct
from dataclasses import dataclass

from gochat.wire.constants import MAGIC, VERSION, HEADER_SIZE_bytes, MAX_NAME_bytes, PUBLIC_KEY_SIZE_bytes
from gochat.wire.control import DecodeError, check_header, encode_name

_HEADER = struct.Struct("!BBBB")
_INDEX = struct.Struct("!I")
_TRANSPORT_HEAD = struct.Struct("!BBBBIQ")

TXID_SIZE_bytes = 8
PUNCH_MAC_SIZE_bytes = 16
PUNCH_TIME_SIZE_bytes = 8
_PUNCH_TIME = struct.Struct("!Q")
TAG_SIZE_bytes = 16
INDEX_SIZE_bytes = 4
TRANSPORT_HEAD_SIZE_bytes = _TRANSPORT_HEAD.size  # header + receiver index + counter = 16

FLAG_REPLY = 0x01  # PUNCH: this is the answer to a punch whose txid it echoes

# Handshake payloads (docs/PROTOCOL.md 7.3): the initiation carries the sender's
# epoch, handshake number and display name, the response the responder's epoch and
# display name. An epoch is random per sequence space (a peer's record of the other):
# a new one means a new start. The name is a wire Name (length byte, 1..32 bytes of
# UTF-8 without control characters): the name a peer proves, where the bootnode's
# announcement only suggests one.
_INIT_FIXED = struct.Struct("!QQ")
_RESP_FIXED = struct.Struct("!Q")
_NAME_MIN_bytes, _NAME_MAX_bytes = 1 + 1, 1 + MAX_NAME_bytes
_CONTROL_CHARS = re.compile("[\x00-\x1f\x7f]")
# Noise message sizes with these payloads: IK message 1 carries e (32), encrypted s (48)
# and the encrypted payload; message 2 carries e (32) and the encrypted payload.
NOISE_INIT_MIN_bytes = 32 + 48 + _INIT_FIXED.size + _NAME_MIN_bytes + TAG_SIZE_bytes
NOISE_INIT_MAX_bytes = NOISE_INIT_MIN_bytes - _NAME_MIN_bytes + _NAME_MAX_bytes
NOISE_RESP_MIN_bytes = 32 + _RESP_FIXED.size + _NAME_MIN_bytes + TAG_SIZE_bytes
NOISE_RESP_MAX_bytes = NOISE_RESP_MIN_bytes - _NAME_MIN_bytes + _NAME_MAX_bytes


class PeerType(enum.IntEnum):
    PUNCH = 0x20
    HANDSHAKE_INIT = 0x21
    HANDSHAKE_RESP = 0x22
    TRANSPORT = 0x23


PEER_TYPE_FIRST, PEER_TYPE_LAST = 0x20, 0x3F


class FrameType(enum.IntEnum):
    """First byte of a TRANSPORT plaintext (an empty plaintext is a keepalive).
    DATA and ACK are laid out by the reliable-delivery module (client/reliable.py)."""

    DATA = 0x01
    ACK = 0x02
    BYE = 0x03


BYE_FRAME = bytes([FrameType.BYE])
KEEPALIVE_FRAME = b""


@dataclass(frozen=True)
class Punch:
    sender_key: bytes
    txid: bytes
    time_ms: int  # the sender's clock: grows with every punch it sends (freshness)
    mac: bytes
    reply: bool = False


@dataclass(frozen=True)
class HandshakeInit:
    sender_index: int
    noise: bytes


@dataclass(frozen=True)
class HandshakeResp:
    sender_index: int
    receiver_index: int
    noise: bytes


@dataclass(frozen=True)
class Transport:
    receiver_index: int
    counter: int
    ciphertext: bytes
    ad: bytes  # the 16 bytes before the ciphertext, authenticated with it


PeerMessage = Punch | HandshakeInit | HandshakeResp | Transport


def is_peer_datagram(data: bytes) -> bool:
    """True when the header's type is in the data-plane range (checked before decoding)."""
    return len(data) >= HEADER_SIZE_bytes and PEER_TYPE_FIRST <= data[2] <= PEER_TYPE_LAST


# --- punch authentication ------------------------------------------------------------


def punch_key(shared_secret: bytes) -> bytes:
    """Key of the punch MACs between two peers: derived from their static-static X25519
    secret, which only the two of them can compute. It does not involve the room PSK,
    so a wrong passphrase still finds a path and then fails the handshake visibly."""
    return hashlib.sha256(b"gochat punch v1\0" + shared_secret).digest()


def punch_mac(key: bytes, sender_key: bytes, txid: bytes, time_ms: int, reply: bool) -> bytes:
    head = _HEADER.pack(MAGIC, VERSION, PeerType.PUNCH, FLAG_REPLY if reply else 0)
    body = head + sender_key + txid + _PUNCH_TIME.pack(time_ms)
    return hmac.new(key, body, hashlib.sha256).digest()[:PUNCH_MAC_SIZE_bytes]


def verify_punch(key: bytes, punch: Punch) -> bool:
    expected = punch_mac(key, punch.sender_key, punch.txid, punch.time_ms, punch.reply)
    return hmac.compare_digest(punch.mac, expected)


# --- handshake payloads -------------------------------------------------------------


def _decode_name(raw: bytes, what: str) -> str:
    if not raw or raw[0] != len(raw) - 1 or not 1 <= raw[0] <= MAX_NAME_bytes:
        raise DecodeError("bad_field", f"{what}: bad name length")
    try:
        name = raw[1:].decode("utf-8")
    except UnicodeDecodeError:
        raise DecodeError("bad_field", f"{what}: name is not UTF-8") from None
    if _CONTROL_CHARS.search(name):
        raise DecodeError("bad_field", f"{what}: name with control characters")
    return name


def encode_init_payload(epoch: int, number: int, name: str) -> bytes:
    """ValueError for a name that is not 1..32 bytes of UTF-8."""
    return _INIT_FIXED.pack(epoch, number) + encode_name(name)


def decode_init_payload(payload: bytes) -> tuple[int, int, str]:
    """(epoch, handshake number, name); DecodeError('bad_field') for anything else."""
    epoch, number = _INIT_FIXED.unpack_from(payload) if len(payload) >= _INIT_FIXED.size else (0, 0)
    name = _decode_name(payload[_INIT_FIXED.size :], "initiation payload")
    return epoch, number, name


def encode_resp_payload(epoch: int, name: str) -> bytes:
    """ValueError for a name that is not 1..32 bytes of UTF-8."""
    return _RESP_FIXED.pack(epoch) + encode_name(name)


def decode_resp_payload(payload: bytes) -> tuple[int, str]:
    """(the responder's epoch, its name); DecodeError('bad_field') for anything else."""
    (epoch,) = _RESP_FIXED.unpack_from(payload) if len(payload) >= _RESP_FIXED.size else (0,)
    name = _decode_name(payload[_RESP_FIXED.size :], "response payload")
    return int(epoch), name


# --- encoding ------------------------------------------------------------------------


def encode_punch(key: bytes, sender_key: bytes, txid: bytes, time_ms: int, reply: bool = False) -> bytes:
    if len(sender_key) != PUBLIC_KEY_SIZE_bytes or len(txid) != TXID_SIZE_bytes:
        raise ValueError("punch needs a 32-byte key and an 8-byte txid")
    head = _HEADER.pack(MAGIC, VERSION, PeerType.PUNCH, FLAG_REPLY if reply else 0)
    time_field = _PUNCH_TIME.pack(time_ms)
    return head + sender_key + txid + time_field + punch_mac(key, sender_key, txid, time_ms, reply)


def encode_handshake_init(sender_index: int, noise: bytes) -> bytes:
    return _HEADER.pack(MAGIC, VERSION, PeerType.HANDSHAKE_INIT, 0) + _INDEX.pack(sender_index) + noise


def encode_handshake_resp(sender_index: int, receiver_index: int, noise: bytes) -> bytes:
    return (
        _HEADER.pack(MAGIC, VERSION, PeerType.HANDSHAKE_RESP, 0)
        + _INDEX.pack(sender_index)
        + _INDEX.pack(receiver_index)
        + noise
    )


def transport_ad(receiver_index: int, counter: int) -> bytes:
    """The authenticated header of a transport packet (its first 16 bytes)."""
    return _TRANSPORT_HEAD.pack(MAGIC, VERSION, PeerType.TRANSPORT, 0, receiver_index, counter)


# --- decoding ------------------------------------------------------------------------

PUNCH_SIZE_bytes = (
    HEADER_SIZE_bytes + PUBLIC_KEY_SIZE_bytes + TXID_SIZE_bytes + PUNCH_TIME_SIZE_bytes + PUNCH_MAC_SIZE_bytes
)
_INIT_HEAD = HEADER_SIZE_bytes + INDEX_SIZE_bytes
_RESP_HEAD = HEADER_SIZE_bytes + 2 * INDEX_SIZE_bytes
INIT_MIN_bytes, INIT_MAX_bytes = _INIT_HEAD + NOISE_INIT_MIN_bytes, _INIT_HEAD + NOISE_INIT_MAX_bytes
RESP_MIN_bytes, RESP_MAX_bytes = _RESP_HEAD + NOISE_RESP_MIN_bytes, _RESP_HEAD + NOISE_RESP_MAX_bytes


def _exact(data: bytes, size: int, largest: int | None = None) -> None:
    if len(data) < size:
        raise DecodeError("truncated", f"{len(data)} bytes")
    largest = size if largest is None else largest
    if len(data) > largest:
        raise DecodeError("trailing_bytes", f"{len(data) - largest} bytes")


def decode(data: bytes) -> PeerMessage:
    """Decode one data-plane datagram. Raises DecodeError (and nothing else)."""
    data = bytes(data)
    msg_type, flags = check_header(data)
    if msg_type == PeerType.PUNCH:
        _exact(data, PUNCH_SIZE_bytes)
        key_end = HEADER_SIZE_bytes + PUBLIC_KEY_SIZE_bytes
        time_at = key_end + TXID_SIZE_bytes
        (time_ms,) = _PUNCH_TIME.unpack_from(data, time_at)
        return Punch(
            data[HEADER_SIZE_bytes:key_end],
            data[key_end:time_at],
            time_ms,
            data[time_at + PUNCH_TIME_SIZE_bytes :],
            bool(flags & FLAG_REPLY),
        )
    if msg_type == PeerType.HANDSHAKE_INIT:
        _exact(data, INIT_MIN_bytes, INIT_MAX_bytes)
        (index,) = _INDEX.unpack_from(data, HEADER_SIZE_bytes)
        return HandshakeInit(index, data[HEADER_SIZE_bytes + INDEX_SIZE_bytes :])
    if msg_type == PeerType.HANDSHAKE_RESP:
        _exact(data, RESP_MIN_bytes, RESP_MAX_bytes)
        sender, receiver = struct.unpack_from("!II", data, HEADER_SIZE_bytes)
        return HandshakeResp(sender, receiver, data[HEADER_SIZE_bytes + 2 * INDEX_SIZE_bytes :])
    if msg_type == PeerType.TRANSPORT:
        if len(data) < TRANSPORT_HEAD_SIZE_bytes + TAG_SIZE_bytes:
            raise DecodeError("truncated", f"{len(data)} bytes")
        _, _, _, _, index, counter = _TRANSPORT_HEAD.unpack_from(data)
        return Transport(index, counter, data[TRANSPORT_HEAD_SIZE_bytes:], data[:TRANSPORT_HEAD_SIZE_bytes])
    raise DecodeError("unknown_type", f"0x{msg_type:02x}")


# --- message text -------------------------------------------------------------------
# A typed line that starts with "/" is a command and never goes out as a message, so
# two prefixes can mark a message's style without an escape (docs/PROTOCOL.md 7.5).
ACTION_PREFIX = "/me "  # an action: shown as "* alice waves"
PRIVATE_PREFIX = "/msg "  # sent to the receiver alone


def message_style(text: str) -> tuple[str, str]:
    """(style, body) of a received message text: ``say``, ``action`` or ``private``."""
    if text.startswith(ACTION_PREFIX):
        return "action", text[len(ACTION_PREFIX) :]
    if text.startswith(PRIVATE_PREFIX):
        return "private", text[len(PRIVATE_PREFIX) :]
    return "say", text
