"""Pure-Python twin of gochat._fastpath: the same API and the same observable
behaviour (slot numbers, expiry order, counters), written for clarity.

It serves platforms without a C compiler (GOCHAT_PURE_PYTHON=1 forces it) and is the
oracle of the differential tests. Keep the two in step.
"""

from __future__ import annotations

import socket
from typing import Any

from gochat.constants import BATCH_SIZE, DATAGRAM_BUFFER_bytes, WHEEL_TICK_ms
from gochat.wire.constants import (
    FAMILY_RELAY,
    FLAG_ACK_REQUESTED,
    FLAG_REBIND,
    MAGIC,
    T_HEARTBEAT,
    T_HEARTBEAT_ACK,
    T_RELAY,
    T_RELAY_REFUSED,
    T_RELAYED,
    T_UNKNOWN_TOKEN,
    VERSION,
    HEADER_SIZE_bytes,
    HEARTBEAT_ACK_SIZE_bytes,
    HEARTBEAT_SIZE_bytes,
    MAX_DATAGRAM_bytes,
    PUBLIC_KEY_SIZE_bytes,
    RELAY_NONCE_SIZE_bytes,
    RELAY_OVERHEAD_bytes,
    ROOM_DIGEST_SIZE_bytes,
    ROOM_ID_SIZE_bytes,
    ROOM_TAG_SIZE_bytes,
    TOKEN_INDEX_SIZE_bytes,
    TOKEN_SECRET_SIZE_bytes,
    TOKEN_SIZE_bytes,
)
from gochat.wire.endpoints import V4_MAPPED_PREFIX as _V4_MAPPED
from gochat.wire.endpoints import endpoint_key, key_endpoint, sockaddr_for

BUF_SIZE = DATAGRAM_BUFFER_bytes
TICK_SHIFT = WHEEL_TICK_ms.bit_length() - 1  # the wheel tick is 1 << TICK_SHIFT ms
if WHEEL_TICK_ms != 1 << TICK_SHIFT:
    raise ValueError("WHEEL_TICK_ms must be a power of two")
TICK_SPACE_MASK = 0xFFFFFFFF >> TICK_SHIFT  # tick numbers wrap together with the 32-bit ms clock
_U32 = 0xFFFFFFFF
_TOKEN_END = HEADER_SIZE_bytes + TOKEN_SIZE_bytes
_NO_SECRET = bytes(TOKEN_SECRET_SIZE_bytes)

# The values this implementation runs with, under the names the compiled twin exposes
# them (tests/test_wire_constants.py compares both with the references).
CONSTANTS = {
    "MAGIC": MAGIC,
    "VERSION": VERSION,
    "HEADER_SIZE": HEADER_SIZE_bytes,
    "T_HEARTBEAT": T_HEARTBEAT,
    "T_HEARTBEAT_ACK": T_HEARTBEAT_ACK,
    "T_UNKNOWN_TOKEN": T_UNKNOWN_TOKEN,
    "FLAG_ACK_REQUESTED": FLAG_ACK_REQUESTED,
    "FLAG_REBIND": FLAG_REBIND,
    "HEARTBEAT_SIZE": HEARTBEAT_SIZE_bytes,
    "ROOM_DIGEST_SIZE": ROOM_DIGEST_SIZE_bytes,
    "HEARTBEAT_ACK_SIZE": HEARTBEAT_ACK_SIZE_bytes,
    "TOKEN_SIZE": TOKEN_SIZE_bytes,
    "TOKEN_INDEX_SIZE": TOKEN_INDEX_SIZE_bytes,
    "TOKEN_SECRET_SIZE": TOKEN_SECRET_SIZE_bytes,
    "ROOM_ID_SIZE": ROOM_ID_SIZE_bytes,
    "ROOM_TAG_SIZE": ROOM_TAG_SIZE_bytes,
    "PUBLIC_KEY_SIZE": PUBLIC_KEY_SIZE_bytes,
    "BUF_SIZE": BUF_SIZE,
    "TICK_SHIFT": TICK_SHIFT,
    "TICK_SPACE_MASK": TICK_SPACE_MASK,
    "BATCH_SIZE": BATCH_SIZE,
    "T_RELAY": T_RELAY,
    "T_RELAYED": T_RELAYED,
    "T_RELAY_REFUSED": T_RELAY_REFUSED,
    "RELAY_OVERHEAD": RELAY_OVERHEAD_bytes,
    "FAMILY_RELAY": FAMILY_RELAY,
    "MAX_DATAGRAM": MAX_DATAGRAM_bytes,
}

