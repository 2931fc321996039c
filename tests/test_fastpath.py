"""The registration table, timing wheel and batched socket layer, run against both the
Cython extension and its pure-Python twin, plus differential tests between them."""

from __future__ import annotations

import hashlib
import random
import socket
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gochat.wire import control as wire
from gochat.wire.control import MsgType
from gochat.wire.endpoints import endpoint_key

from .conftest import examples

ROOM_A = b"A" * 16
ROOM_B = b"B" * 16
TAG = b"T" * 8


def card(n: int, long: bool = False) -> bytes:
    name = ("x" * 30 + str(n))[-32:] if long else f"p{n}"
    locals_ = [(f"10.0.{n % 250}.{k}", 4545 + k) for k in range(4 if long else 1)]
    return wire.encode_card(n.to_bytes(32, "big"), name, locals_)


def add(table, n, room=ROOM_A, now=100.0, addr=None, long=False):
    return table.add(room, TAG, n.to_bytes(8, "big") or b"\1", card(n, long), addr or ("127.0.0.1", 10000 + n), now)


def test_add_lookup_token_and_fields(impl):
    t = impl.RegistrationTable(100, 15.0, 100.0)
    s = add(t, 7, addr=("2001:db8::7", 999))
    tok = t.token(s)
    assert len(tok) == 12 and tok[:4] == s.to_bytes(4, "big")  # shard 0, then the slot (24 bits)
    assert t.lookup(tok) == s
    assert t.lookup(tok[:4] + bytes(8)) == -1
    assert t.lookup(b"\xff\xff\xff\xff" + tok[4:]) == -1
    assert t.endpoint(s) == ("2001:db8::7", 999)
    assert t.card(s) == card(7)
    assert t.room_of(s) == ROOM_A and t.room_tag(ROOM_A) == TAG
    assert len(t) == 1 and t.room_count == 1


def test_long_cards_are_kept_whole(impl):
    t = impl.RegistrationTable(10, 15.0, 0.0)
    s = add(t, 3, long=True)
    assert len(card(3, long=True)) > 64
    assert t.card(s) == card(3, long=True)
    assert t.find_in_room(ROOM_A, (3).to_bytes(32, "big")) == s
    t.remove(s)
    s2 = add(t, 4)
    assert t.card(s2) == card(4)


def test_expiry_exactly_at_timeout_and_not_before(impl):
    t = impl.RegistrationTable(10, 15.0, 1000.0)
    s = add(t, 1, now=1000.0)
    assert t.expire(1014.999) == []
    assert t.expire(1015.0) == [s]
    assert t.lookup(t.token(s)) == -1  # expiring registrations no longer answer
    t.remove(s)
    assert len(t) == 0 and t.room_count == 0


def test_heartbeat_postpones_expiry(impl):
    t = impl.RegistrationTable(10, 15.0, 0.0)
    s = add(t, 1, now=0.0)
    for now in (5.0, 10.0, 20.0):
        assert t.touch(t.token(s), ("127.0.0.1", 10001), now) == 1
        assert t.expire(now) == []
    assert t.expire(34.999) == []
    assert t.expire(35.0) == [s]


def test_touch_from_another_source_refreshes_but_does_not_move(impl):
    t = impl.RegistrationTable(10, 15.0, 0.0)
    s = add(t, 1, now=0.0, addr=("127.0.0.1", 1))
    assert t.touch(t.token(s), ("127.0.0.1", 2), 10.0) == 2
    assert t.endpoint(s) == ("127.0.0.1", 1)  # a heartbeat's word moves nothing
    assert t.expire(24.999) == []  # but it refreshed the registration
    t.set_endpoint(s, ("127.0.0.1", 2))  # once the new address proved itself
    assert t.endpoint(s) == ("127.0.0.1", 2)
    assert t.touch(t.token(s), ("::ffff:127.0.0.1", 2), 11.0) == 1  # mapped form is the same endpoint
    assert t.touch(b"\x00" * 12, ("127.0.0.1", 2), 12.0) == 0
    with pytest.raises(KeyError):
        t.set_endpoint(7, ("127.0.0.1", 2))


def test_expiry_order_and_partial_ticks(impl):
    t = impl.RegistrationTable(1000, 15.0, 0.0)
    slots = [add(t, n, now=n * 0.05) for n in range(100)]  # deadlines 15.00 .. 19.95
    got = []
    now = 15.0
    while now < 20.5:
        got += t.expire(now)
        now += 0.033
    assert got == slots


