"""Reliable, ordered delivery of chat messages to one peer over lossy UDP (sans-I/O).

Each message is cut into fragments; every fragment gets the next sequence number of
this sender. The receiver delivers messages in sequence order, exactly once, and
acknowledges with a cumulative sequence plus a 64-bit selective-ack bitmap. The sender
retransmits on a retransmission timeout estimated per RFC 6298 and gives up on a message
after a deadline, reporting it undelivered; every DATA frame carries the sender's
``base`` (lowest sequence it still retransmits) so a receiver never waits for a message
the sender abandoned. Memory is bounded on both sides by a window of fragments.

Frames (the plaintext inside an encrypted transport packet):
  DATA  0x01 | seq u32 | base u32 | msg_id u32 | index u16 | count u16 | payload
  ACK   0x02 | next_expected u32 | sack u64 (bit i: next_expected + 1 + i received)
"""

from __future__ import annotations

import struct
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from gochat.wire.data import FrameType

MAX_MESSAGE_bytes = 64 * 1024
FRAGMENT_bytes = 1000  # payload per fragment: fits a 1200-byte datagram with headers
WINDOW_FRAGMENTS = 256  # in flight (sender) and buffered ahead (receiver)
GIVE_UP_AFTER_s = 30.0
RTO_INITIAL_s = 1.0  # RFC 6298 2.1
RTO_MIN_s = 0.2  # below RFC 6298's 1 s, as Linux TCP: chat wants quick repair
RTO_MAX_s = 10.0
_ALPHA, _BETA, _K, _G = 1 / 8, 1 / 4, 4, 0.01

_DATA = struct.Struct("!BIIIHH")
_ACK = struct.Struct("!BIQ")
T_DATA, T_ACK = FrameType.DATA, FrameType.ACK


class FrameError(ValueError):
    """A frame that does not parse; dropped and counted by the caller."""


class BadAck(FrameError):
    """An ACK of a sequence number this sender never sent: it cannot be about our
    messages (a receiver still in an old sequence space); ignored and counted."""


class MessageTooLong(ValueError):
    """A message over MAX_MESSAGE_bytes: refused before anything is sent."""


def check_length(message: bytes) -> None:
    """Raise MessageTooLong for a message over MAX_MESSAGE_bytes."""
    if len(message) > MAX_MESSAGE_bytes:
        raise MessageTooLong(f"message of {len(message)} bytes; the limit is {MAX_MESSAGE_bytes}")


def _seq_lt(a: int, b: int) -> bool:
    return ((a - b) & 0xFFFFFFFF) > 0x7FFFFFFF


class RttEstimator:
    """Smoothed RTT and retransmission timeout per RFC 6298, with its exponential backoff
    kept apart so that an ACK of new data can end it (as Linux does): otherwise, once
    every fragment in flight is a retransmission, Karn's rule leaves no sample that
    could ever bring the timeout down again."""

    def __init__(self) -> None:
        self.srtt: float | None = None
        self.rttvar = 0.0
        self._base = RTO_INITIAL_s
        self._backoffs = 0

    @property
    def rto(self) -> float:
        return min(RTO_MAX_s, self._base * 2.0**self._backoffs)

    def sample(self, rtt: float) -> None:
        if self.srtt is None:
            self.srtt, self.rttvar = rtt, rtt / 2
        else:
            self.rttvar = (1 - _BETA) * self.rttvar + _BETA * abs(self.srtt - rtt)
            self.srtt = (1 - _ALPHA) * self.srtt + _ALPHA * rtt
        self._base = min(RTO_MAX_s, max(RTO_MIN_s, self.srtt + max(_G, _K * self.rttvar)))

    def backoff(self) -> None:
        if self.rto < RTO_MAX_s:
            self._backoffs += 1

    def reset_backoff(self) -> None:
        self._backoffs = 0


@dataclass
class _Fragment:
    seq: int
    msg_id: int
    index: int
    count: int
    payload: bytes
    first_sent: float = 0.0  # both set when the fragment first goes out
    last_sent: float = 0.0
    retransmitted: bool = False
    lost: bool = False  # a fragment sent after it was acknowledged: resend now (RACK)


