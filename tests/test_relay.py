"""The bootnode's relay: bindings and forwarding in both tables (differential), the
fast path on real sockets, the machine's limits, and peers that talk through it in the
simulated world (loss, duplication, reordering, a path that opens and closes, lying
members and spoofed sources)."""

from __future__ import annotations

import socket
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gochat import events as ev
from gochat.bootnode._purepath import (
    REFUSE_BUSY,
    REFUSE_NO_SUCH_PEER,
    REFUSE_NOT_BOUND,
    REFUSE_RATE_LIMITED,
    RELAY_FORWARD,
    RELAY_UNKNOWN_TOKEN,
    RELAY_WRONG_SOURCE,
)
from gochat.bootnode.cookie import CookieJar
from gochat.bootnode.keys import BootnodeKey
from gochat.bootnode.rendezvous import Limits, Rendezvous, Send
from gochat.crypto.noise import dh, generate_private_key, public_key
from gochat.wire import control as wire
from gochat.wire import data as pw
from gochat.wire.constants import RELAY_OVERHEAD_bytes, TOKEN_SIZE_bytes
from gochat.wire.control import MsgType, RelayRefuseReason

from .conftest import examples
from .simnet import PORT_RESTRICTED, SYMMETRIC, SimWorld

ROOM_A, ROOM_B, TAG = b"A" * 16, b"B" * 16, b"T" * 8
ADDR = {n: ("127.0.0.1", 20000 + n) for n in range(64)}


def card(n: int) -> bytes:
    return wire.encode_card(n.to_bytes(32, "big"), f"p{n}", [])


def member(t, n, room=ROOM_A, now=0.0, bind=True):
    s = t.add(room, TAG, (n + 1).to_bytes(8, "big"), card(n), ADDR[n], now)
    if bind:
        t.bind_relay(s, bytes([0, 0, 1, n + 1]), now)
    return s


def relay(t, src, dst_id, size=100, now=0.0, addr=None):
    return t.relay(t.token(src), dst_id, addr or t.endpoint(src), size, now)


# --- the tables: bindings and decisions (both implementations) --------------------------


def test_a_binding_is_named_in_the_members_entry(impl):
    t = impl.RegistrationTable(10, 15.0, 0.0)
    a, b = member(t, 1), member(t, 2, bind=False)
    assert t.relay_id(a) == a.to_bytes(4, "big") + bytes([0, 0, 1, 2]) and t.relay_id(b) == b""
    entry = wire.decode(wire.encode_peer_list(TAG, 0, 1, [t.entry(a), t.entry(b)]))
    assert isinstance(entry, wire.PeerList)
    assert entry.peers[0].relay == t.relay_id(a) and entry.peers[0].endpoints == (ADDR[1],)
    assert entry.peers[1].relay == b""
    assert t.entry(a) == wire.entry_from_card(card(1), ADDR[1], t.relay_id(a))
    with pytest.raises(ValueError):
        t.bind_relay(b, bytes(4), 0.0)  # a zero nonce would mean "unbound"


