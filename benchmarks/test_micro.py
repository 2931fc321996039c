"""pytest-benchmark micro-benchmarks of the per-packet work (make bench)."""

from __future__ import annotations

import os
import socket

import pytest

from gochat.bootnode.cookie import CookieJar
from gochat.bootnode.keys import BootnodeKey
from gochat.bootnode.rendezvous import Limits, Rendezvous
from gochat.crypto.noise import dh, generate_private_key, public_key
from gochat.wire import control as wire
from gochat.wire.control import MsgType

TAG = b"T" * 8
N_TABLE = 100_000


def card(i: int) -> bytes:
    return wire.encode_card(i.to_bytes(32, "big"), f"p{i}", [("10.0.0.1", 4545)])


def filled_table(impl, n=N_TABLE, now=0.0, timeout=15.0):
    t = impl.RegistrationTable(n + 2000, timeout, now)
    for i in range(n):
        t.add((i // 10).to_bytes(16, "big"), TAG, os.urandom(8), card(i), ("127.0.0.1", 20000 + i % 4), now)
    return t


@pytest.mark.benchmark(group="heartbeat batch (recvmmsg + C framing + touch)")
def test_process_batch_64_heartbeats(benchmark, impl):
    """One process_batch over 64 queued heartbeats from 4 sources: the hot path."""
    table = filled_table(impl, 10_000)
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.setblocking(False)
    clients = []
    for _ in range(4):
        c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        c.bind(("127.0.0.1", 0))
        clients.append(c)
    for i in range(10_000):  # registered from where their heartbeats come: the fast path's case
        table.set_endpoint(i, clients[i % 4].getsockname())
    records = [b"".join(wire.header(MsgType.HEARTBEAT) + table.token(i) for i in range(k, 10_000, 4)) for k in range(4)]
    fp = impl.FastPath(server, table, 64)
    pos = [0]
    clock = [1.0]

    def setup():
        for k, c in enumerate(clients):
            impl.send_records(c, server.getsockname(), records[k], 16, pos[0], 16)
        pos[0] += 16
        clock[0] += 0.001

    def run():
        fp.process_batch(clock[0])

    benchmark.extra_info.update(items=64, unit="heartbeat")
    benchmark.pedantic(run, setup=setup, rounds=3000)
    assert fp.counters["heartbeats"] >= 64 * 2900
    server.close()
    for c in clients:
        c.close()


@pytest.mark.benchmark(group="table touch (100k registrations)")
def test_touch(benchmark, impl):
    table = filled_table(impl)
    tokens = [table.token(i) for i in range(0, N_TABLE, 7)]
    addr = ("127.0.0.1", 20000)
    clock = [1.0]

    def run():
        clock[0] += 0.01
        now = clock[0]
        for tok in tokens:
            table.touch(tok, addr, now)

    benchmark.extra_info.update(items=len(tokens), unit="touch")
    benchmark.pedantic(run, rounds=20)


@pytest.mark.benchmark(group="expiry tick (100k registrations, 1% expiring)")
def test_expire_one_percent(benchmark, impl):
    """One wheel tick that finds 1,000 of 100,000 registrations due (removal not included)."""
    result = {}

    def setup():
        table = impl.RegistrationTable(N_TABLE + 10, 15.0, 0.0)
        for i in range(1000):  # 1%: silent since t=0
            table.add(b"x" * 16, TAG, os.urandom(8), card(i), ("127.0.0.1", 1), 0.0)
        for i in range(N_TABLE - 1000):  # the rest heard from at t=5
            table.add((i // 10).to_bytes(16, "big"), TAG, os.urandom(8), card(i), ("127.0.0.1", 2), 5.0)
        result["table"] = table
        return (table,), {}

    def run(table):
        result["expired"] = table.expire(15.0)

    benchmark.pedantic(run, setup=setup, rounds=5)
    assert len(result["expired"]) == 1000


@pytest.mark.benchmark(group="peer entry from the table")
def test_entry(benchmark, impl):
    table = filled_table(impl, 1000)

    def run():
        for i in range(1000):
            table.entry(i)

    benchmark.extra_info.update(items=1000, unit="entry")
    benchmark(run)


def signed_registers(n: int, cookie: bytes, bootnode: BootnodeKey) -> list[bytes]:
    """n REGISTERs of n distinct keys, with their proofs, in rooms of 10."""
    out = []
    for i in range(n):
        private = generate_private_key()
        msg = wire.Register(
            cookie, i, (i // 10).to_bytes(16, "big"), public_key(private), f"p{i}", (("10.0.0.1", 4545),)
        )
        out.append(wire.encode_signed_register(msg, wire.register_proof_key(dh(private, bootnode.public))))
    return out


@pytest.mark.benchmark(group="register proof checked by the bootnode (X25519 + HMAC)")
def test_register_proof(benchmark):
    bootnode = BootnodeKey.generate()
    heads = [wire.decode_register(d) for d in signed_registers(1000, bytes(16), bootnode)]

    def run():
        for head in heads:
            assert bootnode.check_proof(head)

    benchmark.extra_info.update(items=len(heads), unit="proof")
    benchmark.pedantic(run, rounds=10)


@pytest.mark.benchmark(group="register handled by the machine (room of 10)")
def test_register(benchmark, impl):
    n = 5000
    jar = CookieJar(b"k" * 32)
    bootnode = BootnodeKey.generate()
    addr = ("127.0.0.1", 20000)
    msgs = signed_registers(n, jar.make(addr, 1.0), bootnode)

    def setup():
        table = impl.RegistrationTable(n + 10, 15.0, 0.0)
        m = Rendezvous(
            table,
            heartbeat_interval_s=10,
            peer_timeout_s=15,
            limits=Limits(n + 10, 100, 1e9, 10**9),
            cookies=jar,
            key=bootnode,
        )
        return (m,), {}

    def run(m):
        for data in msgs:
            m.receive_datagram(data, addr, 1.0)
        assert m.stats["register.accepted"] == n

    benchmark.extra_info.update(items=n, unit="register")
    benchmark.pedantic(run, setup=setup, rounds=5)


@pytest.mark.benchmark(group="wire codec (pure Python reference)")
@pytest.mark.parametrize("what", ["decode_heartbeat", "encode_heartbeat", "decode_register", "decode_peer_list"])
def test_wire(benchmark, what):
    hb = wire.encode(wire.TokenMessage(MsgType.HEARTBEAT, bytes(12)))
    reg = wire.encode(wire.Register(bytes(16), 1, bytes(16), bytes(32), "alice", (("10.0.0.1", 4545),)))
    entries = [wire.entry_from_card(card(i), ("203.0.113.1", 1000 + i)) for i in range(20)]
    plist = wire.encode_peer_list(TAG, 0, 1, entries)
    fn = {
        "decode_heartbeat": lambda: wire.decode(hb),
        "encode_heartbeat": lambda: wire.encode(wire.TokenMessage(MsgType.HEARTBEAT, bytes(12))),
        "decode_register": lambda: wire.decode_register(reg),
        "decode_peer_list": lambda: wire.decode(plist),
    }[what]
    benchmark(fn)
