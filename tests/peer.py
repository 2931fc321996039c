"""A minimal synchronous bootnode client for tests (the real client is gochat's own)."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable

from gochat.client.room import room_id_for
from gochat.crypto.noise import dh, generate_private_key, public_key
from gochat.wire import control as wire
from gochat.wire.control import MsgType

room_id = room_id_for  # the client's own derivation


class SimPeer:
    """``key`` is the public key registered; it is ``private``'s unless given (a peer that
    claims a key it does not hold, whose proofs cannot check)."""

    def __init__(
        self, bootnode, room="lobby", name="alice", key=None, local_endpoints=(), bind="127.0.0.1", private=None
    ):
        self.bootnode = bootnode
        self.room_id = room_id(room) if isinstance(room, str) else room
        self.name = name
        self.private = private or generate_private_key()
        self.key = key or public_key(self.private)
        self.bootnode_key: bytes | None = None
        self.local_endpoints = tuple(local_endpoints)
        family = socket.AF_INET6 if ":" in bind else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind((bind, 0))
        self.token: bytes | None = None
        self.registered: wire.Registered | None = None
        self.inbox: list = []
        self.request_id = int.from_bytes(os.urandom(4), "big")

    def close(self):
        self.sock.close()

    @property
    def address(self):
        return self.sock.getsockname()[:2]

    def send(self, data: bytes):
        self.sock.sendto(data, self.bootnode)

    def recv(self, timeout: float = 3.0):
        """Next decoded message from the bootnode, or None after ``timeout``."""
        if self.inbox:
            return self.inbox.pop(0)
        self.sock.settimeout(timeout)
        try:
            data, _addr = self.sock.recvfrom(4096)
        except TimeoutError:
            return None
        return wire.decode(data)

    def wait_for(self, pred: Callable, timeout: float = 5.0, keep_others=True):
        """First message matching ``pred`` within ``timeout``; others stay queued."""
        deadline = time.monotonic() + timeout
        skipped = []
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{self.name}: no matching message within {timeout}s; saw {skipped}")
                msg = self.recv(left) if not self.inbox else self.inbox.pop(0)
                if msg is None:
                    continue
                if pred(msg):
                    return msg
                skipped.append(msg)
        finally:
            if keep_others:
                self.inbox = skipped + self.inbox

    def register_message(self, cookie: bytes = bytes(16)) -> wire.Register:
        return wire.Register(cookie, self.request_id, self.room_id, self.key, self.name, self.local_endpoints)

    def signed_register(self, cookie: bytes) -> bytes:
        """A REGISTER with its proof, under the bootnode key its COOKIE gave."""
        assert self.bootnode_key is not None, "no COOKIE seen yet"
        proof_key = wire.register_proof_key(dh(self.private, self.bootnode_key))
        return wire.encode_signed_register(self.register_message(cookie), proof_key)

    def register(self, timeout: float = 5.0):
        """Cookie round trip then register; returns Registered or Refused."""
        self.send(wire.encode(self.register_message()))
        cookie = self.wait_for(lambda m: isinstance(m, wire.Cookie), timeout, keep_others=False)
        self.bootnode_key = cookie.bootnode_key
        self.send(self.signed_register(cookie.cookie))
        reply = self.wait_for(lambda m: isinstance(m, (wire.Registered, wire.Refused)), timeout)
        if isinstance(reply, wire.Registered):
            self.registered = reply
            self.token = reply.token
        return reply

    def peer_list(self, timeout: float = 5.0) -> list:
        """All entries of the PEER_LIST parts sent after registering."""
        first = self.wait_for(lambda m: isinstance(m, wire.PeerList), timeout)
        parts = {first.part: first}
        while len(parts) < first.parts:
            m = self.wait_for(lambda m: isinstance(m, wire.PeerList), timeout)
            parts[m.part] = m
        return [p for k in sorted(parts) for p in parts[k].peers]

    def heartbeat(self, ack: bool = False):
        flags = wire.FLAG_ACK_REQUESTED if ack else 0
        self.send(wire.encode(wire.TokenMessage(MsgType.HEARTBEAT, self.token, flags)))

    def disconnect(self):
        self.send(wire.encode(wire.TokenMessage(MsgType.DISCONNECT, self.token)))