def test_forwarded_only_between_two_bindings_of_one_room(impl):
    t = impl.RegistrationTable(10, 15.0, 0.0)
    a, b, c = member(t, 1), member(t, 2), member(t, 3, room=ROOM_B)
    lonely = member(t, 4, bind=False)
    assert relay(t, a, t.relay_id(b)) == (RELAY_FORWARD, a, b, False)
    assert relay(t, b, t.relay_id(a)) == (RELAY_FORWARD, b, a, False)
    # a member of another room, a stale binding of a reused slot, ourselves: nobody
    assert relay(t, a, t.relay_id(c))[0] == REFUSE_NO_SUCH_PEER
    assert relay(t, a, t.relay_id(b)[:4] + b"\0\0\0\x09", now=1.0)[0] == REFUSE_NO_SUCH_PEER
    assert relay(t, a, t.relay_id(a), now=2.0)[0] == REFUSE_NO_SUCH_PEER
    assert relay(t, a, b"\0\0\1\0" + bytes(4), now=3.0)[0] == REFUSE_NO_SUCH_PEER  # beyond the table
    # a sender without a binding, a destination without one
    assert relay(t, lonely, t.relay_id(a))[0] == REFUSE_NOT_BOUND
    assert relay(t, a, lonely.to_bytes(4, "big") + bytes([0, 0, 1, 5]), now=4.0)[0] == REFUSE_NO_SUCH_PEER
    # the token's holder, from elsewhere; a token nobody holds
    assert relay(t, a, t.relay_id(b), addr=("127.0.0.1", 1))[0] == RELAY_WRONG_SOURCE
    assert t.relay(bytes(12), t.relay_id(b), ADDR[1], 100, 0.0)[0] == RELAY_UNKNOWN_TOKEN
    # a binding dies with its registration
    bid = t.relay_id(b)
    t.remove(b)
    assert relay(t, a, bid, now=5.0)[0] == REFUSE_NO_SUCH_PEER


def test_refusals_are_told_at_most_once_a_second(impl):
    t = impl.RegistrationTable(10, 15.0, 0.0)
    a = member(t, 1)
    gone = b"\0\0\0\7" + bytes([1, 2, 3, 4])
    told = [relay(t, a, gone, now=now)[3] for now in (10.0, 10.5, 10.999, 11.0, 11.2, 12.5)]
    assert told == [True, False, False, True, False, True]


def test_a_bindings_bytes_per_second_and_burst_exactly(impl):
    t = impl.RegistrationTable(10, 15.0, 0.0)
    t.set_relay_limits(1000, 2000, 0, 0)  # 1000 bytes/s, 2000 at once
    a, b = member(t, 1), member(t, 2)
    to = t.relay_id(b)
    assert [relay(t, a, to, 1000)[0] for _ in range(2)] == [RELAY_FORWARD, RELAY_FORWARD]
    assert relay(t, a, to, 1000) == (REFUSE_RATE_LIMITED, a, 1000, True)  # a second until 1000 bytes
    assert relay(t, a, to, 400, now=0.5)[0] == RELAY_FORWARD  # 500 came back
    assert relay(t, a, to, 200, now=0.5)[:3] == (REFUSE_RATE_LIMITED, a, 100)
    assert relay(t, b, t.relay_id(a), 2000, now=0.5)[0] == RELAY_FORWARD  # each binding its own
    assert relay(t, a, to, 2000, now=100.0)[0] == RELAY_FORWARD  # refilled up to the burst only
    assert relay(t, a, to, 1, now=100.0)[0] == REFUSE_RATE_LIMITED


def test_the_total_bandwidth_is_shared_and_a_refusal_spends_nothing(impl):
    t = impl.RegistrationTable(10, 15.0, 0.0)
    t.set_relay_limits(10_000, 10_000, 1000, 1500)  # generous per binding, 1000 bytes/s in all
    a, b, c = member(t, 1), member(t, 2), member(t, 3)
    assert relay(t, a, t.relay_id(b), 1000)[0] == RELAY_FORWARD
    assert relay(t, c, t.relay_id(b), 1000) == (REFUSE_BUSY, c, 500, True)
    assert relay(t, c, t.relay_id(b), 500)[0] == RELAY_FORWARD
    # c's own bucket was not charged for the refused 1000: its 10,000 remain, less 500
    t.set_relay_limits(10_000, 10_000, 0, 0)
    assert relay(t, c, t.relay_id(b), 9500, now=0.0)[0] == RELAY_FORWARD


def test_a_relayed_datagram_keeps_the_senders_registration_alive(impl):
    t = impl.RegistrationTable(10, 15.0, 0.0)
    a, b = member(t, 1), member(t, 2)
    assert relay(t, a, t.relay_id(b), now=10.0)[0] == RELAY_FORWARD
    assert t.expire(15.0) == [b]  # b sent nothing
    assert t.expire(24.999) == [] and t.expire(25.0) == [a]


