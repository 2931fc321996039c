"""One source for the wire constants: the compiled fast path copies them into C enums
(it cannot import Python values), so every value and struct size it was compiled with
is pinned here to its reference: gochat/wire/constants.py, the codec in
gochat/wire/control.py and the limits in gochat/constants.py. The pure-Python twin
imports the references; it is checked the same way, and both are checked to frame
heartbeats and build peer entries exactly as the reference codec does."""

from __future__ import annotations

import socket
import time

import pytest

from gochat import constants as C
from gochat.bootnode import _purepath
from gochat.bootnode.cookie import CookieJar
from gochat.wire import constants as W
from gochat.wire import control
from gochat.wire.control import MsgType

ROOM = b"R" * W.ROOM_ID_SIZE_bytes
TAG = b"T" * W.ROOM_TAG_SIZE_bytes

# name in the implementations' CONSTANTS -> the reference value
REFERENCE = {
    "MAGIC": W.MAGIC,
    "VERSION": W.VERSION,
    "HEADER_SIZE": W.HEADER_SIZE_bytes,
    "T_HEARTBEAT": W.T_HEARTBEAT,
    "T_HEARTBEAT_ACK": W.T_HEARTBEAT_ACK,
    "T_UNKNOWN_TOKEN": W.T_UNKNOWN_TOKEN,
    "FLAG_ACK_REQUESTED": W.FLAG_ACK_REQUESTED,
    "FLAG_REBIND": W.FLAG_REBIND,
    "HEARTBEAT_SIZE": W.HEARTBEAT_SIZE_bytes,
    "ROOM_DIGEST_SIZE": W.ROOM_DIGEST_SIZE_bytes,
    "HEARTBEAT_ACK_SIZE": W.HEARTBEAT_ACK_SIZE_bytes,
    "TOKEN_SIZE": W.TOKEN_SIZE_bytes,
    "TOKEN_INDEX_SIZE": W.TOKEN_INDEX_SIZE_bytes,
    "TOKEN_SECRET_SIZE": W.TOKEN_SECRET_SIZE_bytes,
    "ROOM_ID_SIZE": W.ROOM_ID_SIZE_bytes,
    "ROOM_TAG_SIZE": W.ROOM_TAG_SIZE_bytes,
    "PUBLIC_KEY_SIZE": W.PUBLIC_KEY_SIZE_bytes,
    "BUF_SIZE": C.DATAGRAM_BUFFER_bytes,
    "BATCH_SIZE": C.BATCH_SIZE,
    "T_RELAY": W.T_RELAY,
    "T_RELAYED": W.T_RELAYED,
    "T_RELAY_REFUSED": W.T_RELAY_REFUSED,
    "RELAY_OVERHEAD": W.RELAY_OVERHEAD_bytes,
    "FAMILY_RELAY": W.FAMILY_RELAY,
    "MAX_DATAGRAM": W.MAX_DATAGRAM_bytes,
}


def _cython():
    from gochat.bootnode import _fastpath  # make test builds it; a missing build must fail loudly

    return _fastpath


MODULES = {"cython": _cython, "pure": lambda: _purepath}


@pytest.fixture(params=sorted(MODULES))
def module(request):
    return MODULES[request.param]()


# --- the references agree with each other ------------------------------------------------


def test_message_types_are_the_constants():
    types = {name[2:]: value for name, value in vars(W).items() if name.startswith("T_")}
    assert {m.name: int(m) for m in MsgType} == types


def test_header_and_token_sizes_add_up():
    assert W.HEARTBEAT_SIZE_bytes == W.HEADER_SIZE_bytes + W.TOKEN_SIZE_bytes
    assert W.TOKEN_SIZE_bytes == W.TOKEN_INDEX_SIZE_bytes + W.TOKEN_SECRET_SIZE_bytes
    assert control.header(MsgType.HEARTBEAT, W.FLAG_ACK_REQUESTED) == bytes(
        [W.MAGIC, W.VERSION, W.T_HEARTBEAT, W.FLAG_ACK_REQUESTED]
    )
    assert len(control.header(MsgType.REGISTER)) == W.HEADER_SIZE_bytes


