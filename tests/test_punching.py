"""Connectivity checks on their own: the schedule, the verdicts on requests and replies
(forged, unexpected, replayed, stale), candidates and their budgets, which announced
endpoints are punched, and bounded memory of outstanding checks."""

from __future__ import annotations

import itertools

import pytest

from gochat.client.punching import MAX_REFLEXIVE, MAX_TXIDS, FRESHNESS_WINDOW_ms, Punching, Verdict, punchable
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
    request, to = alice.request(B_PUBLIC, 1.0)
    assert to == B_PUBLIC
    incoming = pw.decode(request)
    assert bob.check(incoming, A_PUBLIC) is Verdict.REQUEST
    reply, back = bob.answer(incoming, A_PUBLIC, 1.0)
    assert back == A_PUBLIC
    assert len(reply) == len(request) == pw.PUNCH_SIZE_bytes  # an answer is never larger
    answer = pw.decode(reply)
    assert answer.reply and answer.txid == incoming.txid
    assert alice.check(answer, B_PUBLIC) is Verdict.PATH_FOUND
    assert alice.check(answer, B_PUBLIC) is Verdict.UNEXPECTED_REPLY  # a replayed reply proves nothing


def test_forged_and_unsolicited_punches_are_refused(pair):
    alice, bob = pair
    request = pw.decode(alice.request(B_PUBLIC, 1.0)[0])
    stranger = Punching(b"k" * 32, request.sender_key, counter_bytes(), [])
    forged = pw.decode(stranger.answer(request, A_PUBLIC, 1.0)[0])  # right txid, wrong key
    assert alice.check(forged, B_PUBLIC) is Verdict.BAD_MAC
    flipped = pw.Punch(request.sender_key, request.txid, request.time_ms, bytes(16), reply=False)
    assert bob.check(flipped, A_PUBLIC) is Verdict.BAD_MAC
    later = pw.Punch(request.sender_key, request.txid, request.time_ms + 1, request.mac, reply=False)
    assert bob.check(later, A_PUBLIC) is Verdict.BAD_MAC  # the clock is under the MAC
    unsolicited = pw.decode(bob.answer(pw.Punch(request.sender_key, b"\x09" * 8, 0, b"", False), A_PUBLIC, 1.0)[0])
    assert alice.check(unsolicited, B_PUBLIC) is Verdict.UNEXPECTED_REPLY  # authentic, but we never asked


def test_outstanding_checks_are_bounded(pair):
    alice, bob = pair
    first = pw.decode(alice.request(B_PUBLIC, 1.0)[0])
    for _ in range(MAX_TXIDS):
        alice.request(B_PUBLIC, 1.0)
    late = pw.decode(bob.answer(first, A_PUBLIC, 1.0)[0])
    assert alice.check(late, B_PUBLIC) is Verdict.UNEXPECTED_REPLY  # forgotten: memory stays bounded


def test_a_replayed_request_is_stale_and_gets_no_answer(pair):
    """A captured request replayed later, from anywhere, is refused before it is answered
    or adopted: it cannot draw replies to a stranger's address or restart a session."""
    alice, bob = pair
    first = pw.decode(alice.request(B_PUBLIC, 10.0)[0])
    assert bob.check(first, A_PUBLIC) is Verdict.REQUEST
    assert bob.check(first, ("203.0.113.66", 5000)) is Verdict.STALE  # the same request again
    newer = pw.decode(alice.request(B_PUBLIC, 10.0 + FRESHNESS_WINDOW_ms / 1000 + 1)[0])
    assert bob.check(newer, A_PUBLIC) is Verdict.REQUEST
    older = pw.decode(alice.request(B_PUBLIC, 5.0)[0])  # made earlier, never delivered
    assert older.time_ms > first.time_ms  # a sender's clock only grows...
    assert bob.check(older, A_PUBLIC) is Verdict.REQUEST  # ...so reordering within the window is fine
    assert bob.check(first, A_PUBLIC) is Verdict.STALE  # older than the window: refused


def test_requests_reordered_within_the_window_are_all_fresh(pair):
    alice, bob = pair
    requests = [pw.decode(alice.request(B_PUBLIC, 50.0 + i * 0.1)[0]) for i in range(20)]
    verdicts = [bob.check(r, A_PUBLIC) for r in reversed(requests)]
    assert verdicts == [Verdict.REQUEST] * 20
    assert [bob.check(r, A_PUBLIC) for r in requests] == [Verdict.STALE] * 20