relay_ops = st.lists(
    st.tuples(
        st.sampled_from(["add", "bind", "remove", "relay", "relay_bad", "limits", "expire"]),
        st.integers(0, 30),
        st.integers(1, 1200),
        st.floats(0, 2),
    ),
    max_size=150,
)


@given(relay_ops)
@settings(max_examples=examples(150), deadline=None)
def test_differential_relay_decisions(both_impls, history):
    """The compiled table and its twin decide every RELAY alike, buckets and all."""
    tables = [impl.RegistrationTable(16, 5.0, 0.0) for impl in both_impls]
    for t in tables:
        t.set_relay_limits(3000, 5000, 20_000, 30_000)
    now, live = 0.0, []
    for op, n, size, dt in history:
        now += dt
        results = []
        for t in tables:
            if op == "add":
                try:
                    results.append(
                        t.add(bytes([n % 2]) * 16, TAG, bytes([n + 1]) * 8, card(n), ("127.0.0.1", 3000 + n), now)
                    )
                except Exception as exc:  # TableFull of either twin
                    results.append(type(exc).__name__)
            elif op == "bind" and live:
                s = live[n % len(live)]
                t.bind_relay(s, bytes([1, 2, 3, n + 1]), now)
                results.append(t.relay_id(s))
            elif op == "remove" and live:
                s = live[n % len(live)]
                t.remove(s)
                results.append(s)
            elif op in ("relay", "relay_bad") and live:
                s, d = live[n % len(live)], live[(n * 7 + size) % len(live)]
                to = d.to_bytes(4, "big") + (
                    bytes([1, 2, 3, size % 31 + 1]) if op == "relay_bad" else t.relay_id(d)[4:]
                )
                results.append(t.relay(t.token(s), to.ljust(8, b"\0"), ("127.0.0.1", 3000 + n % 3), size, now))
            elif op == "limits":
                t.set_relay_limits(size * 3, size * 5, size * 10, size * 12)
                results.append(None)
            elif op == "expire":
                got = t.expire(now)
                for s in got:
                    t.remove(s)
                results.append(got)
            else:
                results.append(None)
        assert results[0] == results[1], (op, results)
        r = results[0]
        if op == "add" and isinstance(r, int):
            live.append(r)
        elif op == "remove" and live:
            live.remove(r)
        elif op == "expire":
            live = [s for s in live if s not in r]
        for s in live:
            assert tables[0].relay_id(s) == tables[1].relay_id(s)
            assert tables[0].entry(s) == tables[1].entry(s)


# --- the fast path on real sockets (both implementations) -------------------------------


@pytest.fixture
def sockets():
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.setblocking(False)
    peers = []
    for _ in range(3):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        s.settimeout(2.0)
        peers.append(s)
    yield server, peers
    for s in (server, *peers):
        s.close()


def drain(fp, now, expect_received, timeout=2.0):
    deadline = time.monotonic() + timeout
    while fp.counters["received"] < expect_received and time.monotonic() < deadline:
        fp.process_batch(now)