def test_codec_struct_sizes_follow_the_constants():
    assert control._REGISTER_HEAD.size == (
        W.COOKIE_SIZE_bytes + W.REQUEST_ID_SIZE_bytes + W.ROOM_ID_SIZE_bytes + W.PUBLIC_KEY_SIZE_bytes
    )
    assert (
        W.HEADER_SIZE_bytes + W.COOKIE_SIZE_bytes + W.REQUEST_ID_SIZE_bytes + W.ROOM_ID_SIZE_bytes
    ) == control.REGISTER_CARD_OFFSET
    # header, request id, token, room tag, heartbeat interval (4), peer timeout (4)
    assert control._REGISTERED_HEAD.size == (
        W.HEADER_SIZE_bytes + W.REQUEST_ID_SIZE_bytes + W.TOKEN_SIZE_bytes + W.ROOM_TAG_SIZE_bytes + 4 + 4
    )
    for t in control.TOKEN_TYPES:
        if t is MsgType.HEARTBEAT_ACK:
            ack = control.TokenMessage(t, bytes(W.TOKEN_SIZE_bytes), digest=bytes(W.ROOM_DIGEST_SIZE_bytes))
            assert len(control.encode(ack)) == W.HEARTBEAT_ACK_SIZE_bytes == 24
        else:
            assert len(control.encode(control.TokenMessage(t, bytes(W.TOKEN_SIZE_bytes)))) == W.HEARTBEAT_SIZE_bytes
    rebind = control.TokenMessage(
        MsgType.HEARTBEAT, bytes(W.TOKEN_SIZE_bytes), W.FLAG_REBIND, bytes(W.CHALLENGE_SIZE_bytes)
    )
    assert len(control.encode(rebind)) == W.REBIND_HEARTBEAT_SIZE_bytes == 28
    challenge = control.RebindChallenge(CookieJar(b"k" * 32).challenge(bytes(12), ("127.0.0.1", 1), 0.0))
    assert len(control.encode(challenge)) == W.REBIND_CHALLENGE_SIZE_bytes == W.HEARTBEAT_SIZE_bytes
    assert len(CookieJar(b"k" * 32).make(("127.0.0.1", 1), 0.0)) == W.COOKIE_SIZE_bytes
    assert C.DATAGRAM_BUFFER_bytes > W.MAX_DATAGRAM_bytes
    assert W.RELAY_OVERHEAD_bytes == W.HEADER_SIZE_bytes + W.TOKEN_SIZE_bytes + W.RELAY_ID_SIZE_bytes == 24
    assert W.RELAYED_OVERHEAD_bytes == W.RELAY_OVERHEAD_bytes - W.TOKEN_SIZE_bytes
    assert W.RELAY_ID_SIZE_bytes == W.TOKEN_INDEX_SIZE_bytes + W.RELAY_NONCE_SIZE_bytes
    refused = control.RelayRefused(control.RelayRefuseReason.BUSY, 5, bytes(W.RELAY_ID_SIZE_bytes))
    assert len(control.encode(refused)) == W.RELAY_REFUSED_SIZE_bytes == 17 < W.RELAY_OVERHEAD_bytes + 1


def test_wheel_tick_is_a_power_of_two():
    assert C.WHEEL_TICK_ms & (C.WHEEL_TICK_ms - 1) == 0


# --- both implementations run with the reference values ----------------------------------


def test_implementation_constants_equal_the_references(module):
    got = module.CONSTANTS
    assert {k: got[k] for k in REFERENCE} == REFERENCE
    assert 1 << got["TICK_SHIFT"] == C.WHEEL_TICK_ms
    assert got["TICK_SPACE_MASK"] == 0xFFFFFFFF >> got["TICK_SHIFT"]  # tick numbers wrap with the ms clock


def test_compiled_layout():
    """The memory per peer that docs/bootnode-design.md and the README state."""
    got = _cython().CONSTANTS
    assert got["CARD_CELL"] == C.INLINE_CARD_bytes
    # secret, address (16), port (2), card length, expiring flag, last heartbeat (4),
    # wheel links, room index and room links (5 x 4): 52 bytes; the relay binding's
    # nonce (4), bucket refill time (4), bucket (8) and last refusal (4): 72, aligned to 8
    assert got["SLOT_SIZE"] == 72
    # room id, room tag, head (4), count (4), membership digest (8)
    assert got["ROOM_SIZE"] == W.ROOM_ID_SIZE_bytes + W.ROOM_TAG_SIZE_bytes + 4 + 4 + W.ROOM_DIGEST_SIZE_bytes == 40


# --- and frame what the reference codec frames ---------------------------------------------


def card(n: int, long: bool = False) -> bytes:
    name = ("n" * 31 + str(n))[-W.MAX_NAME_bytes :] if long else f"p{n}"
    local = [(f"127.0.{n}.{k + 1}", 4545 + k) for k in range(W.MAX_LOCAL_ENDPOINTS if long else 1)]
    return control.encode_card(n.to_bytes(W.PUBLIC_KEY_SIZE_bytes, "big"), name, local)