def test_a_new_series_forgets_the_peers_clock(pair):
    """A peer that restarted with a clock that went back is heard again once we look for
    it anew (after its silence), not never."""
    alice, bob = pair
    assert bob.check(pw.decode(alice.request(B_PUBLIC, 1000.0)[0]), A_PUBLIC) is Verdict.REQUEST
    restarted = Punching(alice._key, alice._own_key, counter_bytes(), [B_PUBLIC])
    back_in_time = pw.decode(restarted.request(B_PUBLIC, 1.0)[0])
    assert bob.check(back_in_time, A_PUBLIC) is Verdict.STALE
    bob.start(2000.0)
    assert bob.check(back_in_time, A_PUBLIC) is Verdict.REQUEST


def test_peer_reflexive_candidates_are_capped_and_budgeted(pair):
    """An unvalidated source gets one check per fresh request it sent, at most
    MAX_REFLEXIVE of them are kept, and the announced ones are unaffected."""
    _, bob = pair
    sources = [("203.0.113.9", 6000 + i) for i in range(MAX_REFLEXIVE + 3)]
    assert all(bob.on_request(s, adopt=True) is False for s in sources)
    assert bob.candidates == [A_PUBLIC, A_LAN, *sources[:MAX_REFLEXIVE]]
    bob.start(0.0)
    first = [to for _, to in bob.run_round(0.0)]
    assert first == [A_PUBLIC, A_LAN, *sources[:MAX_REFLEXIVE]]  # the credit of one request each
    second = [to for _, to in bob.run_round(0.1)]
    assert second == [A_PUBLIC, A_LAN]  # no more requests from them: no more checks
    assert bob.triggered_check(sources[0], 0.2) == []
    bob.on_request(sources[0], adopt=True)
    assert [to for _, to in bob.triggered_check(sources[0], 0.3)] == [sources[0]]
    assert bob.on_request(A_LAN, adopt=True) is True  # announced: validated


def test_an_answered_peer_reflexive_candidate_is_validated(pair):
    alice, bob = pair
    source = ("203.0.113.9", 7000)
    bob.on_request(source, adopt=True)
    ((check, to),) = bob.triggered_check(source, 1.0)
    assert to == source
    reply = pw.decode(alice.answer(pw.decode(check), B_PUBLIC, 1.0)[0])
    assert bob.check(reply, source) is Verdict.PATH_FOUND
    assert bob.is_validated(source)
    bob.start(2.0)
    for i in range(3):  # no budget any more: it proved it wants our packets
        assert source in [to for _, to in bob.run_round(2.0 + i)]


def test_a_responder_does_not_adopt(pair):
    _, bob = pair
    assert bob.on_request(("203.0.113.9", 7000), adopt=False) is False
    assert bob.candidates == [A_PUBLIC, A_LAN]


def test_local_endpoints_are_punched_only_when_they_can_be_local():
    public = ("203.0.113.5", 40000)
    local = [("10.0.0.7", 4545), ("192.168.1.3", 4545), ("93.184.216.34", 4545), ("100.64.3.2", 4545)]
    same_nat = ("203.0.113.5", 41000)
    assert punchable([public, *local], same_nat) == [
        public,
        ("10.0.0.7", 4545),
        ("192.168.1.3", 4545),
        ("100.64.3.2", 4545),
    ]
    assert punchable([public, *local], ("198.51.100.1", 4545)) == [public]  # another NAT: only the public one
    assert punchable([public, *local], None) == [public]
    assert punchable([("127.0.0.1", 5000), ("127.0.0.1", 5001), ("::1", 5002)], ("127.0.0.1", 6000)) == [
        ("127.0.0.1", 5000),
        ("127.0.0.1", 5001),
        ("::1", 5002),
    ]
    assert punchable([("2001:db8::1", 1), ("fe80::1%eth0", 2), ("fd00::2", 3)], ("2001:db8::1", 9)) == [
        ("2001:db8::1", 1),
        ("fe80::1%eth0", 2),
        ("fd00::2", 3),
    ]
    assert punchable([], same_nat) == []


def test_re_announced_endpoints_replace_the_old_ones_and_keep_reflexive_ones(pair):
    _, bob = pair
    reflexive = ("198.51.100.10", 40007)
    bob.on_request(reflexive, adopt=True)
    bob.set_endpoints([("198.51.100.10", 41000), A_LAN])  # re-announced after a re-registration
    assert bob.candidates == [("198.51.100.10", 41000), A_LAN, reflexive]