def test_the_fast_path_forwards_12_bytes_smaller_and_refuses_politely(impl, sockets):
    server, (alice, bob, stranger) = sockets
    t = impl.RegistrationTable(10, 15.0, 0.0)
    a = t.add(ROOM_A, TAG, b"a" * 8, card(1), alice.getsockname(), 0.0)
    b = t.add(ROOM_A, TAG, b"b" * 8, card(2), bob.getsockname(), 0.0)
    t.bind_relay(a, b"\1\2\3\4", 0.0)
    t.bind_relay(b, b"\5\6\7\x08", 0.0)
    fp = impl.FastPath(server, t, 8)
    dest = server.getsockname()
    payload = pw.encode_handshake_init(7, bytes(113))  # any opaque peer datagram
    alice.sendto(wire.encode_relay(t.token(a), t.relay_id(b), payload), dest)
    stranger.sendto(wire.encode_relay(t.token(a), t.relay_id(b), payload), dest)  # a stolen token: dropped
    alice.sendto(wire.encode_relay(t.token(a), b"\0\0\0\x09" + bytes(4), payload), dest)  # nobody
    alice.sendto(wire.encode_relay(t.token(a), b"\0\0\0\x09" + bytes(4), payload), dest)  # told once
    stranger.sendto(wire.encode_relay(b"\0\0\0\x01" + bytes(8), t.relay_id(b), payload), dest)  # no such token
    drain(fp, 1.0, 5)
    data, source = bob.recvfrom(2048)
    assert source == dest
    relayed = wire.decode(data)
    assert relayed == wire.Relayed(t.relay_id(a), payload)
    assert len(data) == len(payload) + RELAY_OVERHEAD_bytes - TOKEN_SIZE_bytes
    refused = wire.decode(alice.recvfrom(2048)[0])
    assert refused == wire.RelayRefused(RelayRefuseReason.NO_SUCH_PEER, 1000, b"\0\0\0\x09" + bytes(4))
    unknown = wire.decode(stranger.recvfrom(2048)[0])
    assert isinstance(unknown, wire.TokenMessage) and unknown.type is MsgType.UNKNOWN_TOKEN
    c = fp.counters
    assert (c["relayed"], c["relay_wrong_source"], c["relay_no_such_peer"], c["relay_refusals_sent"]) == (1, 1, 2, 1)
    assert (c["relay_unknown_token"], c["passed_to_python"]) == (1, 0)
    assert c["relayed_bytes"] == len(data)
    for s in (alice, bob, stranger):
        s.settimeout(0.2)
        with pytest.raises(socket.timeout):
            s.recvfrom(2048)  # nothing else was sent to anyone


def test_a_malformed_relay_goes_to_the_machine(impl, sockets):
    server, (alice, _bob, _stranger) = sockets
    t = impl.RegistrationTable(10, 15.0, 0.0)
    fp = impl.FastPath(server, t, 8)
    short = wire.header(MsgType.RELAY) + bytes(20)  # token and destination, no payload
    alice.sendto(short, server.getsockname())
    drain(fp, 0.0, 1)
    assert fp.counters["passed_to_python"] == 1 and fp.counters["relayed"] == 0


# --- the machine: bindings at registration, limits ---------------------------------------


class Client:
    """A registered member, its REGISTER built by hand (as an outside implementation would)."""

    def __init__(self, machine, n, addr, room=ROOM_A, relay=True, now=0.0):
        self.key = generate_private_key()
        self.addr = addr
        self.machine = machine
        register = wire.Register(bytes(16), n, room, public_key(self.key), f"m{n}", (), relay=relay)
        (cookie,) = machine.receive_datagram(wire.encode(register), addr, now)
        got = wire.decode(cookie.data)
        proof_key = wire.register_proof_key(dh(self.key, got.bootnode_key))
        signed = wire.Register(got.cookie, n, room, public_key(self.key), f"m{n}", (), relay=relay)
        self.replies = [
            wire.decode(a.data)
            for a in machine.receive_datagram(wire.encode_signed_register(signed, proof_key), addr, now)
        ]
        self.registered = self.replies[0]


def machine(**limits):
    return Rendezvous(
        __import__("gochat.bootnode._purepath", fromlist=["x"]).RegistrationTable(100, 15.0, 0.0),
        heartbeat_interval_s=10.0,
        peer_timeout_s=15.0,
        limits=Limits(1000, 100, 1000.0, 1000, **limits),
        cookies=CookieJar(b"k" * 32),
        key=BootnodeKey(b"b" * 32),
    )


