"""Connectivity checks on their own: the schedule, the verdicts on requests and replies
(forged, unexpected, replayed), candidates, and bounded memory of outstanding checks."""

from __future__ import annotations

import itertools

import pytest

from gochat.client.punching import MAX_TXIDS, Punching, Verdict
from gochat.constants import PUNCH_DEADLINE_s, PUNCH_INTERVAL_s, PUNCH_SCHEDULE_s
from gochat.crypto.noise import dh, generate_private_key, public_key
from gochat.wire import data as pw

A_LAN, A_PUBLIC = ("10.0.0.2", 4545), ("198.51.100.10", 40000)
B_PUBLIC = ("198.51.100.20", 40000)


def counter_bytes():
    counter = itertools.count()
    return lambda n: next(counter).to_bytes(n, "big")


@pytest.fixture
def pair():
    """Alice's and Bob's checkers towards each other (keys as two real peers derive them)."""
    a, b = generate_private_key(), generate_private_key()
    a_pub, b_pub = public_key(a), public_key(b)
    alice = Punching(pw.punch_key(dh(a, b_pub)), a_pub, counter_bytes(), [B_PUBLIC])
    bob = Punching(pw.punch_key(dh(b, a_pub)), b_pub, counter_bytes(), [A_PUBLIC, A_LAN])
    return alice, bob


def test_rounds_follow_the_schedule_to_every_candidate_until_the_deadline(pair):
    _, bob = pair
    bob.start(100.0)
    times, now = [], 100.0
    while now < bob.deadline:
        if now >= bob.next_round:
            sent = bob.run_round(now)
            assert [endpoint for _, endpoint in sent] == [A_PUBLIC, A_LAN]
            times.append(round(now - 100.0, 6))
        now = round(now + 0.05, 6)
    expected = list(PUNCH_SCHEDULE_s)
    while expected[-1] + PUNCH_INTERVAL_s < PUNCH_DEADLINE_s:
        expected.append(expected[-1] + PUNCH_INTERVAL_s)
    assert times == expected
    assert bob.deadline == 100.0 + PUNCH_DEADLINE_s


def test_a_reply_to_our_request_finds_the_path_once(pair):
    alice, bob = pair
    request, to = alice.request(B_PUBLIC)
    assert to == B_PUBLIC
    incoming = pw.decode(request)
    assert bob.check(incoming) is Verdict.REQUEST
    reply, back = bob.answer(incoming, A_PUBLIC)
    assert back == A_PUBLIC
    answer = pw.decode(reply)
    assert answer.reply and answer.txid == incoming.txid
    assert alice.check(answer) is Verdict.PATH_FOUND
    assert alice.check(answer) is Verdict.UNEXPECTED_REPLY  # a replayed reply proves nothing


def test_forged_and_unsolicited_punches_are_refused(pair):
    alice, bob = pair
    request = pw.decode(alice.request(B_PUBLIC)[0])
    stranger = Punching(b"k" * 32, request.sender_key, counter_bytes(), [])
    forged = pw.decode(stranger.answer(request, A_PUBLIC)[0])  # right txid, wrong key
    assert alice.check(forged) is Verdict.BAD_MAC
    flipped = pw.Punch(request.sender_key, request.txid, bytes(16), reply=False)
    assert bob.check(flipped) is Verdict.BAD_MAC
    unsolicited = pw.decode(bob.answer(pw.Punch(request.sender_key, b"\x09" * 8, b"", False), A_PUBLIC)[0])
    assert alice.check(unsolicited) is Verdict.UNEXPECTED_REPLY  # authentic, but we never asked


def test_outstanding_checks_are_bounded(pair):
    alice, bob = pair
    first = pw.decode(alice.request(B_PUBLIC)[0])
    for _ in range(MAX_TXIDS):
        alice.request(B_PUBLIC)
    late = pw.decode(bob.answer(first, A_PUBLIC)[0])
    assert alice.check(late) is Verdict.UNEXPECTED_REPLY  # forgotten: memory stays bounded


def test_candidates_keep_peer_reflexive_ones_behind_the_announced(pair):
    _, bob = pair
    reflexive = ("198.51.100.10", 40007)
    assert bob.add_candidate(reflexive) and not bob.add_candidate(reflexive)
    bob.set_endpoints([("198.51.100.10", 41000), A_LAN])  # re-announced after a re-registration
    assert bob.candidates == [("198.51.100.10", 41000), A_LAN, A_PUBLIC, reflexive]