def test_expire_after_a_long_pause_takes_everything_due(impl):
    t = impl.RegistrationTable(1000, 2.0, 0.0)
    slots = [add(t, n, now=float(n % 7)) for n in range(50)]
    assert sorted(t.expire(10_000.0)) == sorted(slots)


def test_remove_and_slot_reuse_gives_new_token(impl):
    t = impl.RegistrationTable(2, 15.0, 0.0)
    a = add(t, 1)
    old = t.token(a)
    t.remove(a)
    b = add(t, 2)
    assert b == a and t.lookup(old) == -1 and t.lookup(t.token(b)) == b


def test_table_full(impl):
    t = impl.RegistrationTable(2, 15.0, 0.0)
    add(t, 1), add(t, 2)
    with pytest.raises(impl.TableFull):
        add(t, 3)


def test_rooms_membership(impl):
    t = impl.RegistrationTable(100, 15.0, 0.0)
    a = [add(t, n, room=ROOM_A) for n in range(5)]
    b = [add(t, n + 10, room=ROOM_B) for n in range(3)]
    assert sorted(t.room_members(ROOM_A)) == a and sorted(t.room_members(ROOM_B)) == b
    assert t.room_size(ROOM_A) == 5 and t.room_count == 2
    for s in b:
        t.remove(s)
    assert t.room_count == 1 and t.room_tag(ROOM_B) is None and t.room_members(ROOM_B) == []
    assert t.find_in_room(ROOM_A, (3).to_bytes(32, "big")) == a[3]
    assert t.find_in_room(ROOM_B, (3).to_bytes(32, "big")) == -1


def addr16(host: str) -> bytes:
    return endpoint_key((host, 1))[0]


def test_count_source_counts_a_rooms_members_from_one_address(impl):
    t = impl.RegistrationTable(100, 15.0, 0.0)
    same = [add(t, n, addr=("203.0.113.5", 1000 + n)) for n in range(3)]  # three ports, one address
    add(t, 10, addr=("203.0.113.6", 1000))
    add(t, 11, room=ROOM_B, addr=("203.0.113.5", 2000))
    add(t, 12, addr=("2001:db8::5", 1000), long=True)
    assert t.count_source(ROOM_A, addr16("203.0.113.5")) == 3
    assert t.count_source(ROOM_A, addr16("::ffff:203.0.113.5")) == 3  # the mapped form is the same address
    assert t.count_source(ROOM_B, addr16("203.0.113.5")) == 1
    assert t.count_source(ROOM_A, addr16("2001:db8::5")) == 1
    assert t.count_source(ROOM_A, addr16("198.51.100.1")) == 0
    assert t.count_source(b"Z" * 16, addr16("203.0.113.5")) == 0 and t.count_source(ROOM_A, b"short") == 0
    t.remove(same[0])
    assert t.count_source(ROOM_A, addr16("203.0.113.5")) == 2


def test_many_rooms_grow_and_shrink(impl):
    t = impl.RegistrationTable(5000, 15.0, 0.0)
    rooms = [n.to_bytes(16, "big") for n in range(1500)]
    slots = {r: t.add(r, TAG, b"s" * 8, card(i), ("127.0.0.1", 1), 0.0) for i, r in enumerate(rooms)}
    rnd = random.Random(1)
    doomed = rnd.sample(rooms, 900)
    for r in doomed:
        t.remove(slots[r])
    alive = set(rooms) - set(doomed)
    assert t.room_count == len(alive)
    for r in rooms:
        assert t.room_size(r) == (1 if r in alive else 0)
        assert (t.room_members(r) == [slots[r]]) == (r in alive)


# --- differential: the same random history gives the same observations --------------------

ops = st.lists(
    st.tuples(
        st.sampled_from(["add", "remove", "touch", "move", "expire", "badtouch"]), st.integers(0, 40), st.floats(0, 3)
    ),
    max_size=120,
)