def test_a_registration_that_asks_gets_a_binding_and_its_limits():
    m = machine(relay_rate=5000, relay_burst=7000)
    alice = Client(m, 1, ("198.51.100.1", 1000))
    r = alice.registered
    assert isinstance(r, wire.Registered) and len(r.relay_id) == 8
    assert (r.relay_rate, r.relay_burst, r.relay_refused) == (5000, 7000, None)
    bob = Client(m, 2, ("198.51.100.2", 1000), relay=False)
    assert bob.registered.relay_id == b"" and bob.registered.relay_refused is None
    (listed,) = [e for msg in bob.replies if isinstance(msg, wire.PeerList) for e in msg.peers]
    assert listed.relay == r.relay_id  # the room learns alice's binding with her entry


@pytest.mark.parametrize(
    "limits,expected",
    [
        ({"relay": False}, RelayRefuseReason.DISABLED),
        ({"relay_bindings_per_ip": 2}, RelayRefuseReason.SOURCE_FULL),
        ({"relay_max_bindings": 2}, RelayRefuseReason.FULL),
    ],
)
def test_bindings_are_limited_and_refused_with_a_reason(limits, expected):
    m = machine(**limits)
    got = [Client(m, n, ("198.51.100.1", 1000 + n)).registered for n in range(3)]
    assert all(isinstance(r, wire.Registered) for r in got)  # the registrations stand
    if expected is RelayRefuseReason.DISABLED:
        assert [r.relay_refused for r in got] == [expected] * 3
    else:
        assert [r.relay_refused for r in got] == [None, None, expected]
        assert m.stats[f"relay.bind_refused.{expected.name.lower()}"] == 1


def test_a_binding_freed_by_a_leave_serves_the_next():
    m = machine(relay_bindings_per_ip=1)
    first = Client(m, 1, ("198.51.100.1", 1000))
    assert Client(m, 2, ("198.51.100.1", 1001)).registered.relay_refused is RelayRefuseReason.SOURCE_FULL
    m.receive_datagram(wire.encode(wire.TokenMessage(MsgType.DISCONNECT, first.registered.token)), first.addr, 1.0)
    assert m.relay_bindings == 0
    assert Client(m, 3, ("198.51.100.1", 1002), now=1.0).registered.relay_refused is None


relay_inputs = st.lists(
    st.tuples(
        st.sampled_from(["alice", "bob", "carol", "unknown"]),  # whose token
        st.sampled_from(["bob", "alice", "carol", "nobody", "self"]),  # to whom
        st.sampled_from(["alice", "bob", "victim"]),  # from which address
        st.integers(1, 1176),  # payload size
        st.floats(0, 0.5),  # time since the previous one
    ),
    max_size=40,
)


@given(relay_inputs)
@settings(max_examples=examples(100), deadline=None)
def test_nothing_is_amplified_through_the_relay(inputs):
    """Whatever anyone sends to the relay, with any token, destination and source
    address: every datagram it causes is smaller than what came in, and goes either back
    to the source (only UNKNOWN_TOKEN or RELAY_REFUSED, and only to a member's own
    endpoint for the latter) or to a member's validated endpoint in the sender's room."""
    m = machine(relay_rate=20_000, relay_burst=30_000)
    alice, bob = Client(m, 1, ("198.51.100.1", 1000)), Client(m, 2, ("198.51.100.2", 1000))
    carol = Client(m, 3, ("198.51.100.3", 1000), room=ROOM_B)
    who = {"alice": alice, "bob": bob, "carol": carol}
    victim = ("192.0.2.99", 53)
    now = 1.0
    for token_of, to, source, size, dt in inputs:
        now += dt
        token = who[token_of].registered.token if token_of in who else b"\0\0\0\x09" + bytes(8)
        if to in who:
            dest = who[to].registered.relay_id
        elif to == "self" and token_of in who:
            dest = who[token_of].registered.relay_id
        else:
            dest = b"\0\0\0\x07" + bytes(4)
        addr = who[source].addr if source in who else victim
        data = wire.encode_relay(token, dest, b"x" * size)
        for action in m.receive_datagram(data, addr, now):
            assert isinstance(action, Send) and len(action.data) < len(data)
            reply = wire.decode(action.data)
            if isinstance(reply, wire.Relayed):
                sender, receiver = who[token_of], next(c for c in who.values() if c.registered.relay_id == dest)
                assert addr == sender.addr and action.addr == receiver.addr != addr
                assert receiver is not carol and sender is not carol  # within one room only
                assert reply == wire.Relayed(sender.registered.relay_id, b"x" * size)
            elif isinstance(reply, wire.RelayRefused):
                assert token_of in who and action.addr == addr == who[token_of].addr
            else:
                assert isinstance(reply, wire.TokenMessage) and reply.type is MsgType.UNKNOWN_TOKEN
                assert token_of == "unknown" and action.addr == addr