# What table.relay() decides (RELAY_REFUSED's reasons, gochat.wire.control.RelayRefuseReason,
# are the positive codes).
RELAY_FORWARD = 0
RELAY_UNKNOWN_TOKEN = -1  # answered with UNKNOWN_TOKEN, as a heartbeat would be
RELAY_WRONG_SOURCE = -2  # not from the registration's endpoint: dropped
REFUSE_NOT_BOUND, REFUSE_NO_SUCH_PEER, REFUSE_RATE_LIMITED, REFUSE_BUSY = 1, 2, 3, 4
REFUSAL_INTERVAL_ms = 1000  # a registration gets at most one RELAY_REFUSED per second
_MAX_REFILL_ms = 1 << 20  # refills are computed over at most this long (no overflow in C)
_NO_NONCE = bytes(RELAY_NONCE_SIZE_bytes)
MAX_SLOTS = 0xFFFFFF  # a token's slot index is 24 bits: its first byte is the shard


class TableFull(Exception):
    """No free slot: the table holds ``capacity`` registrations."""


def _ms_of(now: float) -> int:
    return int(now * 1000.0) & _U32


def _after_or_equal(a: int, b: int) -> bool:
    """a >= b on the wrapping 32-bit millisecond clock."""
    return ((a - b) & _U32) < 0x80000000


class _Registration:
    __slots__ = (
        "addr",
        "card",
        "expiring",
        "last_ms",
        "port",
        "refused_ms",
        "relay_ms",
        "relay_nonce",
        "relay_tokens",
        "room_id",
        "secret",
    )

    def __init__(self, secret: bytes, addr: bytes, port: int, last_ms: int, room_id: bytes, card: bytes) -> None:
        self.secret = secret
        self.addr = addr  # 16 bytes, IPv4 as IPv4-mapped IPv6
        self.port = port
        self.last_ms = last_ms
        self.room_id = room_id
        self.card = card
        self.expiring = False  # handed out by expire(), waiting for remove()
        self.relay_nonce = _NO_NONCE  # the relay binding's nonce; zero: not bound
        self.relay_tokens = 0  # the binding's token bucket, in thousandths of a byte
        self.relay_ms = 0  # when it was last refilled
        self.refused_ms = 0  # when the last RELAY_REFUSED went to it (0: never; 1 for the clock's 0)


class _Room:
    __slots__ = ("digest", "members", "tag")

    def __init__(self, tag: bytes) -> None:
        self.tag = tag
        self.members: dict[int, _Registration] = {}  # slot -> registration, in join order
        self.digest = 0  # XOR of the first 8 bytes of the members' keys (HEARTBEAT_ACK)


def _key8(card: bytes) -> int:
    """The first 8 bytes of a card's public key as a word (XORed: byte order is moot)."""
    return int.from_bytes(card[:ROOM_DIGEST_SIZE_bytes], "little")