@dataclass
class _Outgoing:
    text: bytes
    seqs: list[int]
    created: float
    ref: object  # what the caller named the message by (its id unless given)
    acked: set = field(default_factory=set)


class ReliableSender:
    """The sending side towards one peer. Every deadline it has is read in O(1): messages
    are kept in the order they were typed (the oldest has the first give-up deadline) and
    fragments in flight both in sequence order (the lowest is ``base``; a cumulative ACK
    takes them from the front) and in the order they were last sent (the first is the
    next retransmission). A room asks each peer for its next deadline after every event,
    so none of this may cost a scan of what is in flight."""

    def __init__(self, now: float) -> None:
        self.rtt = RttEstimator()
        self.next_seq = 0
        self.next_msg_id = 0
        self._queue: deque[_Fragment] = deque()  # not yet sent (beyond the window), in sequence order
        self._in_flight: OrderedDict[int, _Fragment] = OrderedDict()  # by sequence number
        self._by_time: OrderedDict[int, _Fragment] = OrderedDict()  # the same, by last_sent
        self._lost: set[int] = set()  # in flight, found lost by RACK: due at once
        self._messages: OrderedDict[int, _Outgoing] = OrderedDict()  # by creation
        self.retransmissions = 0

    @property
    def base(self) -> int:
        """The lowest sequence number still sent (in flight, else queued), else next_seq."""
        if self._in_flight:
            return next(iter(self._in_flight))
        return self._queue[0].seq if self._queue else self.next_seq

    def send(self, message: bytes, now: float, ref: object = None) -> int:
        """Queue a message; returns its id. ``ref`` is what give-ups name it by (its id
        when None). Raises MessageTooLong over 64 KiB."""
        check_length(message)
        msg_id = self.next_msg_id
        self.next_msg_id = (self.next_msg_id + 1) & 0xFFFFFFFF
        chunks = [message[i : i + FRAGMENT_bytes] for i in range(0, len(message), FRAGMENT_bytes)] or [b""]
        seqs = []
        for index, chunk in enumerate(chunks):
            self._queue.append(_Fragment(self.next_seq, msg_id, index, len(chunks), chunk))
            seqs.append(self.next_seq)
            self.next_seq = (self.next_seq + 1) & 0xFFFFFFFF
        self._messages[msg_id] = _Outgoing(message, seqs, now, msg_id if ref is None else ref)
        return msg_id

    def datagrams_to_send(self, now: float) -> list[bytes]:
        """DATA frames due now: retransmissions (found lost, or past the RTO), then new
        fragments within the window."""
        rto = self.rtt.rto
        due = {seq: self._in_flight[seq] for seq in self._lost}
        timed_out = False
        for seq, frag in self._by_time.items():
            if now < frag.last_sent + rto:  # the same sum retransmit_timer() returns
                break
            if seq not in due:
                timed_out = True
                due[seq] = frag
        if timed_out:
            self.rtt.backoff()  # RFC 6298 5.5
        base = self.base
        out = sorted(due.values(), key=lambda f: (f.seq - base) & 0xFFFFFFFF)
        for frag in out:
            frag.last_sent = now
            frag.retransmitted = True
            self._by_time.move_to_end(frag.seq)
        self.retransmissions += len(out)
        self._lost.clear()
        while self._queue and len(self._in_flight) < WINDOW_FRAGMENTS:
            frag = self._queue.popleft()
            frag.first_sent = frag.last_sent = now
            self._in_flight[frag.seq] = self._by_time[frag.seq] = frag
            out.append(frag)
        base = self.base
        return [_DATA.pack(T_DATA, f.seq, base, f.msg_id, f.index, f.count) + f.payload for f in out]

    def get_timer(self) -> float | None:
        """The next retransmission or give-up, whichever comes first."""
        times = [t for t in (self.retransmit_timer(), self.give_up_timer()) if t is not None]
        return min(times, default=None)

    def retransmit_timer(self) -> float | None:
        """When a fragment in flight is due again: the one sent longest ago, an RTO later;
        at once when one was found lost (the oldest send time is already past)."""
        if not self._by_time:
            return None
        oldest = next(iter(self._by_time.values())).last_sent
        return oldest if self._lost else oldest + self.rtt.rto

    def give_up_timer(self) -> float | None:
        """The next give-up deadline alone (the oldest message's): all that matters while
        nothing can be sent."""
        if not self._messages:
            return None
        return next(iter(self._messages.values())).created + GIVE_UP_AFTER_s

    def on_ack(self, next_expected: int, sack: int, now: float) -> list[int]:
        """Process an ACK; returns the ids of messages now fully delivered. Raises BadAck,
        changing nothing, for an ACK of a sequence number never sent (``next_expected``
        beyond ``next_seq``, or a sack bit at or beyond it)."""
        unsent_from = (self.next_seq - next_expected) & 0xFFFFFFFF  # sack bit of next_seq, +1
        if unsent_from > 0x7FFFFFFF:
            raise BadAck(f"acknowledges up to {next_expected}, next sequence is {self.next_seq}")
        if unsent_from <= 64 and sack >> max(unsent_from - 1, 0):
            raise BadAck(f"selective ack beyond {self.next_seq}")
        acked: list[_Fragment] = []
        while self._in_flight:  # cumulative: from the lowest sequence number up
            seq = next(iter(self._in_flight))
            if not _seq_lt(seq, next_expected):
                break
            acked.append(self._in_flight.pop(seq))
        while sack:
            low = sack & -sack
            frag = self._in_flight.pop((next_expected + low.bit_length()) & 0xFFFFFFFF, None)
            if frag is not None:
                acked.append(frag)
            sack ^= low
        done = []
        newest_sent = None
        for frag in acked:
            del self._by_time[frag.seq]
            self._lost.discard(frag.seq)
            newest_sent = frag.last_sent if newest_sent is None else max(newest_sent, frag.last_sent)
            if not frag.retransmitted:  # Karn's algorithm: only unambiguous samples
                self.rtt.sample(now - frag.first_sent)
            msg = self._messages.get(frag.msg_id)
            if msg is not None:
                msg.acked.add(frag.seq)
                if len(msg.acked) == len(msg.seqs):
                    del self._messages[frag.msg_id]
                    done.append(frag.msg_id)
        if newest_sent is not None:
            self.rtt.reset_backoff()
            # RACK (RFC 8985), simplified: a fragment sent before one that has now been
            # acknowledged, and older than an RTT plus a reordering allowance, is lost.
            # In send order, both conditions hold for a prefix.
            srtt = self.rtt.srtt if self.rtt.srtt is not None else self.rtt.rto
            for seq, f in self._by_time.items():
                if f.last_sent >= newest_sent or now - f.last_sent < srtt * 1.25:
                    break
                self._lost.add(seq)
        return done

    def expired(self, now: float) -> list[tuple[object, bytes]]:
        """Messages given up on (deadline passed): (ref, text), oldest first. Their
        fragments are dropped, and ``base`` moves past them so the receiver stops waiting."""
        gone: dict[int, _Outgoing] = {}
        while self._messages:
            mid, m = next(iter(self._messages.items()))
            if now < m.created + GIVE_UP_AFTER_s:
                break
            del self._messages[mid]
            gone[mid] = m
            for seq in m.seqs:
                if self._in_flight.pop(seq, None) is not None:
                    del self._by_time[seq]
                    self._lost.discard(seq)
        while self._queue and self._queue[0].msg_id in gone:
            self._queue.popleft()  # the oldest messages' fragments are the first queued
        return [(m.ref, m.text) for m in gone.values()]

    def abandon(self) -> list[tuple[object, bytes]]:
        """Give up on everything still unacknowledged (the peer is gone); returns the
        messages, (ref, text). ``base`` moves past them, so a receiver met again skips them."""
        texts = [(m.ref, m.text) for m in self._messages.values()]
        self._messages.clear()
        self._in_flight.clear()
        self._by_time.clear()
        self._lost.clear()
        self._queue.clear()
        return texts

    def restart(self) -> list[tuple[object, bytes]]:
        """The receiver started over, with no memory of what it delivered: give up on
        every message sent in whole or in part (the old receiver may have shown it, and
        sending it again could show it twice); returns them, (ref, text), oldest first.
        Messages never sent stay queued, in this sequence space; ``base`` moves to the
        first of them, where the new receiver starts."""
        first_unsent = self._queue[0].seq if self._queue else self.next_seq
        gone: dict[int, _Outgoing] = {}
        while self._messages:
            mid, m = next(iter(self._messages.items()))
            if not _seq_lt(m.seqs[0], first_unsent):
                break
            del self._messages[mid]
            gone[mid] = m
        while self._queue and self._queue[0].msg_id in gone:
            self._queue.popleft()  # the unsent rest of a message sent in part
        self._in_flight.clear()  # every fragment in flight belonged to those
        self._by_time.clear()
        self._lost.clear()
        self.rtt.reset_backoff()
        return [(m.ref, m.text) for m in gone.values()]

    @property
    def unacknowledged(self) -> int:
        return len(self._messages)

    @property
    def idle(self) -> bool:
        return not self._messages


