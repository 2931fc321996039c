"""Reliable ordered delivery with simulated time over a simulated lossy, reordering,
delaying channel: exactly once, in order, RTO per RFC 6298, give-up, fragmentation."""

from __future__ import annotations

import heapq
import random

import pytest

from gochat.client.reliable import (
    BadAck,
    FrameError,
    GIVE_UP_AFTER_s,
    MAX_MESSAGE_bytes,
    MessageTooLong,
    ReliableReceiver,
    ReliableSender,
    RTO_INITIAL_s,
    RttEstimator,
    parse_ack,
)


class Channel:
    """Drives a sender and a receiver through a lossy, reordering, delaying link."""

    def __init__(self, seed=1, loss=0.0, delay=0.05, jitter=0.0):
        self.rnd = random.Random(seed)
        self.loss, self.delay, self.jitter = loss, delay, jitter
        self.now = 0.0
        self.sender = ReliableSender(self.now)
        self.receiver = ReliableReceiver()
        self.events = []  # (time, order, kind, frame)
        self.order = 0
        self.delivered = []
        self.done = []
        self.undelivered = []
        self.up = True

    def _post(self, kind, frame):
        if not self.up or self.rnd.random() < self.loss:
            return
        self.order += 1
        when = self.now + self.delay + self.rnd.random() * self.jitter
        heapq.heappush(self.events, (when, self.order, kind, frame))

    def pump(self):
        for frame in self.sender.datagrams_to_send(self.now):
            self._post("data", frame)

    def run(self, until):
        self.pump()
        while self.now < until:
            timer = self.sender.get_timer()
            nxt = min([t for t in (timer, self.events[0][0] if self.events else None) if t is not None] + [until])
            self.now = max(self.now, nxt)
            while self.events and self.events[0][0] <= self.now:
                _, _, kind, frame = heapq.heappop(self.events)
                if kind == "data":
                    msgs, ack = self.receiver.on_data(frame)
                    self.delivered += msgs
                    self._post("ack", ack)
                else:
                    self.done += self.sender.on_ack(*parse_ack(frame), self.now)
            self.undelivered += self.sender.expired(self.now)
            self.pump()
            if self.sender.idle and not self.events and self.now >= until - 1e-9:
                break


def test_lossless_in_order():
    ch = Channel()
    for n in range(10):
        ch.sender.send(b"m%d" % n, 0.0)
    ch.run(5.0)
    assert ch.delivered == [b"m%d" % n for n in range(10)]
    assert sorted(ch.done) == list(range(10)) and ch.sender.retransmissions == 0


@pytest.mark.parametrize("seed", range(5))
def test_lossy_reordering_link_exactly_once_in_order(seed):
    ch = Channel(seed=seed, loss=0.2, delay=0.05, jitter=0.08)
    for n in range(100):
        ch.sender.send(b"message %03d" % n, 0.0)
    ch.run(25.0)
    assert ch.delivered == [b"message %03d" % n for n in range(100)]
    assert ch.undelivered == [] and ch.sender.idle
    assert ch.sender.retransmissions > 0


def test_fragmented_64k_message_and_limit():
    ch = Channel(seed=3, loss=0.1, jitter=0.05)
    big = bytes(range(256)) * 256  # 64 KiB
    assert len(big) == MAX_MESSAGE_bytes
    ch.sender.send(big, 0.0)
    ch.sender.send(b"after", 0.0)
    ch.run(20.0)
    assert ch.delivered == [big, b"after"]
    with pytest.raises(MessageTooLong):
        ch.sender.send(big + b"!", 0.0)


def test_give_up_reports_undelivered_and_later_messages_still_flow():
    ch = Channel()
    ch.up = False
    ch.sender.send(b"lost", 0.0)
    ch.run(GIVE_UP_AFTER_s - 0.01)
    assert ch.undelivered == []
    ch.run(GIVE_UP_AFTER_s + 0.01)
    assert ch.undelivered == [(0, b"lost")]
    ch.up = True
    ch.sender.send(b"back", ch.now)
    ch.run(ch.now + 5)
    assert ch.delivered == [b"back"]  # the receiver skipped what the sender abandoned


