"""STUN Binding (RFC 8489) on the bootnode's own port: the answers, exactly (no state).

A STUN message starts with two zero bits and carries the magic cookie 0x2112A442 at
offset 4; gochat's own datagrams start with 0x47 (bits 01), so one port serves both.
A client (ours, or any STUN client) learns its server-reflexive address from the
XOR-MAPPED-ADDRESS of the Binding success response.

What is answered: a Binding request with the magic cookie whose attributes are well
formed. A request with a comprehension-required attribute this server does not know
gets error 420 with UNKNOWN-ATTRIBUTES. A request with FINGERPRINT gets one (and one
whose FINGERPRINT is wrong gets nothing). Everything else is dropped: RFC 3489 requests
(no cookie), indications, responses, malformed messages. Rate limits are the caller's.
"""

from __future__ import annotations

import binascii
import ipaddress
import struct

MAGIC_COOKIE = 0x2112A442
HEADER = struct.Struct("!HHI12s")  # type, length, magic cookie, transaction id
HEADER_SIZE_bytes = HEADER.size  # 20

BINDING_REQUEST = 0x0001
BINDING_SUCCESS = 0x0101
BINDING_ERROR = 0x0111

ATTR_XOR_MAPPED_ADDRESS = 0x0020
ATTR_ERROR_CODE = 0x0009
ATTR_UNKNOWN_ATTRIBUTES = 0x000A
ATTR_FINGERPRINT = 0x8028
ATTR_OTHER_ADDRESS = 0x802C  # RFC 5780: where the server answers too (here: its second port)
# gochat's own comprehension-optional attribute (empty): "name your second port". Only a
# request carrying it gets OTHER-ADDRESS, because a generic client that sees OTHER-ADDRESS
# takes the server for a full RFC 5780 one and goes on with CHANGE-REQUESTs it cannot serve.
ATTR_GOCHAT_OTHER_PORT = 0xC057
FINGERPRINT_XOR = 0x5354554E
# Comprehension-required attributes a Binding request may carry that we understand
# (none: we take no credentials); comprehension-optional ones (>= 0x8000) are ignored.
KNOWN_REQUIRED: frozenset[int] = frozenset()

UNKNOWN_ATTRIBUTE_REASON = b"Unknown Attribute"


def is_stun(data: bytes) -> bool:
    """A STUN message of RFC 5389/8489 (cookie present); RFC 3489 ones are not."""
    return len(data) >= HEADER_SIZE_bytes and data[0] & 0xC0 == 0 and data[4:8] == MAGIC_COOKIE.to_bytes(4, "big")


def _attribute(attr_type: int, value: bytes) -> bytes:
    return struct.pack("!HH", attr_type, len(value)) + value + bytes(-len(value) % 4)


def _fingerprint(message: bytes) -> int:
    return (binascii.crc32(message) ^ FINGERPRINT_XOR) & 0xFFFFFFFF


def _message(msg_type: int, txid: bytes, attributes: bytes, fingerprint: bool) -> bytes:
    length = len(attributes) + (8 if fingerprint else 0)
    out = HEADER.pack(msg_type, length, MAGIC_COOKIE, txid) + attributes
    if fingerprint:
        out += _attribute(ATTR_FINGERPRINT, struct.pack("!I", _fingerprint(out)))
    return out