@given(ops)
@settings(max_examples=examples(150), deadline=None)
def test_differential_random_histories(both_impls, history):
    cy, py = both_impls
    tables = [cy.RegistrationTable(30, 5.0, 0.0), py.RegistrationTable(30, 5.0, 0.0)]
    now = 0.0
    live: list = []
    for op, n, dt in history:
        now += dt
        results = []
        for t in tables:
            if op == "add":
                try:
                    results.append(
                        t.add(
                            bytes([n % 3]) * 16, TAG, bytes([n + 1]) * 8, card(n), (f"127.0.0.{n % 4}", 1000 + n), now
                        )
                    )
                except (cy.TableFull, py.TableFull):
                    results.append("full")
            elif op == "remove" and live:
                s = live[n % len(live)]
                t.remove(s)
                results.append(s)
            elif op == "touch" and live:
                s = live[n % len(live)]
                results.append(t.touch(t.token(s), (f"127.0.0.{n % 4}", 2000 + n % 2), now))
            elif op == "move" and live:
                s = live[n % len(live)]
                t.set_endpoint(s, (f"127.0.0.{n % 4}", 2000 + n % 2))
                results.append(s)
            elif op == "badtouch":
                results.append(t.touch(bytes([0, 0, 0, n]) + bytes(8), ("127.0.0.1", 1), now))
            elif op == "expire":
                got = t.expire(now)
                for s in got:
                    t.remove(s)
                results.append(got)
            else:
                results.append(None)
        assert results[0] == results[1], (op, results)
        r = results[0]
        if op == "add" and r != "full":
            live.append(r)
        elif op == "remove" and live:
            live.remove(r)
        elif op == "expire":
            live = [s for s in live if s not in r]
        for s in live:
            assert tables[0].token(s) == tables[1].token(s)
            assert tables[0].endpoint(s) == tables[1].endpoint(s)
        assert len(tables[0]) == len(tables[1])
        assert tables[0].room_count == tables[1].room_count
        for room in range(3):
            rid = bytes([room]) * 16
            assert tables[0].room_members(rid) == tables[1].room_members(rid)
            for host in range(4):
                key = addr16(f"127.0.0.{host}")
                assert tables[0].count_source(rid, key) == tables[1].count_source(rid, key)


# --- the socket layer on real loopback sockets ---------------------------------------------


@pytest.fixture
def udp_pair():
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.setblocking(False)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind(("127.0.0.1", 0))
    client.settimeout(2.0)
    yield server, client
    server.close()
    client.close()


def drain(fp, now, expect_received, timeout=2.0):
    """Run process_batch until ``expect_received`` datagrams were taken (bounded)."""
    others = []
    deadline = time.monotonic() + timeout
    while fp.counters["received"] < expect_received and time.monotonic() < deadline:
        others += fp.process_batch(now)
    return others


def test_process_batch_heartbeats_replies_and_passthrough(impl, udp_pair):
    server, client = udp_pair
    t = impl.RegistrationTable(10, 15.0, 0.0)
    s = t.add(ROOM_A, TAG, b"k" * 8, card(1), client.getsockname(), 0.0)
    fp = impl.FastPath(server, t, 8)
    dest = server.getsockname()
    tok = t.token(s)
    client.sendto(wire.encode(wire.TokenMessage(MsgType.HEARTBEAT, tok)), dest)
    client.sendto(wire.encode(wire.TokenMessage(MsgType.HEARTBEAT, tok, wire.FLAG_ACK_REQUESTED)), dest)
    client.sendto(wire.encode(wire.TokenMessage(MsgType.HEARTBEAT, b"\0\0\0\5" + b"z" * 8)), dest)
    client.sendto(b"garbage", dest)
    others = drain(fp, 10.0, 4)
    c = fp.counters
    assert (c["heartbeats"], c["heartbeat_acks"], c["unknown_token"], c["passed_to_python"]) == (2, 1, 1, 1)
    assert others == [(b"garbage", client.getsockname())]
    replies = sorted(wire.decode(client.recvfrom(100)[0]).type for _ in range(2))
    assert replies == [MsgType.HEARTBEAT_ACK, MsgType.UNKNOWN_TOKEN]
    assert t.expire(24.999) == [] and t.expire(25.0) == [s]  # the heartbeat at t=10 counted


