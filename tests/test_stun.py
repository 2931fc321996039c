"""STUN Binding (RFC 8489) on the bootnode's port: the codec against the RFC's rules, the
bootnode's rate limit and amplification, and a third-party client (coturn's
turnutils_stunclient) against a real bootnode."""

from __future__ import annotations

import binascii
import ipaddress
import re
import shutil
import struct
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gochat.bootnode import _purepath
from gochat.bootnode.keys import BootnodeKey
from gochat.bootnode.rendezvous import Limits, Rendezvous
from gochat.constants import STUN_BURST_PER_IP
from gochat.wire import stun

from .conftest import examples
from .procs import Bootnode

TXID = bytes(range(12))


def request(*attributes: bytes, cookie: int = stun.MAGIC_COOKIE, msg_type: int = stun.BINDING_REQUEST) -> bytes:
    body = b"".join(attributes)
    return struct.pack("!HHI12s", msg_type, len(body), cookie, TXID) + body


def attribute(attr_type: int, value: bytes) -> bytes:
    return struct.pack("!HH", attr_type, len(value)) + value + bytes(-len(value) % 4)


def with_fingerprint(message: bytes, good: bool = True) -> bytes:
    longer = message[:2] + struct.pack("!H", len(message) - 20 + 8) + message[4:]
    crc = (binascii.crc32(longer) ^ 0x5354554E) & 0xFFFFFFFF
    return longer + attribute(stun.ATTR_FINGERPRINT, struct.pack("!I", crc if good else crc ^ 1))


def parse(reply: bytes) -> tuple[int, dict[int, bytes]]:
    msg_type, length, cookie, txid = struct.unpack_from("!HHI12s", reply)
    assert cookie == stun.MAGIC_COOKIE and txid == TXID and length == len(reply) - 20 and length % 4 == 0
    attrs, pos = {}, 20
    while pos < len(reply):
        t, n = struct.unpack_from("!HH", reply, pos)
        attrs[t] = reply[pos + 4 : pos + 4 + n]
        pos += 4 + n + (-n % 4)
    return msg_type, attrs


def mapped(value: bytes) -> tuple[str, int]:
    family, x_port = value[1], struct.unpack_from("!H", value, 2)[0]
    mask = stun.MAGIC_COOKIE.to_bytes(4, "big") + (TXID if family == 2 else b"")
    raw = bytes(a ^ b for a, b in zip(value[4:], mask, strict=True))
    return str(ipaddress.ip_address(raw)), x_port ^ 0x2112


@pytest.mark.parametrize(
    "source",
    [("203.0.113.5", 4000), ("2001:db8::7", 65535), ("::ffff:198.51.100.2", 1)],
)
def test_a_binding_request_gets_the_reflexive_address(source):
    msg_type, attrs = parse(stun.answer_binding(request(), source))
    assert msg_type == stun.BINDING_SUCCESS and set(attrs) == {stun.ATTR_XOR_MAPPED_ADDRESS}
    ip = ipaddress.ip_address(source[0])
    host = str(getattr(ip, "ipv4_mapped", None) or ip)
    assert mapped(attrs[stun.ATTR_XOR_MAPPED_ADDRESS]) == (host, source[1])


def test_fingerprint_is_answered_with_one_and_a_wrong_one_gets_nothing():
    reply = stun.answer_binding(with_fingerprint(request()), ("203.0.113.5", 4000))
    msg_type, attrs = parse(reply)
    assert msg_type == stun.BINDING_SUCCESS and stun.ATTR_FINGERPRINT in attrs
    assert reply == with_fingerprint(reply[:-8].replace(reply[2:4], struct.pack("!H", len(reply) - 28), 1))
    assert stun.answer_binding(with_fingerprint(request(), good=False), ("203.0.113.5", 4000)) is None


def test_unknown_comprehension_required_attributes_get_420_and_optional_ones_are_ignored():
    change_request = attribute(0x0003, bytes(4))  # RFC 5780's CHANGE-REQUEST: not served here
    software = attribute(0x8022, b"some client")  # comprehension-optional
    msg_type, attrs = parse(stun.answer_binding(request(software, change_request), ("203.0.113.5", 1)))
    assert msg_type == stun.BINDING_ERROR
    assert attrs[stun.ATTR_ERROR_CODE][2:4] == bytes([4, 20]) and attrs[stun.ATTR_UNKNOWN_ATTRIBUTES] == b"\x00\x03"
    msg_type, _ = parse(stun.answer_binding(request(software), ("203.0.113.5", 1)))
    assert msg_type == stun.BINDING_SUCCESS