# --- peers through the relay (simulated world) ------------------------------------------


def relayed_pair(kind_a=SYMMETRIC, kind_b=SYMMETRIC, **world):
    w = SimWorld(**world)
    w.start_bootnode()
    na, nb = w.add_nat("203.0.113.1", kind_a), w.add_nat("203.0.113.2", kind_b)
    a = w.add_client("alice", "10.0.1.2", nat=na)
    b = w.add_client("bob", "10.0.2.2", nat=nb)
    return w, a, b


def connected(w, name):
    return bool(w.kinds(name, ev.PeerConnected))


def texts(w, name):
    return [e.text for e in w.kinds(name, ev.MessageReceived)]


@pytest.mark.parametrize("seed", range(3))
def test_relayed_chat_is_exactly_once_in_order_on_a_bad_network(seed):
    """20% loss, 10% duplicates and reordering jitter on every path, the relay's
    included: every message arrives once, in order, or is reported undelivered."""
    w, a, b = relayed_pair(seed=seed, loss=0.2, duplicate=0.1, jitter=0.05)
    w.run_until(lambda: connected(w, "alice") and connected(w, "bob"), limit=60)
    assert {e.path for n in ("alice", "bob") for e in w.kinds(n, ev.PeerConnected)} == {"relay"}
    for i in range(40):
        w.send(a, f"a{i}")
        w.send(b, f"b{i}")
        w.run_for(0.05)
    w.run_until(lambda: len(texts(w, "bob")) + len(w.kinds("alice", ev.Undelivered)) >= 40, limit=120)
    w.run_until(lambda: len(texts(w, "alice")) + len(w.kinds("bob", ev.Undelivered)) >= 40, limit=120)
    for receiver, sender in (("bob", "a"), ("alice", "b")):
        got = texts(w, receiver)
        assert len(got) == len(set(got))  # exactly once
        assert got == sorted(got, key=lambda s: int(s[1:]))  # in order
        assert all(t.startswith(sender) for t in got)
    assert len(texts(w, "bob")) >= 35 and len(texts(w, "alice")) >= 35


