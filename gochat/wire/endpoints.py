"""Endpoint <-> fixed 16-byte address key conversions shared by both fast paths.

The registration table stores every endpoint as 16 address bytes (IPv4 as IPv4-mapped IPv6)
plus a port, so one slot layout serves IPv4, IPv6 and dual-stack sockets.
"""

from __future__ import annotations

import socket

V4_MAPPED_PREFIX = b"\x00" * 10 + b"\xff\xff"


def endpoint_key(addr: tuple) -> tuple[bytes, int]:
    """(host, port[, flowinfo, scope]) -> (16-byte address, port)."""
    host = addr[0].split("%", 1)[0]
    try:
        return V4_MAPPED_PREFIX + socket.inet_pton(socket.AF_INET, host), int(addr[1])
    except OSError:
        return socket.inet_pton(socket.AF_INET6, host), int(addr[1])


def key_endpoint(addr16: bytes, port: int) -> tuple[str, int]:
    """Inverse of endpoint_key, with IPv4-mapped addresses shown as IPv4 text."""
    if addr16[:12] == V4_MAPPED_PREFIX:
        return socket.inet_ntop(socket.AF_INET, addr16[12:]), port
    return socket.inet_ntop(socket.AF_INET6, addr16), port


def canonical_endpoint(addr: tuple) -> tuple[str, int]:
    """(host, port) with IPv4-mapped IPv6 shown as IPv4, whatever the socket family."""
    return key_endpoint(*endpoint_key(addr))


def sockaddr_for(family: int, endpoint: tuple) -> tuple:
    """The address tuple a socket of ``family`` accepts for ``endpoint``."""
    addr16, port = endpoint_key(endpoint)
    if family == socket.AF_INET6:
        return socket.inet_ntop(socket.AF_INET6, addr16), port, 0, 0
    if addr16[:12] != V4_MAPPED_PREFIX:
        raise OSError(f"cannot reach IPv6 endpoint {endpoint[0]} from an IPv4 socket")
    return socket.inet_ntop(socket.AF_INET, addr16[12:]), port


# A peer reached through the bootnode's relay is addressed, inside a client, by this
# pseudo-endpoint: ("relay", the 64-bit relay id of its binding). No socket ever yields
# a host named "relay", so it cannot be confused with a real source address.
RELAY_HOST = "relay"
# A peer reached through our TURN allocation is addressed by ("turn/" + its address, port):
# what we send there leaves through the TURN server, what the server relays from that
# address arrives from there.
TURN_PREFIX = "turn/"


def relay_endpoint(relay_id: bytes) -> tuple[str, int]:
    return RELAY_HOST, int.from_bytes(relay_id, "big")


def turn_endpoint(addr: tuple) -> tuple[str, int]:
    return TURN_PREFIX + addr[0], int(addr[1])


def is_relay(addr: tuple) -> bool:
    """A relayed path, through the bootnode's relay or through TURN."""
    return bool(addr[0] == RELAY_HOST or addr[0].startswith(TURN_PREFIX))


def is_bootnode_relay(addr: tuple) -> bool:
    return bool(addr[0] == RELAY_HOST)


def is_turn(addr: tuple) -> bool:
    return bool(addr[0].startswith(TURN_PREFIX))


def turn_target(addr: tuple) -> tuple[str, int]:
    """The peer address a TURN pseudo-endpoint stands for."""
    return addr[0][len(TURN_PREFIX) :], int(addr[1])


def relay_id_of(addr: tuple) -> bytes:
    return int(addr[1]).to_bytes(8, "big")


def format_endpoint(addr: tuple) -> str:
    """HOST:PORT as people write it: [v6]:port for IPv6; "relay" for a relayed peer."""
    host, port = addr[0], addr[1]
    if host == RELAY_HOST:
        return "relay"
    if host.startswith(TURN_PREFIX):
        return "turn " + format_endpoint(turn_target(addr))
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