class RegistrationTable:
    """Registrations addressed by the token's slot index; expiry by a timing wheel whose
    buckets stay sorted by deadline (see the Cython version for the reasoning)."""

    def __init__(self, capacity: int, timeout_s: float, now: float, shard: int = 0) -> None:
        if capacity <= 0 or capacity > MAX_SLOTS:
            raise ValueError("capacity must be between 1 and 2**24-1")
        if not 0 <= shard <= 255:
            raise ValueError("shard must be 0..255")
        self.shard = shard
        if not (0 < timeout_s <= 86400):
            raise ValueError("timeout_s must be in (0, 86400]")
        self.capacity = capacity
        self._slots: list[_Registration | None] = []
        self._free: list[int] = []
        self._timeout_ms = int(timeout_s * 1000.0)
        ticks = (self._timeout_ms >> TICK_SHIFT) + 2
        w = 64
        while w < ticks:
            w <<= 1
        self._wheel_mask = w - 1
        self._wheel: dict[int, dict[int, _Registration]] = {}  # bucket -> slots, in deadline order
        self._last_ms = _ms_of(now)
        self._cursor = self._last_ms >> TICK_SHIFT
        self._rooms: dict[bytes, _Room] = {}
        self._used = 0
        self.set_relay_limits(0, 0, 0, 0)

    def set_relay_limits(self, rate: int, burst: int, total_rate: int, total_burst: int) -> None:
        """Bytes per second and burst bytes each binding may relay, and all together
        (a rate of 0: no limit). Buckets count thousandths of a byte: a millisecond
        refills ``rate`` of them, exactly, in integers (as the compiled table does)."""
        if min(rate, burst, total_rate, total_burst) < 0 or max(rate, burst, total_rate, total_burst) > _U32:
            raise ValueError("relay limits must be 0..2**32-1")
        self._relay_rate, self._relay_burst = rate, burst
        self._total_rate, self._total_burst = total_rate, total_burst
        self._total_tokens = total_burst * 1000
        self._total_ms = self._last_ms

    def __len__(self) -> int:
        return self._used

    @property
    def room_count(self) -> int:
        return len(self._rooms)

    def _clock(self, now: float) -> int:
        t = _ms_of(now)
        if t != self._last_ms and _after_or_equal(t, self._last_ms):
            self._last_ms = t
        return self._last_ms

    def _bucket(self, s: _Registration) -> int:
        return (((s.last_ms + self._timeout_ms) & _U32) >> TICK_SHIFT) & self._wheel_mask

    def _link(self, i: int, s: _Registration) -> None:
        self._wheel.setdefault(self._bucket(s), {})[i] = s

    def _unlink(self, i: int, s: _Registration) -> None:
        b = self._bucket(s)
        del self._wheel[b][i]
        if not self._wheel[b]:
            del self._wheel[b]

    def _touch(self, i: int, s: _Registration, now_ms: int) -> None:
        if s.last_ms == now_ms or s.expiring:
            return
        self._unlink(i, s)
        s.last_ms = now_ms
        self._link(i, s)

    def expire(self, now: float) -> list[int]:
        now_ms = self._clock(now)
        target = now_ms >> TICK_SHIFT
        steps = (target - self._cursor) & TICK_SPACE_MASK
        if steps > self._wheel_mask:
            steps = self._wheel_mask
            self._cursor = (target - steps) & TICK_SPACE_MASK
        out: list[int] = []
        for t in range(steps + 1):
            b = (self._cursor + t) & self._wheel_mask
            bucket = self._wheel.get(b)
            if not bucket:
                continue
            due = []  # the bucket is sorted by deadline: walk it only as far as what is due
            for i, s in bucket.items():
                if not _after_or_equal(now_ms, (s.last_ms + self._timeout_ms) & _U32):
                    break
                due.append(i)
            for i in due:
                bucket.pop(i).expiring = True
            out += due
            if not bucket:
                del self._wheel[b]
        self._cursor = target
        return out

    def _find(self, token: bytes) -> tuple[int, _Registration] | None:
        """The slot and registration of a live token."""
        if len(token) != TOKEN_SIZE_bytes or token[0] != self.shard:
            return None
        i = int.from_bytes(token[1:TOKEN_INDEX_SIZE_bytes], "big")
        if i >= len(self._slots):
            return None
        s = self._slots[i]
        secret = token[TOKEN_INDEX_SIZE_bytes:]
        if s is None or s.expiring or secret == _NO_SECRET or s.secret != secret:
            return None
        return i, s

    def add(self, room_id: bytes, room_tag: bytes, secret: bytes, card: bytes, addr: tuple, now: float) -> int:
        if (
            len(room_id) != ROOM_ID_SIZE_bytes
            or len(room_tag) != ROOM_TAG_SIZE_bytes
            or len(secret) != TOKEN_SECRET_SIZE_bytes
        ):
            raise ValueError("room_id 16, room_tag 8 and secret 8 bytes")
        if len(card) == 0 or len(card) > 255:
            raise ValueError("card must be 1..255 bytes")
        key, port = endpoint_key(addr)
        if self._free:
            i = self._free.pop()
        elif len(self._slots) < self.capacity:
            i = len(self._slots)
            self._slots.append(None)
        else:
            raise TableFull(f"registration table full ({self.capacity} registrations)")
        if secret == _NO_SECRET:  # zero marks a free slot in the compiled table
            secret = (1).to_bytes(TOKEN_SECRET_SIZE_bytes, "little")
        s = _Registration(secret, key, port, self._clock(now), room_id, bytes(card))
        self._slots[i] = s
        self._link(i, s)
        room = self._rooms.get(room_id)
        if room is None:
            room = self._rooms[room_id] = _Room(room_tag)
        room.members[i] = s
        room.digest ^= _key8(s.card)
        self._used += 1
        return i

    def _get(self, i: int) -> _Registration:
        s = self._slots[i] if 0 <= i < len(self._slots) else None
        if s is None:
            raise KeyError(f"no registration in slot {i}")
        return s

    def remove(self, i: int) -> None:
        s = self._get(i)
        if not s.expiring:
            self._unlink(i, s)
        room = self._rooms[s.room_id]
        room.digest ^= _key8(s.card)
        members = room.members
        del members[i]
        if not members:
            del self._rooms[s.room_id]
        self._slots[i] = None
        self._free.append(i)
        self._used -= 1

    # --- relay ------------------------------------------------------------------------

    def bind_relay(self, i: int, nonce: bytes, now: float) -> None:
        """Give registration ``i`` a relay binding named by ``nonce`` (4 bytes, not zero),
        its bucket full."""
        s = self._get(i)
        if len(nonce) != RELAY_NONCE_SIZE_bytes or nonce == _NO_NONCE:
            raise ValueError("a relay nonce is 4 bytes, not all zero")
        s.relay_nonce = bytes(nonce)
        s.relay_tokens = self._relay_burst * 1000
        s.relay_ms = self._clock(now)
        s.refused_ms = 0

    def relay_id(self, i: int) -> bytes:
        """The binding's relay id (slot index and nonce, 8 bytes), or b"" when unbound."""
        s = self._get(i)
        return b"" if s.relay_nonce == _NO_NONCE else self._index(i) + s.relay_nonce

    @staticmethod
    def _spend(tokens: int, last_ms: int, now_ms: int, rate: int, burst: int, cost: int) -> tuple[int, int]:
        """A token bucket step: (tokens after refill and spending, or -1 with the tokens
        after refill in the second place when ``cost`` is not there; ms until it is)."""
        elapsed = (now_ms - last_ms) & _U32
        if elapsed >= 0x80000000:
            elapsed = 0
        tokens = min(burst * 1000, tokens + min(elapsed, _MAX_REFILL_ms) * rate)
        if tokens >= cost:
            return tokens - cost, 0
        return tokens, (cost - tokens + rate - 1) // rate if rate else REFUSAL_INTERVAL_ms

    def relay(self, token: bytes, to: bytes, addr: tuple, size: int, now: float) -> tuple[int, int, int, bool]:
        """Decide a RELAY of ``size`` bytes (the whole datagram) from ``addr``: returns
        (code, sender slot, destination slot or retry-after ms, whether to send a
        RELAY_REFUSED now). Code RELAY_FORWARD spends the buckets and refreshes the
        sender's registration (relayed datagrams keep a binding alive, as heartbeats do)."""
        found = self._find(token)
        if found is None:
            return RELAY_UNKNOWN_TOKEN, -1, 0, False
        i, s = found
        if (s.addr, s.port) != endpoint_key(addr):
            return RELAY_WRONG_SOURCE, i, 0, False
        now_ms = self._clock(now)
        code, value = self._relay_decision(i, s, to, size * 1000, now_ms)
        if code == RELAY_FORWARD:
            self._touch(i, s, now_ms)
            return code, i, value, False
        tell = s.refused_ms == 0 or REFUSAL_INTERVAL_ms <= ((now_ms - s.refused_ms) & _U32) < 0x80000000
        if tell:
            s.refused_ms = now_ms or 1
        return code, i, value, tell

    def _relay_decision(self, i: int, s: _Registration, to: bytes, cost: int, now_ms: int) -> tuple[int, int]:
        if s.relay_nonce == _NO_NONCE:
            return REFUSE_NOT_BOUND, REFUSAL_INTERVAL_ms
        j = int.from_bytes(to[1:TOKEN_INDEX_SIZE_bytes], "big")
        d = self._slots[j] if j < len(self._slots) and to[0] == self.shard else None
        if (
            d is None
            or d is s
            or d.expiring
            or d.relay_nonce == _NO_NONCE
            or d.relay_nonce != to[TOKEN_INDEX_SIZE_bytes:]
            or d.room_id != s.room_id
        ):
            return REFUSE_NO_SUCH_PEER, REFUSAL_INTERVAL_ms
        if self._relay_rate:
            tokens, wait = self._spend(s.relay_tokens, s.relay_ms, now_ms, self._relay_rate, self._relay_burst, cost)
            s.relay_ms = now_ms
            if wait:
                s.relay_tokens = tokens
                return REFUSE_RATE_LIMITED, wait
        else:
            tokens = s.relay_tokens
        if self._total_rate:
            total, wait = self._spend(
                self._total_tokens, self._total_ms, now_ms, self._total_rate, self._total_burst, cost
            )
            self._total_ms = now_ms
            if wait:
                self._total_tokens = total
                s.relay_tokens = tokens + cost if self._relay_rate else tokens  # not spent after all
                return REFUSE_BUSY, wait
            self._total_tokens = total
        s.relay_tokens = tokens
        return RELAY_FORWARD, j

    def token(self, i: int) -> bytes:
        return self._index(i) + self._get(i).secret

    def _index(self, i: int) -> bytes:
        """A slot's index as tokens and relay ids carry it: the shard byte, then 24 bits."""
        return bytes([self.shard]) + i.to_bytes(TOKEN_INDEX_SIZE_bytes - 1, "big")

    def lookup(self, token: bytes) -> int:
        found = self._find(token)
        return -1 if found is None else found[0]

    def touch(self, token: bytes, addr: tuple, now: float) -> int:
        """0 unknown token, 1 refreshed, 2 refreshed but from another source than the
        registration's endpoint (which stays: see set_endpoint)."""
        found = self._find(token)
        if found is None:
            return 0
        i, s = found
        self._touch(i, s, self._clock(now))
        return 1 if (s.addr, s.port) == endpoint_key(addr) else 2

    def set_endpoint(self, i: int, addr: tuple) -> None:
        s = self._get(i)
        s.addr, s.port = endpoint_key(addr)

    def endpoint(self, i: int) -> tuple[str, int]:
        s = self._get(i)
        return key_endpoint(s.addr, s.port)

    def card(self, i: int) -> bytes:
        return self._get(i).card

    def wire_endpoint(self, i: int) -> bytes:
        s = self._get(i)
        if s.addr[:12] == _V4_MAPPED:
            return b"\x04" + s.addr[12:] + s.port.to_bytes(2, "big")
        return b"\x06" + s.addr + s.port.to_bytes(2, "big")

    def entry(self, i: int) -> bytes:
        card = self._get(i).card
        relay = self.relay_id(i)
        tail = bytes([FAMILY_RELAY]) + relay if relay else b""
        name_end = PUBLIC_KEY_SIZE_bytes + 1 + card[PUBLIC_KEY_SIZE_bytes]
        count = bytes([card[name_end] + 1 + bool(relay)])
        return card[:name_end] + count + self.wire_endpoint(i) + card[name_end + 1 :] + tail

    def room_of(self, i: int) -> bytes:
        return self._get(i).room_id

    def room_tag(self, room_id: bytes) -> bytes | None:
        room = self._rooms.get(room_id)
        return room.tag if room else None

    def room_digest(self, room_id: bytes) -> bytes:
        """The room's membership digest (8 bytes), as HEARTBEAT_ACK carries it."""
        room = self._rooms.get(room_id)
        return (room.digest if room else 0).to_bytes(ROOM_DIGEST_SIZE_bytes, "little")

    def xor_room_digest(self, room_id: bytes, public_key: bytes) -> bool:
        """Fold a member held elsewhere (another bootnode of the cluster) into the room's
        digest, or out again: XOR is its own inverse. False when the room is not here."""
        room = self._rooms.get(room_id)
        if room is None or len(public_key) != PUBLIC_KEY_SIZE_bytes:
            return False
        room.digest ^= _key8(public_key)
        return True

    def room_size(self, room_id: bytes) -> int:
        room = self._rooms.get(room_id)
        return len(room.members) if room else 0

    def room_members(self, room_id: bytes) -> list[int]:
        """Slots of the room's members, most recent first."""
        room = self._rooms.get(room_id)
        return list(reversed(room.members)) if room else []

    def _members(self, room_id: bytes) -> list[tuple[int, _Registration]]:
        room = self._rooms.get(room_id)
        return list(reversed(room.members.items())) if room else []

    def count_source(self, room_id: bytes, address16: bytes) -> int:
        """How many members of the room have an endpoint with this 16-byte address."""
        room = self._rooms.get(room_id)
        if room is None or len(address16) != 16:
            return 0
        return sum(1 for s in room.members.values() if s.addr == address16)

    def find_in_room(self, room_id: bytes, public_key: bytes) -> int:
        if len(public_key) != PUBLIC_KEY_SIZE_bytes:
            return -1
        for i, s in self._members(room_id):
            if s.card[:PUBLIC_KEY_SIZE_bytes] == public_key:
                return i
        return -1