def test_a_relayed_pair_moves_to_a_direct_path_when_it_opens_and_back_when_it_fails():
    """Two full-cone peers whose direct path is blocked (a firewall between them) meet
    through the relay; when the block lifts they move to the direct path (the relay
    carries nothing more), and when it comes back they return to the relay, the chat
    going on throughout."""
    w = SimWorld()
    w.start_bootnode()
    a = w.add_client("alice", "198.51.100.10")
    b = w.add_client("bob", "198.51.100.20")
    blocked = {"on": True}

    def firewall(src, dst, data):
        ips = {src[0], dst[0]}
        return not (blocked["on"] and ips == {"198.51.100.10", "198.51.100.20"})

    w.filter = firewall
    w.run_until(lambda: connected(w, "alice") and connected(w, "bob"), limit=15)
    assert {e.path for n in ("alice", "bob") for e in w.kinds(n, ev.PeerConnected)} == {"relay"}
    w.send(a, "through the relay")
    w.run_until(lambda: texts(w, "bob") == ["through the relay"], limit=5)

    blocked["on"] = False
    w.run_until(
        lambda: (
            any(e.path == "direct" for e in w.kinds("alice", ev.PathChanged))
            and any(e.path == "direct" for e in w.kinds("bob", ev.PathChanged))
        ),
        limit=70,
    )
    forwarded = w.bootnode.stats["relay.forwarded"]
    w.send(a, "direct now")
    w.run_until(lambda: texts(w, "bob")[-1:] == ["direct now"], limit=5)
    assert w.bootnode.stats["relay.forwarded"] == forwarded  # the relay carried none of it
    assert [p.snapshot().path for p in a.peers.values()] == ["direct"]

    blocked["on"] = True
    w.send(b, "the direct path failed")
    w.run_until(lambda: "the direct path failed" in texts(w, "alice"), limit=60)
    for name in ("alice", "bob"):  # silent on the direct path: found again through the relay
        latest = [e for e in w.events[name] if isinstance(e, (ev.PeerConnected, ev.PathChanged))][-1]
        assert latest.path == "relay"
    assert not w.kinds("alice", ev.PeerLeft) and not w.kinds("bob", ev.Undelivered)


def test_a_symmetric_nat_goes_to_the_relay_early_and_its_peer_follows():
    """NAT discovery says alice's NAT maps per destination: her punch rounds include the
    relay from 1 s, and bob (port-restricted, who would wait 2 s) answers through it at
    once: connected in about a second, not after the punch deadline."""
    w, _a, _b = relayed_pair(SYMMETRIC, PORT_RESTRICTED)
    took = w.run_until(lambda: connected(w, "alice") and connected(w, "bob"), limit=10)
    assert [e.independent for e in w.kinds("alice", ev.NatMapping)] == [False]
    assert "relay" in w.kinds("alice", ev.NatMapping)[0].message
    assert took < 2.0


def test_without_bindings_the_pair_is_unreachable_and_says_why():
    w = SimWorld()
    w.start_bootnode(relay=False)
    na, nb = w.add_nat("203.0.113.1", SYMMETRIC), w.add_nat("203.0.113.2", SYMMETRIC)
    w.add_client("alice", "10.0.1.2", nat=na)
    w.add_client("bob", "10.0.2.2", nat=nb)
    w.run_until(lambda: w.kinds("alice", ev.PeerUnreachable), limit=12)
    assert "no relay binding" in w.kinds("alice", ev.PeerUnreachable)[0].message
    assert any("gives no relay binding (disabled)" in e.message for e in w.kinds("alice", ev.Notice))


def test_a_member_who_lies_or_spoofs_gets_nothing_through():
    """Mallory, a member of the room, forges a RELAYED from the bootnode's address
    naming alice's binding, replays bob's captured relayed packets to bob from the
    bootnode's address, and relays garbage to bob: bob's session with alice is
    untouched, nothing forged is shown, and the replays are dropped by the session."""
    w, a, b = relayed_pair()
    w.run_until(lambda: connected(w, "alice") and connected(w, "bob"), limit=10)
    w.send(a, "hello bob")
    w.run_until(lambda: texts(w, "bob") == ["hello bob"], limit=5)
    bob_public = next(dst for src, dst, d in w.sent if src == w.bootnode_addr and d[2] == MsgType.RELAYED)
    captured = [d for src, dst, d in w.sent if dst == bob_public and d[2] == MsgType.RELAYED]
    alice_id = wire.decode(captured[0]).sender
    for data in captured:  # replays, "from" the bootnode
        w.inject(w.bootnode_addr, bob_public, data)
    forged = wire.encode_relayed(alice_id, pw.encode_handshake_init(1, bytes(113)))
    w.inject(w.bootnode_addr, bob_public, forged)
    w.inject(w.bootnode_addr, bob_public, wire.encode_relayed(alice_id, b"\x47\x01\x23" + bytes(40)))
    w.run_for(2)
    assert texts(w, "bob") == ["hello bob"]
    peer = b.peers[a.public_key]
    assert peer.state.value == "connected" and peer.path_kind == "relay"
    assert b.counters["replayed"] + b.counters["stale"] >= 1
    w.send(a, "still here")
    w.run_until(lambda: texts(w, "bob")[-1:] == ["still here"], limit=5)
    assert not w.kinds("bob", ev.PathChanged)