def xor_mapped_address(host: str, port: int, txid: bytes) -> bytes:
    """The XOR-MAPPED-ADDRESS value of (host, port) (IPv4-mapped IPv6 shown as IPv4)."""
    ip = ipaddress.ip_address(host.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    x_port = port ^ (MAGIC_COOKIE >> 16)
    if isinstance(ip, ipaddress.IPv4Address):
        x_addr = int(ip) ^ MAGIC_COOKIE
        return struct.pack("!BBH", 0, 0x01, x_port) + x_addr.to_bytes(4, "big")
    mask = int.from_bytes(MAGIC_COOKIE.to_bytes(4, "big") + txid, "big")
    return struct.pack("!BBH", 0, 0x02, x_port) + (int(ip) ^ mask).to_bytes(16, "big")


def _plain_address(host: str, port: int) -> bytes:
    """An address attribute's value, not XORed (OTHER-ADDRESS)."""
    ip = ipaddress.ip_address(host.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    family = 0x01 if isinstance(ip, ipaddress.IPv4Address) else 0x02
    return struct.pack("!BBH", 0, family, port) + ip.packed


def binding_request(txid: bytes, ask_other_port: bool = False) -> bytes:
    """A Binding request: 20 bytes, or 24 asking for the second port."""
    body = _attribute(ATTR_GOCHAT_OTHER_PORT, b"") if ask_other_port else b""
    return HEADER.pack(BINDING_REQUEST, len(body), MAGIC_COOKIE, txid) + body


def parse_binding_success(data: bytes, txid: bytes) -> tuple[tuple[str, int], int | None] | None:
    """((mapped host, port), OTHER-ADDRESS port or None) of a Binding success response to
    our request ``txid``; None for anything else."""
    if not is_stun(data) or len(data) < HEADER_SIZE_bytes:
        return None
    msg_type, length, _, got = HEADER.unpack_from(data)
    if msg_type != BINDING_SUCCESS or got != txid or HEADER_SIZE_bytes + length != len(data):
        return None
    mapped: tuple[str, int] | None = None
    other: int | None = None
    pos = HEADER_SIZE_bytes
    while pos + 4 <= len(data):
        attr_type, attr_len = struct.unpack_from("!HH", data, pos)
        value = data[pos + 4 : pos + 4 + attr_len]
        if len(value) != attr_len:
            return None
        if attr_type == ATTR_XOR_MAPPED_ADDRESS and attr_len in (8, 20):
            (x_port,) = struct.unpack_from("!H", value, 2)
            mask = MAGIC_COOKIE.to_bytes(4, "big") + (txid if attr_len == 20 else b"")
            raw = bytes(a ^ b for a, b in zip(value[4:], mask, strict=True))
            mapped = (str(ipaddress.ip_address(raw)), x_port ^ (MAGIC_COOKIE >> 16))
        elif attr_type == ATTR_OTHER_ADDRESS and attr_len in (8, 20):
            (other,) = struct.unpack_from("!H", value, 2)
        pos += 4 + attr_len + (-attr_len % 4)
    return None if mapped is None else (mapped, other)


def answer_binding(data: bytes, source: tuple, other: tuple[str, int] | None = None) -> bytes | None:
    """The response to a Binding request from ``source`` (host, port, ...), or None when
    nothing is to be sent (not a request we answer, malformed, bad FINGERPRINT).
    ``other``: the server's second address, given as OTHER-ADDRESS (RFC 5780) to a request
    that asks for it (ATTR_GOCHAT_OTHER_PORT)."""
    if not is_stun(data):
        return None
    msg_type, length, _, txid = HEADER.unpack_from(data)
    if msg_type != BINDING_REQUEST or length % 4 or HEADER_SIZE_bytes + length != len(data):
        return None
    unknown: list[int] = []
    fingerprint = False
    wants_other = False
    pos = HEADER_SIZE_bytes
    while pos < len(data):
        if pos + 4 > len(data):
            return None
        attr_type, attr_len = struct.unpack_from("!HH", data, pos)
        end = pos + 4 + attr_len
        if end > len(data):
            return None
        if attr_type == ATTR_FINGERPRINT:
            if attr_len != 4 or end != len(data):  # FINGERPRINT comes last
                return None
            (crc,) = struct.unpack_from("!I", data, pos + 4)
            if crc != _fingerprint(data[:pos]):
                return None
            fingerprint = True
        elif attr_type == ATTR_GOCHAT_OTHER_PORT:
            wants_other = True
        elif attr_type < 0x8000 and attr_type not in KNOWN_REQUIRED and attr_type not in unknown:
            unknown.append(attr_type)
        pos = end + (-attr_len % 4)
    if unknown:
        error = struct.pack("!HBB", 0, 4, 20) + UNKNOWN_ATTRIBUTE_REASON  # 420
        listed = b"".join(struct.pack("!H", t) for t in unknown[:16])
        body = _attribute(ATTR_ERROR_CODE, error) + _attribute(ATTR_UNKNOWN_ATTRIBUTES, listed)
        return _message(BINDING_ERROR, txid, body, fingerprint)
    body = _attribute(ATTR_XOR_MAPPED_ADDRESS, xor_mapped_address(source[0], int(source[1]), txid))
    if other is not None and wants_other:
        body += _attribute(ATTR_OTHER_ADDRESS, _plain_address(*other))
    return _message(BINDING_SUCCESS, txid, body, fingerprint)