def test_what_is_not_a_binding_request_of_rfc_8489_gets_nothing():
    source = ("203.0.113.5", 4000)
    assert stun.answer_binding(request(cookie=0x01020304), source) is None  # RFC 3489: no magic cookie
    assert stun.answer_binding(request(msg_type=0x0011), source) is None  # an indication
    assert stun.answer_binding(request(msg_type=stun.BINDING_SUCCESS), source) is None  # a response
    bad_length = request(attribute(0x8022, b"x"))[:-1]
    assert stun.answer_binding(bad_length, source) is None
    overrun = request()[:2] + struct.pack("!H", 8) + request()[4:] + struct.pack("!HH", 0x8022, 40) + bytes(4)
    assert stun.answer_binding(overrun, source) is None


@settings(max_examples=examples(2000))
@given(st.binary(max_size=120), st.binary(min_size=0, max_size=60))
def test_random_input_never_raises(prefix, tail):
    for data in (prefix, request()[:4] + struct.pack("!I", stun.MAGIC_COOKIE) + TXID + tail):
        stun.answer_binding(data, ("203.0.113.5", 4000))


def _machine() -> Rendezvous:
    table = _purepath.RegistrationTable(100, 15.0, 0.0)
    limits = Limits(max_peers=100, max_peers_per_room=100, register_rate_per_ip=20.0, register_burst_per_ip=40)
    return Rendezvous(table, heartbeat_interval_s=10.0, peer_timeout_s=15.0, limits=limits, key=BootnodeKey(b"b" * 32))


def test_the_bootnode_answers_within_a_per_source_limit_and_says_how_much():
    machine = _machine()
    smallest = request()
    sizes = []
    for i in range(STUN_BURST_PER_IP + 10):
        sizes += [len(a.data) for a in machine.receive_datagram(smallest, ("203.0.113.5", 4000 + i), 1000.0)]
    assert len(sizes) == STUN_BURST_PER_IP and machine.stats["stun.rate_limited"] == 10
    assert max(sizes) / len(smallest) == 32 / 20  # IPv4: 1.6, the documented factor
    (reply,) = machine.receive_datagram(smallest, ("2001:db8::1", 1), 1000.0)
    assert len(reply.data) / len(smallest) == 44 / 20  # IPv6: 2.2
    assert machine.receive_datagram(request(cookie=0), ("198.51.100.1", 1), 1000.0) == []  # RFC 3489
    assert machine.receive_datagram(request(msg_type=0x0011), ("198.51.100.1", 1), 1000.0) == []  # indication
    assert machine.stats["stun.binding"] == STUN_BURST_PER_IP + 1 and machine.stats["stun.dropped"] == 1
    assert machine.stats["malformed.bad_magic"] == 1


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("turnutils_stunclient") is None, reason="needs coturn (make system-deps installs it)")
def test_coturns_stun_client_learns_its_reflexive_address_from_a_real_bootnode():
    node = Bootnode(listen="127.0.0.1:0")
    try:
        out = subprocess.run(
            ["turnutils_stunclient", "-p", str(node.port), "127.0.0.1"], capture_output=True, text=True, timeout=30
        )
        assert out.returncode == 0, out.stderr
        assert re.search(r"UDP reflexive addr: 127\.0\.0\.1:\d+", out.stdout), out.stdout
        assert node.proc.poll() is None  # and the bootnode serves on
    finally:
        assert node.stop() == 0


def test_other_address_only_for_those_who_ask_for_it():
    other = ("0.0.0.0", 9596)
    plain = stun.answer_binding(request(), ("203.0.113.5", 4000), other)
    assert stun.ATTR_OTHER_ADDRESS not in parse(plain)[1]  # a generic client would start RFC 5780 tests
    asked = stun.binding_request(TXID, ask_other_port=True)
    reply = stun.answer_binding(asked, ("203.0.113.5", 4000), other)
    assert stun.parse_binding_success(reply, TXID) == (("203.0.113.5", 4000), 9596)
    assert len(reply) / len(asked) == 44 / 24  # IPv4; IPv6: 68 / 24
    assert stun.parse_binding_success(reply, bytes(12)) is None  # not our transaction
