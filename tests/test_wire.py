"""Wire format v1: exact layouts, error reasons, and property tests of every decoder."""

from __future__ import annotations

import contextlib
import hashlib
import hmac

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gochat.wire import control as wire
from gochat.wire.constants import MAX_DATAGRAM_bytes
from gochat.wire.control import DecodeError, LeaveReason, MsgType, RefuseReason

from .conftest import examples

KEY = bytes(range(32))
TOKEN = bytes(range(12))


def test_heartbeat_layout_is_header_plus_token():
    data = wire.encode(wire.TokenMessage(MsgType.HEARTBEAT, TOKEN, wire.FLAG_ACK_REQUESTED))
    assert data == b"\x47\x01\x05\x01" + TOKEN
    assert len(data) == 16


def test_rebind_challenge_and_its_answer():
    challenge = bytes(range(50, 62))
    data = wire.encode(wire.RebindChallenge(challenge))
    assert data == b"\x47\x01\x0d\x00" + challenge and len(data) == 16  # no larger than a heartbeat
    assert wire.decode(data) == wire.RebindChallenge(challenge)
    answer = wire.TokenMessage(MsgType.HEARTBEAT, TOKEN, wire.FLAG_REBIND | wire.FLAG_ACK_REQUESTED, challenge)
    data = wire.encode(answer)
    assert data == b"\x47\x01\x05\x03" + TOKEN + challenge and len(data) == 28
    assert wire.decode(data) == answer
    with pytest.raises(DecodeError) as info:
        wire.decode(data[:16])  # the REBIND flag without its challenge
    assert info.value.reason == "truncated"
    with pytest.raises(ValueError):
        wire.encode(wire.TokenMessage(MsgType.HEARTBEAT, TOKEN, wire.FLAG_REBIND))
    with pytest.raises(ValueError):
        wire.encode(wire.TokenMessage(MsgType.DISCONNECT, TOKEN, 0, challenge))


def test_register_layout():
    msg = wire.Register(b"c" * 16, 0x01020304, b"r" * 16, KEY, "ann", (("192.168.1.2", 4545),), b"p" * 16)
    data = wire.encode(msg)
    assert data[:4] == b"\x47\x01\x01\x00"
    assert data[4:20] == b"c" * 16
    assert data[20:24] == b"\x01\x02\x03\x04"
    assert data[24:40] == b"r" * 16
    assert data[40:72] == KEY
    assert data[72:76] == b"\x03ann"
    assert data[76:-16] == b"\x01" + b"\x04\xc0\xa8\x01\x02\x11\xc1"
    assert data[-16:] == b"p" * 16
    assert wire.decode(data) == msg
    head = wire.decode_register(data)
    assert head.card == data[40:-16] == wire.encode_card(KEY, "ann", [("192.168.1.2", 4545)])
    assert (head.proof, head.signed) == (b"p" * 16, data[:-16])


def test_register_proof_is_an_hmac_of_everything_before_it():
    shared = bytes(range(100, 132))
    msg = wire.Register(b"c" * 16, 9, b"r" * 16, KEY, "ann")
    proof_key = wire.register_proof_key(shared)
    assert proof_key == hashlib.sha256(b"gochat register v1\0" + shared).digest()
    data = wire.encode_signed_register(msg, proof_key)
    assert data[:-16] == wire.encode(msg)[:-16]
    assert data[-16:] == hmac.digest(proof_key, data[:-16], "sha256")[:16] == wire.register_proof(proof_key, data[:-16])


def test_cookie_layout_and_no_amplification():
    cookie = wire.encode(wire.Cookie(0x01020304, b"c" * 16, KEY))
    assert cookie == b"\x47\x01\x02\x00\x01\x02\x03\x04" + b"c" * 16 + KEY
    smallest = wire.encode(wire.Register(bytes(16), 0, bytes(16), KEY, "a"))
    assert len(cookie) == 56 < len(smallest) == 91


