"""The peer data-plane codec: exact sizes, round trips, and only DecodeError on bad input."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gochat.wire import data as pw
from gochat.wire.control import DecodeError

KEY = bytes(range(32))
PUNCH_KEY = pw.punch_key(b"s" * 32)


def test_sizes_and_round_trips():
    punch = pw.encode_punch(PUNCH_KEY, KEY, b"t" * 8, 77, reply=True)
    assert len(punch) == pw.PUNCH_SIZE_bytes == 68
    assert punch[44:52] == (77).to_bytes(8, "big")  # the sender's clock, big-endian, before the MAC
    msg = pw.decode(punch)
    assert msg == pw.Punch(KEY, b"t" * 8, 77, punch[52:], True) and pw.verify_punch(PUNCH_KEY, msg)
    assert not pw.verify_punch(pw.punch_key(b"o" * 32), msg)
    assert not pw.verify_punch(PUNCH_KEY, pw.Punch(KEY, b"t" * 8, 77, punch[52:], False))  # the flag is covered
    assert not pw.verify_punch(PUNCH_KEY, pw.Punch(KEY, b"t" * 8, 78, punch[52:], True))  # the clock is covered
    for n in (pw.NOISE_INIT_MIN_bytes, pw.NOISE_INIT_MAX_bytes):
        init = pw.encode_handshake_init(7, b"n" * n)
        assert pw.decode(init) == pw.HandshakeInit(7, b"n" * n)
    for n in (pw.NOISE_RESP_MIN_bytes, pw.NOISE_RESP_MAX_bytes):
        resp = pw.encode_handshake_resp(8, 7, b"r" * n)
        assert pw.decode(resp) == pw.HandshakeResp(8, 7, b"r" * n)
    # names of 1..32 bytes: 122..153 and 70..101 bytes; any response is smaller than any initiation
    assert (pw.INIT_MIN_bytes, pw.INIT_MAX_bytes, pw.RESP_MIN_bytes, pw.RESP_MAX_bytes) == (122, 153, 70, 101)
    data = pw.transport_ad(9, 2**40) + b"c" * 20
    assert pw.decode(data) == pw.Transport(9, 2**40, b"c" * 20, data[:16])


def test_each_kind_of_bad_input_has_its_reason():
    cases = {
        b"\x47\x01\x20": "truncated",
        b"\x46\x01\x20\x00" + bytes(56): "bad_magic",
        b"\x47\x02\x20\x00" + bytes(56): "bad_version",
        b"\x47\x01\x3f\x00": "unknown_type",
        pw.encode_punch(PUNCH_KEY, KEY, b"t" * 8, 77) + b"x": "trailing_bytes",
        pw.encode_handshake_init(1, bytes(pw.NOISE_INIT_MIN_bytes))[:-1]: "truncated",
        pw.encode_handshake_init(1, bytes(pw.NOISE_INIT_MAX_bytes + 1)): "trailing_bytes",
        pw.encode_handshake_resp(1, 2, bytes(pw.NOISE_RESP_MAX_bytes + 1)): "trailing_bytes",
        pw.transport_ad(1, 1) + bytes(15): "truncated",
        pw.transport_ad(1, 1) + bytes(1200): "oversized",
    }
    for data, reason in cases.items():
        try:
            pw.decode(data)
        except DecodeError as exc:
            assert exc.reason == reason, (data[:8], exc.reason)
        else:
            raise AssertionError(f"{data[:8]!r} decoded")


@given(st.binary(max_size=1300))
def test_random_bytes_raise_only_decode_error(data):
    with contextlib.suppress(DecodeError):
        pw.decode(data)


@given(st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1), st.binary(min_size=16, max_size=1000))
def test_transport_round_trip(index, counter, ciphertext):
    data = pw.transport_ad(index, counter) + ciphertext
    msg = pw.decode(data)
    assert (msg.receiver_index, msg.counter, msg.ciphertext) == (index, counter, ciphertext)


@given(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1), st.text(min_size=1, max_size=32))
def test_handshake_payloads_round_trip_with_the_name(epoch, number, name):
    raw = name.encode("utf-8")
    if len(raw) > 32 or any(c < 0x20 or c == 0x7F for c in raw):
        return
    assert pw.decode_init_payload(pw.encode_init_payload(epoch, number, name)) == (epoch, number, name)
    assert pw.decode_resp_payload(pw.encode_resp_payload(epoch, name)) == (epoch, name)


def test_handshake_payload_names_follow_the_wire_name_rules():
    fixed = bytes(16)
    for bad in (b"", b"\x00", b"\x03ab", b"\x02a", b"\x01\n", b"\x02\xc3(", bytes([33]) + b"x" * 33):
        for payload, decode in ((fixed + bad, pw.decode_init_payload), (fixed[:8] + bad, pw.decode_resp_payload)):
            try:
                decode(payload)
            except DecodeError as exc:
                assert exc.reason == "bad_field"
            else:
                raise AssertionError(f"{payload!r} decoded")
    with pytest.raises(ValueError):
        pw.encode_init_payload(1, 1, "x" * 33)