def test_token_layout(module):
    table = module.RegistrationTable(10, 15.0, 0.0)
    slots = [
        table.add(ROOM, TAG, bytes([n + 1]) * W.TOKEN_SECRET_SIZE_bytes, card(n), ("127.0.0.1", n + 1), 0.0)
        for n in range(3)
    ]
    for n, slot in enumerate(slots):
        token = table.token(slot)
        assert len(token) == W.TOKEN_SIZE_bytes
        assert token[: W.TOKEN_INDEX_SIZE_bytes] == slot.to_bytes(W.TOKEN_INDEX_SIZE_bytes, "big")
        assert token[W.TOKEN_INDEX_SIZE_bytes :] == bytes([n + 1]) * W.TOKEN_SECRET_SIZE_bytes


@pytest.mark.parametrize("addr", [("127.0.0.9", 40000), ("::1", 1234), ("::ffff:127.0.0.3", 7)])
@pytest.mark.parametrize("long", [False, True], ids=["inline", "spilled"])
def test_table_entries_equal_the_reference(module, addr, long):
    assert (len(card(5, long)) > C.INLINE_CARD_bytes) == long
    table = module.RegistrationTable(10, 15.0, 0.0)
    slot = table.add(ROOM, TAG, b"s" * W.TOKEN_SECRET_SIZE_bytes, card(5, long), addr, 0.0)
    assert table.entry(slot) == control.entry_from_card(card(5, long), addr)
    assert table.wire_endpoint(slot) == control.encode_endpoint(addr)
    assert table.card(slot) == card(5, long)
    assert table.find_in_room(ROOM, card(5, long)[: W.PUBLIC_KEY_SIZE_bytes]) == slot
    moved = ("127.0.0.2", 5)  # a proved rebinding changes the endpoint the entry announces
    assert table.touch(table.token(slot), moved, 1.0) == 2
    assert table.entry(slot) == control.entry_from_card(card(5, long), addr)
    table.set_endpoint(slot, moved)
    assert table.entry(slot) == control.entry_from_card(card(5, long), moved)


def test_reference_heartbeats_are_answered_in_the_reference_format(module):
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        server.bind(("127.0.0.1", 0))
        server.setblocking(False)
        client.bind(("127.0.0.1", 0))
        client.settimeout(2.0)
        table = module.RegistrationTable(10, 15.0, 0.0)
        slot = table.add(ROOM, TAG, b"k" * W.TOKEN_SECRET_SIZE_bytes, card(1), client.getsockname(), 0.0)
        token = table.token(slot)
        unknown = (slot + 1).to_bytes(W.TOKEN_INDEX_SIZE_bytes, "big") + b"z" * W.TOKEN_SECRET_SIZE_bytes
        sent = [
            control.TokenMessage(MsgType.HEARTBEAT, token),
            control.TokenMessage(MsgType.HEARTBEAT, token, W.FLAG_ACK_REQUESTED),
            control.TokenMessage(MsgType.HEARTBEAT, unknown, W.FLAG_ACK_REQUESTED),
        ]
        fast = module.FastPath(server, table)
        for msg in sent:
            data = control.encode(msg)
            assert len(data) == W.HEARTBEAT_SIZE_bytes
            client.sendto(data, server.getsockname())
        others: list = []
        deadline = time.monotonic() + 2.0
        while fast.counters["received"] < len(sent) and time.monotonic() < deadline:
            others += fast.process_batch(10.0)
        assert others == []  # all three were framed as heartbeats, none passed to Python
        assert fast.counters["heartbeats"] == 2
        replies = []
        for _ in range(2):
            data = client.recv(4096)
            replies.append(control.decode(data))
            size = W.HEARTBEAT_ACK_SIZE_bytes if replies[-1].type is MsgType.HEARTBEAT_ACK else W.HEARTBEAT_SIZE_bytes
            assert len(data) == size
        digest = table.room_digest(ROOM)
        assert digest == card(0)[: W.ROOM_DIGEST_SIZE_bytes]  # the one member's key, its first 8 bytes
        assert sorted(replies, key=lambda m: m.type) == [
            control.TokenMessage(MsgType.HEARTBEAT_ACK, token, digest=digest),
            control.TokenMessage(MsgType.UNKNOWN_TOKEN, unknown),
        ]
        assert table.expire(24.999) == [] and table.expire(25.0) == [slot]  # the heartbeat at 10 s counted
    finally:
        server.close()
        client.close()