_REFUSAL_COUNTERS = {
    REFUSE_NOT_BOUND: "relay_not_bound",
    REFUSE_NO_SUCH_PEER: "relay_no_such_peer",
    REFUSE_RATE_LIMITED: "relay_rate_limited",
    REFUSE_BUSY: "relay_busy",
}


class FastPath:
    """Same contract as the Cython FastPath, one recvfrom/sendto per datagram."""

    def __init__(self, sock: socket.socket, table: RegistrationTable, batch_size: int = BATCH_SIZE) -> None:
        self._sock = sock
        self._family = sock.family
        self._table = table
        self._batch_size = batch_size
        self.drained = True
        self.last_received = 0  # datagrams the last process_batch took (0: the socket was empty)
        self._queue: list = []
        self._c = dict.fromkeys(
            (
                "received",
                "heartbeats",
                "heartbeat_acks",
                "unknown_token",
                "new_source",
                "passed_to_python",
                "sent",
                "send_errors",
                "recv_errors",
                "batches",
                "relayed",
                "relayed_bytes",
                "relay_unknown_token",
                "relay_wrong_source",
                "relay_not_bound",
                "relay_no_such_peer",
                "relay_rate_limited",
                "relay_busy",
                "relay_refusals_sent",
            ),
            0,
        )

    @property
    def counters(self) -> dict:
        return dict(self._c)

    def _sendto(self, data: bytes, addr: tuple) -> None:
        try:
            self._sock.sendto(data, addr)
            self._c["sent"] += 1
        except OSError:
            self._c["send_errors"] += 1

    def process_batch(self, now: float) -> list:
        t = self._table
        now_ms = t._clock(now)
        others = []
        replies = []
        n = 0
        self.drained = False
        while n < self._batch_size:
            try:
                data, addr = self._sock.recvfrom(BUF_SIZE)
            except (BlockingIOError, InterruptedError):
                self.drained = True
                break
            except OSError:
                self._c["recv_errors"] += 1
                self.drained = True
                break
            n += 1
            if (
                len(data) == HEARTBEAT_SIZE_bytes
                and data[0] == MAGIC
                and data[1] == VERSION
                and data[2] == T_HEARTBEAT
                and not data[3] & FLAG_REBIND
            ):
                token = data[HEADER_SIZE_bytes:_TOKEN_END]
                found = t._find(token)
                if found is None:
                    self._c["unknown_token"] += 1
                    replies.append((data[:2] + bytes([T_UNKNOWN_TOKEN, 0]) + token, addr))
                    continue
                i, s = found
                if (s.addr, s.port) != endpoint_key(addr):  # another source: the machine's case
                    self._c["new_source"] += 1
                    self._c["passed_to_python"] += 1
                    others.append((data, addr))
                    continue
                self._c["heartbeats"] += 1
                t._touch(i, s, now_ms)
                if data[3] & FLAG_ACK_REQUESTED:
                    self._c["heartbeat_acks"] += 1
                    digest = t._rooms[s.room_id].digest.to_bytes(ROOM_DIGEST_SIZE_bytes, "little")
                    replies.append((data[:2] + bytes([T_HEARTBEAT_ACK, 0]) + token + digest, addr))
            elif (
                RELAY_OVERHEAD_bytes < len(data) <= MAX_DATAGRAM_bytes
                and data[0] == MAGIC
                and data[1] == VERSION
                and data[2] == T_RELAY
            ):
                self._relay(data, addr, now, replies)
            else:
                self._c["passed_to_python"] += 1
                others.append((data, addr))
        self._c["received"] += n
        self.last_received = n
        if n:
            self._c["batches"] += 1
        self._queue += replies
        self.flush()
        return others

    def _relay(self, data: bytes, addr: tuple, now: float, replies: list) -> None:
        """A RELAY: forwarded as RELAYED to the destination's endpoint, or refused."""
        t = self._table
        token = data[HEADER_SIZE_bytes:_TOKEN_END]
        to = data[_TOKEN_END:RELAY_OVERHEAD_bytes]
        code, i, value, tell = t.relay(token, to, addr, len(data), now)
        if code == RELAY_FORWARD:
            d = t._slots[value]
            assert d is not None
            self._c["relayed"] += 1
            self._c["relayed_bytes"] += len(data) - TOKEN_SIZE_bytes
            out = data[:2] + bytes([T_RELAYED, 0]) + t.relay_id(i) + data[RELAY_OVERHEAD_bytes:]
            replies.append((out, key_endpoint(d.addr, d.port)))
        elif code == RELAY_UNKNOWN_TOKEN:
            self._c["relay_unknown_token"] += 1
            replies.append((data[:2] + bytes([T_UNKNOWN_TOKEN, 0]) + token, addr))
        elif code == RELAY_WRONG_SOURCE:
            self._c["relay_wrong_source"] += 1
        else:
            self._c[_REFUSAL_COUNTERS[code]] += 1
            if tell:
                self._c["relay_refusals_sent"] += 1
                refusal = bytes([code]) + min(value, _U32).to_bytes(4, "big") + to
                replies.append((data[:2] + bytes([T_RELAY_REFUSED, 0]) + refusal, addr))

    def send(self, datagrams: list) -> int:
        queued = 0
        for data, addr in datagrams:
            try:
                dest = sockaddr_for(self._family, addr)
            except OSError:
                self._c["send_errors"] += 1
                continue
            if len(data) > BUF_SIZE:
                self._c["send_errors"] += 1
                continue
            if len(self._queue) == self._batch_size:  # as the Cython queue: flush when full
                self.flush()
            self._queue.append((data, dest))
            queued += 1
        return queued

    def send_to_room(self, room_id: bytes, data: bytes, exclude_slot: int = -1) -> int:
        targets = [
            (data, key_endpoint(s.addr, s.port))
            for i, s in self._table._members(room_id)
            if i != exclude_slot and not s.expiring
        ]
        return self.send(targets)

    def flush(self) -> int:
        before = self._c["sent"]
        queue, self._queue = self._queue, []
        for data, dest in queue:
            self._sendto(data, dest)
        return self._c["sent"] - before


def send_records(sock: socket.socket, addr: tuple, records: bytes, record_size: int, start: int, count: int) -> int:
    n_records = len(records) // record_size
    if n_records == 0:
        return 0
    dest = sockaddr_for(sock.family, addr)
    sent = 0
    j = start % n_records
    for _ in range(count):
        try:
            sock.sendto(records[j * record_size : (j + 1) * record_size], dest)
            sent += 1
        except OSError:
            pass
        j = j + 1 if j + 1 < n_records else 0
    return sent


def recv_batch(sock: socket.socket, max_count: int = BATCH_SIZE) -> list[tuple[bytes, Any]]:
    out = []
    for _ in range(max_count):
        try:
            out.append(sock.recvfrom(BUF_SIZE))
        except (BlockingIOError, InterruptedError):
            break
    return out