def test_process_batch_leaves_heartbeats_from_another_source_to_the_machine(impl, udp_pair):
    server, client = udp_pair
    t = impl.RegistrationTable(10, 15.0, 0.0)
    s = t.add(ROOM_A, TAG, b"k" * 8, card(1), ("127.0.0.1", 1), 0.0)
    fp = impl.FastPath(server, t, 8)
    hb = wire.encode(wire.TokenMessage(MsgType.HEARTBEAT, t.token(s), wire.FLAG_ACK_REQUESTED))
    cut_rebind = wire.header(MsgType.HEARTBEAT, wire.FLAG_REBIND) + t.token(s)  # 16 bytes, challenge missing
    client.sendto(hb, server.getsockname())
    client.sendto(cut_rebind, server.getsockname())
    others = drain(fp, 1.0, 2)
    assert others == [(hb, client.getsockname()), (cut_rebind, client.getsockname())]
    c = fp.counters
    assert (c["new_source"], c["heartbeats"], c["heartbeat_acks"], c["passed_to_python"]) == (1, 0, 0, 2)
    assert t.endpoint(s) == ("127.0.0.1", 1)  # nothing moved, nothing answered
    assert t.expire(15.0) == [s]  # nor refreshed: that is the machine's decision
    client.settimeout(0.2)
    with pytest.raises(socket.timeout):
        client.recvfrom(100)


def test_drained_after_a_short_batch(impl, udp_pair):
    server, client = udp_pair
    t = impl.RegistrationTable(10, 15.0, 0.0)
    fp = impl.FastPath(server, t, 4)
    for i in range(6):
        client.sendto(b"x%d" % i, server.getsockname())
    got = drain(fp, 0.0, 6)
    assert [d for d, _ in got] == [b"x%d" % i for i in range(6)]
    fp.process_batch(0.0)
    assert fp.drained


def test_send_and_send_to_room(impl, udp_pair):
    server, client = udp_pair
    receivers = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(5)]
    try:
        for r in receivers:
            r.bind(("127.0.0.1", 0))
            r.settimeout(2.0)
        t = impl.RegistrationTable(100, 15.0, 0.0)
        slots = [t.add(ROOM_A, TAG, bytes([i + 1]) * 8, card(i), r.getsockname(), 0.0) for i, r in enumerate(receivers)]
        fp = impl.FastPath(server, t, 2)  # batches smaller than the room
        assert fp.send_to_room(ROOM_A, b"hello room", exclude_slot=slots[0]) == 4
        assert fp.flush() == 2  # the first two went out when the queue (2) filled
        for r in receivers[1:]:
            assert r.recvfrom(100)[0] == b"hello room"
        receivers[0].settimeout(0.2)
        with pytest.raises(socket.timeout):
            receivers[0].recvfrom(100)
        assert (
            fp.send(
                [
                    (b"one", client.getsockname()),
                    (b"two", ("::ffff:" + client.getsockname()[0], client.getsockname()[1])),
                ]
            )
            == 2
        )
        fp.flush()
        assert client.recvfrom(100)[0] == b"one" and client.recvfrom(100)[0] == b"two"
        assert fp.send([(b"v6", ("::1", 5))]) == 0 and fp.counters["send_errors"] == 1  # not reachable from IPv4
    finally:
        for r in receivers:
            r.close()


def test_dual_stack_socket_serves_ipv4_and_ipv6(impl):
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this host")
    server = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    server.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    try:
        server.bind(("::", 0))
    except OSError as exc:
        server.close()
        pytest.skip(f"cannot bind [::]: {exc}")
    server.setblocking(False)
    port = server.getsockname()[1]
    c4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    c6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        c4.bind(("127.0.0.1", 0))
        c6.bind(("::1", 0))
        c4.settimeout(2)
        c6.settimeout(2)
        t = impl.RegistrationTable(10, 15.0, 0.0)
        s4 = t.add(ROOM_A, TAG, b"a" * 8, card(1), c4.getsockname(), 0.0)
        s6 = t.add(ROOM_A, TAG, b"b" * 8, card(2), c6.getsockname(), 0.0)
        fp = impl.FastPath(server, t, 8)
        c4.sendto(wire.encode(wire.TokenMessage(MsgType.HEARTBEAT, t.token(s4), 1)), ("127.0.0.1", port))
        c6.sendto(wire.encode(wire.TokenMessage(MsgType.HEARTBEAT, t.token(s6), 1)), ("::1", port))
        drain(fp, 1.0, 2)
        assert fp.counters["heartbeats"] == 2 and fp.counters["new_source"] == 0
        assert wire.decode(c4.recvfrom(100)[0]).type == MsgType.HEARTBEAT_ACK
        assert wire.decode(c6.recvfrom(100)[0]).type == MsgType.HEARTBEAT_ACK
        assert fp.send_to_room(ROOM_A, b"both") == 2 and fp.flush() == 2
        assert c4.recvfrom(100)[0] == b"both" and c6.recvfrom(100)[0] == b"both"
    finally:
        server.close()
        c4.close()
        c6.close()