def test_a_peer_that_re_registers_is_found_again_through_its_new_binding():
    """The relay refuses packets for a binding that is gone (bob restarted his link and
    got a new one): alice looks for bob again at once and finds the new binding."""
    w, a, b = relayed_pair()
    w.run_until(lambda: connected(w, "alice") and connected(w, "bob"), limit=10)
    old = b.link.relay_id
    b.link.resync(w.now)  # same card, same endpoint: a retry, the binding stays
    w.run_for(1)
    assert b.link.relay_id == old
    w.bootnode._remove(w.bootnode.table.lookup(b.link.token))  # the bootnode forgets bob
    w.run_until(lambda: b.link.relay_id not in (None, old), limit=30)
    w.send(a, "found you")
    w.run_until(lambda: "found you" in texts(w, "bob"), limit=30)
    assert a.counters["relay_refused_no_such_peer"] >= 1


def test_an_unreachable_peer_makes_the_room_ask_for_the_list_and_a_changed_card_is_tried_at_once():
    """What the digest cannot see (a member's new card: a binding, a TURN address, a new
    name) can be lost with its PEER_JOINED. A peer found unreachable makes the client ask
    for the member list again (at most every 10 s), and a card that changed is tried at
    once. Here the bootnode starts relaying after both registered without a binding: the
    lists they ask for when unreachable (a duplicate REGISTER, which makes the binding)
    bring each other's bindings, and they meet through the relay before their 4 s retry."""
    import dataclasses

    w = SimWorld()
    machine = w.start_bootnode(relay=False)
    na, nb = w.add_nat("203.0.113.1", SYMMETRIC), w.add_nat("203.0.113.2", PORT_RESTRICTED)
    a = w.add_client("alice", "10.0.1.2", nat=na)
    b = w.add_client("bob", "10.0.2.2", nat=nb)
    w.run_for(5)  # registered without bindings (the relay was off), punching in vain
    machine.limits = dataclasses.replace(machine.limits, relay=True)  # the operator turns the relay on
    w.run_until(lambda: w.kinds("alice", ev.PeerUnreachable) and w.kinds("bob", ev.PeerUnreachable), limit=12)
    t0 = w.now
    w.run_until(lambda: connected(w, "alice") and connected(w, "bob"), limit=30)
    assert a.counters["roster_resync_unreachable"] >= 1 and b.counters["roster_resync_unreachable"] >= 1
    assert {e.path for n in ("alice", "bob") for e in w.kinds(n, ev.PeerConnected)} == {"relay"}
    assert w.now - t0 < 2  # not the retry's 4 s: the changed card was tried at once


def test_an_unchanged_list_does_not_break_the_retry_backoff():
    w = SimWorld()
    w.start_bootnode(relay=False)
    na, nb = w.add_nat("203.0.113.1", SYMMETRIC), w.add_nat("203.0.113.2", PORT_RESTRICTED)
    a = w.add_client("alice", "10.0.1.2", nat=na)
    w.add_client("bob", "10.0.2.2", nat=nb)
    w.run_for(60)
    assert a.counters["roster_resync_unreachable"] >= 2  # asked again, at most every 10 s
    assert len(w.kinds("alice", ev.PeerUnreachable)) == 1  # told once, retried quietly