def test_rto_per_rfc6298():
    est = RttEstimator()
    assert est.rto == RTO_INITIAL_s
    est.sample(0.1)
    assert est.srtt == 0.1 and est.rttvar == 0.05 and est.rto == pytest.approx(0.3)
    est.sample(0.2)
    assert est.rttvar == pytest.approx(0.75 * 0.05 + 0.25 * 0.1)
    assert est.srtt == pytest.approx(0.875 * 0.1 + 0.125 * 0.2)
    before = est.rto
    est.backoff()
    assert est.rto == pytest.approx(before * 2)


def test_receiver_memory_is_bounded_and_bad_frames_refused():
    rx = ReliableReceiver()
    tx = ReliableSender(0.0)
    for _ in range(600):
        tx.send(b"x", 0.0)
    frames = tx.datagrams_to_send(0.0)
    assert len(frames) == 256  # the sender's window
    for f in reversed(frames[1:]):
        rx.on_data(f)
    assert len(rx._buffer) <= 256
    with pytest.raises(FrameError):
        rx.on_data(b"\x01" + bytes(5))
    with pytest.raises(FrameError):
        rx.on_data(b"\x01" + bytes(12) + b"\x00\x05\x00\x02")  # index 5 of 2


def test_an_ack_of_what_was_never_sent_is_refused_and_changes_nothing():
    """A receiver still in an old sequence space acknowledges far beyond what a new
    sender sent: taking it at its word would report undelivered messages as delivered."""
    tx = ReliableSender(0.0)
    for n in range(3):
        tx.send(b"m%d" % n, 0.0)
    assert len(tx.datagrams_to_send(0.0)) == 3  # seq 0, 1, 2
    with pytest.raises(BadAck):
        tx.on_ack(40, 0, 0.1)  # next expected beyond the next sequence number (3)
    with pytest.raises(BadAck):
        tx.on_ack(1, 0b10, 0.1)  # bit 1: seq 3, never sent
    with pytest.raises(BadAck):
        tx.on_ack(3, 0b1, 0.1)  # bit 0: seq 4
    assert tx.unacknowledged == 3
    assert tx.on_ack(1, 0b1, 0.1) == [0, 2]  # seq 0 and seq 2: what was sent
    assert tx.on_ack(3, 0, 0.2) == [1]
    assert tx.idle


def test_deadlines_cost_the_same_whatever_is_in_flight(monkeypatch):
    """A room asks every peer for its next deadline after every event: the sender answers
    (and finds nothing due) without looking at every fragment or message it holds."""
    from gochat.client import reliable

    touched = 0

    def counting(self, name):
        nonlocal touched
        touched += 1
        return object.__getattribute__(self, name)

    def cost(n):
        nonlocal touched
        tx = ReliableSender(0.0)
        for i in range(n):
            tx.send(b"m%d" % i, i * 0.001)
        tx.datagrams_to_send(0.2)
        tx.on_ack(1, 0, 0.25)  # the first acknowledged: an RTT sample, nothing lost
        tx.datagrams_to_send(0.25)  # the place it freed in the window
        monkeypatch.setattr(reliable._Fragment, "__getattribute__", counting)
        monkeypatch.setattr(reliable._Outgoing, "__getattribute__", counting)
        touched = 0
        deadlines = (tx.get_timer(), tx.retransmit_timer(), tx.give_up_timer())
        assert tx.datagrams_to_send(0.3) == []  # nothing due yet
        monkeypatch.undo()
        assert deadlines[2] == 0.001 + GIVE_UP_AFTER_s  # the oldest pending message's
        return touched

    assert cost(150) == cost(3) <= 8
    assert cost(150) == cost(1000)  # beyond the window, the queue is not looked at either


def test_restart_reports_what_was_sent_and_keeps_what_was_not():
    tx = ReliableSender(0.0)
    for n in range(255):
        tx.send(b"m%d" % n, 0.0, ref=n)
    tx.send(b"x" * 2500, 0.0, ref="in part")  # three fragments: the window lets one go
    tx.send(b"queued", 0.0, ref="never sent")
    assert len(tx.datagrams_to_send(0.0)) == 256
    tx.on_ack(1, 0, 0.1)  # m0 arrived: its receiver showed it
    assert tx.restart() == [(n, b"m%d" % n) for n in range(1, 255)] + [("in part", b"x" * 2500)]
    rx = ReliableReceiver()  # the peer's new receiver
    delivered = [m for f in tx.datagrams_to_send(0.2) for m in rx.on_data(f)[0]]
    assert delivered == [b"queued"]
