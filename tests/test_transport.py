"""Transport encryption with explicit counters: reordering accepted, replays, stale and
tampered packets dropped with their reason, rekey and reject limits."""

from __future__ import annotations

import os

import pytest

from gochat.crypto.noise import HandshakeState, generate_private_key, public_key
from gochat.crypto.transport import REJECT_AFTER_TIME_s, REKEY_AFTER_TIME_s, TransportError, TransportKeys


def session(now=0.0, **kw):
    si, sr, psk = generate_private_key(), generate_private_key(), os.urandom(32)
    i = HandshakeState(initiator=True, static_private=si, remote_static=public_key(sr), psk=psk)
    r = HandshakeState(initiator=False, static_private=sr, psk=psk)
    r.read_message(i.write_message())
    i.read_message(r.write_message())
    (i_tx, i_rx), (r_tx, r_rx) = i.split(), r.split()
    return TransportKeys(i_tx.key, i_rx.key, now, **kw), TransportKeys(r_tx.key, r_rx.key, now, **kw)


def test_reordered_packets_all_arrive_once():
    a, b = session()
    packets = [a.encrypt(b"m%d" % n, b"hdr", 1.0) for n in range(50)]
    order = list(range(50))
    order.reverse()
    got = [b.decrypt(*packets[n], b"hdr", 1.0) for n in order]
    assert sorted(got) == sorted(b"m%d" % n for n in range(50))
    with pytest.raises(TransportError) as info:
        b.decrypt(*packets[7], b"hdr", 1.0)
    assert info.value.reason == "replayed"


def test_tampered_and_wrong_header_are_dropped():
    a, b = session()
    counter, ct = a.encrypt(b"hello", b"hdr", 1.0)
    flipped = bytes([ct[0] ^ 1]) + ct[1:]
    for args in ((counter, flipped, b"hdr"), (counter, ct, b"HDR"), (counter + 1, ct, b"hdr")):
        with pytest.raises(TransportError) as info:
            b.decrypt(*args, 1.0)
        assert info.value.reason == "tampered"
    assert b.decrypt(counter, ct, b"hdr", 1.0) == b"hello"  # the genuine one still passes


def test_packets_older_than_the_window_are_stale():
    a, b = session()
    first = a.encrypt(b"old", b"", 1.0)
    for _ in range(b.window.window_size + 1):
        last = a.encrypt(b"x", b"", 1.0)
    assert b.decrypt(*last, b"", 1.0) == b"x"
    with pytest.raises(TransportError) as info:
        b.decrypt(*first, b"", 1.0)
    assert info.value.reason == "stale"


def test_rekey_by_count_and_time_and_reject_after():
    a, _ = session(now=100.0, rekey_after_messages=3)
    assert not a.needs_rekey(100.0)
    for _ in range(3):
        a.encrypt(b"x", b"", 100.0)
    assert a.needs_rekey(100.0)
    c, _ = session(now=100.0)
    assert not c.needs_rekey(100.0 + REKEY_AFTER_TIME_s - 0.001)
    assert c.needs_rekey(100.0 + REKEY_AFTER_TIME_s)
    with pytest.raises(TransportError) as info:
        c.encrypt(b"late", b"", 100.0 + REJECT_AFTER_TIME_s)
    assert info.value.reason == "keys_expired"