def test_ipv6_and_mapped_endpoints():
    e = wire.encode_endpoint(("2001:db8::1", 9595))
    assert e[0] == 6 and len(e) == 19
    mapped = wire.encode_endpoint(("::ffff:10.0.0.1", 9595))
    assert mapped == wire.encode_endpoint(("10.0.0.1", 9595))


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "truncated"),
        (b"\x47\x01\x05", "truncated"),
        (b"\x47\x01\x05\x00" + b"x" * 11, "truncated"),
        (b"\x47\x01\x05\x00" + b"x" * 13, "trailing_bytes"),
        (b"\x48\x01\x05\x00" + b"x" * 12, "bad_magic"),
        (b"\x47\x02\x05\x00" + b"x" * 12, "bad_version"),
        (b"\x47\x01\x7f\x00" + b"x" * 12, "unknown_type"),
        (b"\x47\x01\x05\x00" + b"x" * 1300, "oversized"),
        (b"\x47\x01\x04\x00" + b"\x00" * 4 + b"\x09" + b"\x00" * 4, "bad_field"),
    ],
)
def test_decode_error_reasons(data, reason):
    with pytest.raises(DecodeError) as info:
        wire.decode(data)
    assert info.value.reason == reason


def test_name_rules():
    base = wire.encode(wire.Register(bytes(16), 0, bytes(16), KEY, "x"))
    bad_utf8 = base[:72] + b"\x02\xff\xfe" + b"\x00" + bytes(16)
    with pytest.raises(DecodeError, match="UTF-8"):
        wire.decode(bad_utf8)
    control = base[:72] + b"\x02a\n" + b"\x00" + bytes(16)
    with pytest.raises(DecodeError):
        wire.decode(control)
    with pytest.raises(ValueError):
        wire.encode(wire.Register(bytes(16), 0, bytes(16), KEY, "x" * 33))


def test_entry_from_card_puts_public_endpoint_first():
    card = wire.encode_card(KEY, "bob", [("10.0.0.2", 4545)])
    entry = wire.entry_from_card(card, ("203.0.113.9", 40000))
    joined = wire.decode(wire.encode_peer_joined(b"t" * 8, [entry]))
    assert joined.peers == (wire.PeerEntry(KEY, "bob", (("203.0.113.9", 40000), ("10.0.0.2", 4545))),)


def test_pack_entries_respects_datagram_limit():
    entry = wire.encode_peer_entry(
        wire.PeerEntry(KEY, "n" * 32, tuple((f"2001:db8::{i:x}", 1000 + i) for i in range(5)))
    )
    batches = wire.pack_entries([entry] * 100, wire.PEER_LIST_OVERHEAD_bytes)
    assert sum(len(b) for b in batches) == 100
    for part, batch in enumerate(batches):
        data = wire.encode_peer_list(b"t" * 8, part, len(batches), batch)
        assert len(data) <= MAX_DATAGRAM_bytes
        assert len(wire.decode(data).peers) == len(batch)


# --- property tests -------------------------------------------------------------------

names = st.text(
    alphabet=st.characters(min_codepoint=32, blacklist_categories=("Cs",), blacklist_characters="\x7f"),
    min_size=1,
    max_size=8,
)
ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).filter(lambda a: a.ipv4_mapped is None).map(str)
endpoints = st.tuples(st.one_of(ipv4, ipv6), st.integers(1, 65535))
b = st.binary
entries = st.builds(wire.PeerEntry, b(min_size=32, max_size=32), names, st.lists(endpoints, max_size=5).map(tuple))

messages = st.one_of(
    st.builds(
        wire.Register,
        b(min_size=16, max_size=16),
        st.integers(0, 2**32 - 1),
        b(min_size=16, max_size=16),
        b(min_size=32, max_size=32),
        names,
        st.lists(endpoints, max_size=4).map(tuple),
        b(min_size=16, max_size=16),
    ),
    st.builds(wire.Cookie, st.integers(0, 2**32 - 1), b(min_size=16, max_size=16), b(min_size=32, max_size=32)),
    st.builds(
        wire.Registered,
        st.integers(0, 2**32 - 1),
        b(min_size=12, max_size=12),
        b(min_size=8, max_size=8),
        st.integers(0, 2**32 - 1),
        st.integers(0, 2**32 - 1),
        endpoints,
    ),
    st.builds(wire.Refused, st.integers(0, 2**32 - 1), st.sampled_from(RefuseReason), st.integers(0, 2**32 - 1)),
    st.builds(
        lambda t, token, flags, challenge, digest: wire.TokenMessage(
            t,
            token,
            flags,
            challenge if t is MsgType.HEARTBEAT and flags & wire.FLAG_REBIND else b"",
            digest if t is MsgType.HEARTBEAT_ACK else b"",
        ),
        st.sampled_from(sorted(wire.TOKEN_TYPES)),
        b(min_size=12, max_size=12),
        st.integers(0, 255),
        b(min_size=12, max_size=12),
        b(min_size=8, max_size=8),
    ),
    st.builds(wire.RebindChallenge, b(min_size=12, max_size=12)),
    st.builds(
        lambda tag, peers, extra: wire.PeerList(tag, min(extra, 3), 4, tuple(peers)),
        b(min_size=8, max_size=8),
        st.lists(entries, max_size=4),
        st.integers(0, 3),
    ),
    st.builds(
        lambda tag, peers: wire.PeerJoined(tag, tuple(peers)), b(min_size=8, max_size=8), st.lists(entries, max_size=4)
    ),
    st.builds(
        lambda tag, left: wire.PeerLeft(tag, tuple(left)),
        b(min_size=8, max_size=8),
        st.lists(st.tuples(b(min_size=32, max_size=32), st.sampled_from(LeaveReason)), max_size=10),
    ),
)