class ReliableReceiver:
    def __init__(self) -> None:
        self.next_expected = 0
        self._buffer: dict[int, tuple[int, int, int, bytes]] = {}  # seq -> (msg_id, index, count, payload)
        self._partial: list[bytes] = []
        self.duplicates = 0
        self.out_of_window = 0

    def on_data(self, frame: bytes) -> tuple[list[bytes], bytes]:
        """Take a DATA frame; returns (messages now deliverable in order, ACK frame)."""
        if len(frame) < _DATA.size or frame[0] != T_DATA:
            raise FrameError("not a DATA frame")
        _, seq, base, msg_id, index, count = _DATA.unpack_from(frame)
        if count == 0 or index >= count or count * FRAGMENT_bytes > MAX_MESSAGE_bytes + FRAGMENT_bytes:
            raise FrameError("bad fragment numbering")
        if len(frame) - _DATA.size > FRAGMENT_bytes:
            raise FrameError("fragment too long")
        delivered: list[bytes] = []
        if _seq_lt(self.next_expected, base):  # the sender gave up on what we miss: skip it
            for s in list(self._buffer):
                if _seq_lt(s, base):
                    del self._buffer[s]
            self.next_expected = base
            self._partial = []
        ahead = (seq - self.next_expected) & 0xFFFFFFFF
        if _seq_lt(seq, self.next_expected) or seq in self._buffer:
            self.duplicates += 1
        elif ahead >= WINDOW_FRAGMENTS:
            self.out_of_window += 1
        else:
            self._buffer[seq] = (msg_id, index, count, frame[_DATA.size :])
        while self.next_expected in self._buffer:
            msg_id, index, count, payload = self._buffer.pop(self.next_expected)
            self.next_expected = (self.next_expected + 1) & 0xFFFFFFFF
            if index == 0:
                self._partial = []
            if index != len(self._partial):  # a message whose head was skipped: drop the rest
                continue
            self._partial.append(payload)
            if index == count - 1:
                delivered.append(b"".join(self._partial))
                self._partial = []
        return delivered, self.ack()

    def ack(self) -> bytes:
        sack = 0
        for seq in self._buffer:
            offset = (seq - self.next_expected - 1) & 0xFFFFFFFF
            if offset < 64:
                sack |= 1 << offset
        return _ACK.pack(T_ACK, self.next_expected, sack)


def parse_ack(frame: bytes) -> tuple[int, int]:
    if len(frame) != _ACK.size or frame[0] != T_ACK:
        raise FrameError("not an ACK frame")
    _, next_expected, sack = _ACK.unpack(frame)
    return next_expected, sack