def test_send_records_and_recv_batch(impl, udp_pair):
    server, client = udp_pair
    records = b"".join(bytes([i]) * 16 for i in range(10))
    assert impl.send_records(client, server.getsockname(), records, 16, 8, 5) == 5
    got = []
    deadline = time.monotonic() + 2
    while len(got) < 5 and time.monotonic() < deadline:
        got += impl.recv_batch(server, 64)
    assert [d[0] for d, _ in got] == [8, 9, 0, 1, 2]


@pytest.mark.parametrize("addr", [("203.0.113.7", 40000), ("2001:db8::9", 1234)])
@pytest.mark.parametrize("long", [False, True])
def test_entry_matches_the_reference_encoder(impl, addr, long):
    t = impl.RegistrationTable(10, 15.0, 0.0)
    s = add(t, 5, addr=addr, long=long)
    assert t.entry(s) == wire.entry_from_card(card(5, long), addr)


@pytest.mark.parametrize("addr", [("203.0.113.7", 40000), ("2001:db8::9", 1234), ("::ffff:10.1.2.3", 7)])
def test_wire_endpoint_matches_the_reference_encoder(impl, addr):
    t = impl.RegistrationTable(10, 15.0, 0.0)
    s = add(t, 5, addr=addr)
    assert t.wire_endpoint(s) == wire.encode_endpoint(addr)


def _xor8(cards) -> bytes:
    d = bytes(8)
    for c in cards:
        d = bytes(x ^ y for x, y in zip(d, c[:8], strict=True))
    return d


@settings(max_examples=examples(100), deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 40), st.booleans()), max_size=60))
def test_room_digest_is_the_xor_of_the_members_keys_in_both_tables(ops):
    """What HEARTBEAT_ACK carries: for every sequence of joins and leaves (long cards that
    spill out of the slot included), both tables agree with the XOR of the members' keys."""
    from .conftest import IMPLS

    tables = [IMPLS[name]().RegistrationTable(64, 15.0, 0.0) for name in ("cython", "pure")]
    members: dict[int, tuple[bytes, list[int]]] = {}  # key number -> (card, slot per table)
    for join, n, long in ops:
        if join and n not in members and len(members) < 60:
            key = hashlib.sha256(bytes([n])).digest()  # keys whose first 8 bytes differ
            c = key + card(n, long)[32:]
            slots = [t.add(ROOM_A, TAG, bytes([n + 1]) * 8, c, ("127.0.0.1", 1000 + n), 0.0) for t in tables]
            members[n] = (c, slots)
        elif not join and n in members:
            _, slots = members.pop(n)
            for t, slot in zip(tables, slots, strict=True):
                t.remove(slot)
        want = _xor8(c for c, _ in members.values())
        assert [t.room_digest(ROOM_A) for t in tables] == [want, want]
        assert (want != bytes(8)) == bool(members) or len(members) > 1
        assert [t.room_digest(ROOM_B) for t in tables] == [bytes(8), bytes(8)]


def test_a_shard_byte_leads_every_token_and_relay_id(impl):
    """With --workers, worker i's table writes i into the first byte of its tokens and
    relay ids (the kernel steers by it) and takes none of another worker's."""
    t = impl.RegistrationTable(10, 15.0, 0.0, shard=3)
    s = add(t, 1)
    t.bind_relay(s, b"\1\2\3\4", 0.0)
    tok = t.token(s)
    assert tok[0] == 3 and tok[1:4] == s.to_bytes(3, "big") and t.lookup(tok) == s
    assert t.relay_id(s)[:4] == tok[:4]
    assert t.lookup(bytes([0]) + tok[1:]) == -1 and t.lookup(bytes([4]) + tok[1:]) == -1
    other = add(t, 2)
    t.bind_relay(other, b"\5\6\7\x08", 0.0)
    foreign = bytes([2]) + t.relay_id(other)[1:]  # the same slot and nonce, another worker's
    assert t.relay(tok, foreign, t.endpoint(s), 100, 0.0)[0] == 2  # no_such_peer
    assert t.relay(tok, t.relay_id(other), t.endpoint(s), 100, 0.0)[0] == 0
    with pytest.raises(ValueError):
        impl.RegistrationTable(1 << 24, 15.0, 0.0)  # a slot index has 24 bits
    with pytest.raises(ValueError):
        impl.RegistrationTable(10, 15.0, 0.0, shard=256)