def _canonical(msg):
    # Decoding normalizes endpoint text (IPv6 compression); compare through a re-encode.
    return wire.encode(msg)


@given(messages)
@settings(max_examples=examples(400))
def test_encode_decode_round_trip(msg):
    data = wire.encode(msg)
    back = wire.decode(data)
    assert type(back) is type(msg)
    assert _canonical(back) == data


@given(b(max_size=1500))
@settings(max_examples=examples(2000))
def test_decoder_raises_only_decode_error_on_random_bytes(data):
    try:
        wire.decode(data)
    except DecodeError as exc:
        assert exc.reason in {
            "truncated",
            "oversized",
            "bad_magic",
            "bad_version",
            "unknown_type",
            "trailing_bytes",
            "bad_field",
        }


@given(messages, st.data())
@settings(max_examples=examples(1000))
def test_decoder_raises_only_decode_error_on_mutations(msg, data):
    raw = bytearray(wire.encode(msg))
    for _ in range(data.draw(st.integers(1, 4))):
        kind = data.draw(st.sampled_from(["flip", "cut", "grow"]))
        if kind == "flip" and raw:
            i = data.draw(st.integers(0, len(raw) - 1))
            raw[i] = data.draw(st.integers(0, 255))
        elif kind == "cut" and raw:
            del raw[data.draw(st.integers(0, len(raw) - 1)) :]
        else:
            raw += data.draw(b(max_size=20))
    with contextlib.suppress(DecodeError):
        wire.decode(bytes(raw))


@given(b(min_size=32, max_size=32), names, st.lists(endpoints, max_size=4), endpoints)
def test_card_round_trip(key, name, locals_, public):
    card = wire.encode_card(key, name, locals_)
    k, n, decoded_locals = wire.decode_card(card)
    assert (k, n) == (key, name) and len(decoded_locals) == len(locals_)
    entry = wire.decode(wire.encode_peer_joined(bytes(8), [wire.entry_from_card(card, public)])).peers[0]
    assert entry.endpoints[1:] == decoded_locals


registers = st.builds(
    wire.Register,
    b(min_size=16, max_size=16),
    st.integers(0, 2**32 - 1),
    b(min_size=16, max_size=16),
    b(min_size=32, max_size=32),
    names,
    st.lists(endpoints, max_size=4).map(tuple),
    b(min_size=16, max_size=16),
)


@given(registers, st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=3), st.integers(0, 250))
@settings(max_examples=examples(1000))
def test_fast_register_decoder_agrees_with_reference(msg, flips, cut):
    raw = bytearray(wire.encode(msg))
    for pos, value in flips:
        if pos < len(raw) and pos != 2:
            raw[pos] = value
    data = bytes(raw[: max(3, len(raw) - cut % 40)]) if cut > 200 else bytes(raw)
    try:
        ref = wire.decode(data)
    except DecodeError as exc:
        with pytest.raises(DecodeError) as info:
            wire.decode_register(data)
        assert info.value.reason == exc.reason
        return
    head = wire.decode_register(data)
    assert (head.cookie, head.request_id, head.room_id, head.public_key) == (
        ref.cookie,
        ref.request_id,
        ref.room_id,
        ref.public_key,
    )
    assert wire.decode_card(head.card)[1:] == (ref.name, ref.local_endpoints)
    assert head.proof == ref.proof and head.signed + head.proof == data
