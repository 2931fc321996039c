"""A network of bootnodes joined through NATS (--cluster): the machine's cluster logic
in simulated time, then real bootnodes, real nats-servers and real clients on loopback."""

from __future__ import annotations

import pytest

from gochat.bootnode import _purepath
from gochat.bootnode.cluster import NODES_SUBJECT, ClusterRooms, room_subject
from gochat.bootnode.cookie import CookieJar
from gochat.bootnode.keys import BootnodeKey
from gochat.bootnode.rendezvous import Limits, Rendezvous, Send, SendToRoom
from gochat.client.driver import bootnode_order
from gochat.crypto.noise import dh, generate_private_key, public_key
from gochat.wire import control as wire

from .natsd import NatsServer
from .natsd import missing as nats_missing
from .procs import Bootnode, Client

ROOM = b"R" * 16


class Node:
    """A bootnode machine with its cluster state; ``bus`` carries what it publishes."""

    def __init__(self, name: bytes) -> None:
        self.cluster = ClusterRooms(name.ljust(8, b"\0"), node_timeout_s=15.0)
        self.machine = Rendezvous(
            _purepath.RegistrationTable(100, 15.0, 0.0),
            heartbeat_interval_s=10.0,
            peer_timeout_s=15.0,
            limits=Limits(1000, 100, 1000.0, 1000),
            cookies=CookieJar(b"k" * 32),
            key=BootnodeKey(b"b" * 32),
            cluster=self.cluster,
        )
        self.sent: list = []  # what it sent its own members

    def register(self, n: int, addr, now=0.0):
        key = generate_private_key()
        reg = wire.Register(bytes(16), n, ROOM, public_key(key), f"m{n}", ())
        (cookie,) = self.machine.receive_datagram(wire.encode(reg), addr, now)
        got = wire.decode(cookie.data)
        proof = wire.register_proof_key(dh(key, got.bootnode_key))
        signed = wire.Register(got.cookie, n, ROOM, public_key(key), f"m{n}", ())
        actions = self.machine.receive_datagram(wire.encode_signed_register(signed, proof), addr, now)
        actions += self.machine.flush_announcements()
        self.sent += actions
        return public_key(key), [wire.decode(a.data) for a in actions if isinstance(a, Send)]


def carry(nodes, now=1.0):
    """Deliver every queued bus message to every other node (NATS fan-out), until quiet."""
    for _ in range(10):
        queued = [(n, subject, data) for n in nodes for subject, data in n.cluster.outbox]
        for n in nodes:
            n.cluster.outbox.clear()
        if not queued:
            return
        for source, subject, data in queued:
            for n in nodes:
                if n is not source:
                    n.sent += n.machine.receive_bus(subject, data, now)


def announced(node, kind):
    return [
        wire.decode(a.data) for a in node.sent if isinstance(a, SendToRoom) and isinstance(wire.decode(a.data), kind)
    ]


def test_a_room_spans_bootnodes_with_one_message_per_join_and_leave():
    a, b = Node(b"a"), Node(b"b")
    alice, _ = a.register(1, ("198.51.100.1", 4000))
    carry([a, b])
    bob, replies = b.register(2, ("198.51.100.2", 4000))
    assert b.cluster.subscribe == {ROOM}  # b serves the room now: it listens, and asks (SYNC)
    carry([a, b])
    # bob's own list came before the sync; alice reaches him in a PEER_JOINED right after
    joined = [e.public_key for m in announced(b, wire.PeerJoined) for e in m.peers]
    assert alice in joined
    assert [e.public_key for m in announced(a, wire.PeerJoined) for e in m.peers] == [bob]
    # both digests cover the whole room, as the clients compute it
    whole = wire.room_digest([alice, bob])
    assert a.machine.table.room_digest(ROOM) == whole == b.machine.table.room_digest(ROOM)
    # a third member at b: one JOIN on the bus, and its list names alice and bob
    published = b.cluster.stats.get("published.join", 0)
    carol, replies = b.register(3, ("198.51.100.3", 4000))
    assert b.cluster.stats["published.join"] == published + 1
    listed = {e.public_key for m in replies if isinstance(m, wire.PeerList) for e in m.peers}
    assert listed == {alice, bob}
    carry([a, b])
    # bob disconnects: one LEAVE; a's members hear PEER_LEFT, the digests agree again
    token = next(m for m in b.sent if isinstance(m, Send) and wire.decode(m.data).__class__ is wire.Registered)
    b.machine.receive_datagram(
        wire.encode(wire.TokenMessage(wire.MsgType.DISCONNECT, wire.decode(token.data).token)), token.addr, 2.0
    )
    carry([a, b])
    left = [k for m in announced(a, wire.PeerLeft) for k, _ in m.left]
    assert left == [bob]
    assert a.machine.table.room_digest(ROOM) == wire.room_digest([alice, carol]) == b.machine.table.room_digest(ROOM)


def test_a_silent_bootnodes_members_leave_within_the_peer_timeout():
    a, b = Node(b"a"), Node(b"b")
    a.register(1, ("198.51.100.1", 4000))
    bob, _ = b.register(2, ("198.51.100.2", 4000))
    carry([a, b])
    a.machine.receive_bus(NODES_SUBJECT, b.cluster.alive()[1], 5.0)
    assert a.machine.expire_nodes(19.9) == []
    actions = a.machine.expire_nodes(20.0)
    assert [k for x in actions for k, _ in wire.decode(x.data).left] == [bob]
    assert a.machine.table.room_digest(ROOM) == wire.room_digest([a.machine.table.card(0)[:32]])


def test_a_leave_from_where_a_member_no_longer_is_does_not_part_it():
    """bob fails over from b to a: b's leave for him (when his old registration expires)
    must not tell a's room that he left."""
    a, b = Node(b"a"), Node(b"b")
    a.register(1, ("198.51.100.1", 4000))
    key = generate_private_key()
    bob = public_key(key)
    for node in (b, a):  # the same key registers at b, then at a
        reg = wire.Register(bytes(16), 7, ROOM, bob, "bob", ())
        (cookie,) = node.machine.receive_datagram(wire.encode(reg), ("198.51.100.2", 4000), 0.0)
        got = wire.decode(cookie.data)
        proof = wire.register_proof_key(dh(key, got.bootnode_key))
        signed = wire.Register(got.cookie, 7, ROOM, bob, "bob", ())
        node.machine.receive_datagram(wire.encode_signed_register(signed, proof), ("198.51.100.2", 4000), 0.0)
        carry([a, b])
    a.sent.clear()
    b.cluster.left(ROOM, bob, 2)  # b's old registration of bob expires
    carry([a, b])
    assert announced(a, wire.PeerLeft) == []
    assert a.machine.table.find_in_room(ROOM, bob) >= 0


def test_bus_messages_that_make_no_sense_are_dropped():
    a = Node(b"a")
    a.register(1, ("198.51.100.1", 4000))
    for data in (b"", b"\x02" + bytes(20), bytes([1, 1]) + b"x" * 8 + b"not an entry", bytes([1, 2]) + b"y" * 8):
        assert a.machine.receive_bus(room_subject(ROOM), data, 1.0) == []
    assert a.machine.receive_bus("gochat.room.zz", bytes([1, 3]) + b"y" * 8, 1.0) == []


# --- real processes: three bootnodes, two NATS servers ------------------------------------

TIMERS = ["--heartbeat-interval", "1s", "--peer-timeout", "3s"]


@pytest.mark.slow
@pytest.mark.skipif(nats_missing() is not None, reason=nats_missing() or "")
def test_three_bootnodes_and_two_nats_servers_serve_one_room(tmp_path):
    n1 = NatsServer("n1")
    n2 = NatsServer("n2", routes=[n1.cluster_port])
    boots, clients = [], []
    try:
        urls = f"{n1.url},{n2.url}"
        boots = [Bootnode(extra=[*TIMERS, "--cluster", urls]) for _ in range(3)]
        for b in boots:
            b.wait_for_line(r"cluster: on the bus")
        # members registered at three different bootnodes meet and chat
        alice = Client(boots[0].address, "alice", tmp_path, extra=TIMERS)
        bob = Client(boots[1].address, "bob", tmp_path, extra=TIMERS)
        # carol knows two bootnodes, in the room's order starting at the third
        b2, b1 = (("127.0.0.1", boots[2].port), ("127.0.0.1", boots[1].port))
        order = [b2, b1] if bootnode_order([b2, b1], "lobby")[0] == b2 else [b1, b2]
        carol = Client(",".join(f"{h}:{p}" for h, p in order), "carol", tmp_path, extra=TIMERS)
        clients = [alice, bob, carol]
        for c, others in ((alice, ("bob", "carol")), (bob, ("alice", "carol")), (carol, ("alice", "bob"))):
            for name in others:
                c.wait_event("peer_connected", name=name, timeout=20)
        alice.say("across three bootnodes")
        for c in (bob, carol):
            c.wait_for(lambda e: e.get("text") == "across three bootnodes", what="alice's message")

        # a NATS server dies: nothing changes for anyone; a newcomer still meets everyone
        n1.stop()
        dave = Client(boots[0].address, "dave", tmp_path, extra=TIMERS)
        clients.append(dave)
        for name in ("alice", "bob", "carol"):
            dave.wait_event("peer_connected", name=name, timeout=20)
        bob.say("one NATS server down")
        for c in (alice, carol, dave):
            c.wait_for(lambda e: e.get("text") == "one NATS server down", what="bob's message")

        # carol's bootnode dies: she fails over to the next one in her list, her chat goes
        # on, and a newcomer there finds the whole room
        boots[2].proc.kill()
        carol.wait_event("bootnode_lost", timeout=20)
        carol.wait_for(lambda e: e.get("event") == "registered" and e.get("again"), timeout=30, what="re-registered")
        erin = Client(boots[1].address, "erin", tmp_path, extra=TIMERS)
        clients.append(erin)
        for name in ("alice", "bob", "carol", "dave"):
            erin.wait_event("peer_connected", name=name, timeout=20)
        carol.say("after my bootnode died")
        for c in (alice, bob, dave, erin):
            c.wait_for(lambda e: e.get("text") == "after my bootnode died", what="carol's message")
    finally:
        for c in clients:
            c.kill()
        for b in boots:
            if b.proc.poll() is None:
                b.stop()
        n1.stop()
        n2.stop()


def test_cluster_setting_is_checked_up_front():
    from gochat.config import ConfigError, resolve

    boot = {"mode": "bootnode", "listen": "127.0.0.1:9595"}
    assert resolve(boot, {"CLUSTER": "nats://10.0.0.1:4222, nats://n2:4222"}, None).cluster == (
        "nats://10.0.0.1:4222",
        "nats://n2:4222",
    )
    with pytest.raises(ConfigError, match="invalid CLUSTER"):
        resolve(boot, {"CLUSTER": "http://10.0.0.1:4222"}, None)


@pytest.mark.slow
@pytest.mark.skipif(nats_missing() is not None, reason=nats_missing() or "")
def test_a_bootnode_of_two_workers_is_two_nodes_of_the_cluster(tmp_path):
    """Workers and the bus compose: each worker is a node of its own, and a room on
    either worker meets its members at another bootnode."""
    n1 = NatsServer("n1")
    boots, clients = [], []
    try:
        boots = [
            Bootnode(extra=[*TIMERS, "--cluster", n1.url, "--workers", "2"]),
            Bootnode(extra=[*TIMERS, "--cluster", n1.url]),
        ]
        boots[0].wait_for_line(r"worker 0: cluster: on the bus")
        boots[0].wait_for_line(r"worker 1: cluster: on the bus")
        boots[1].wait_for_line(r"cluster: on the bus")
        from .test_workers import room_on

        for worker in (0, 1):
            room = room_on(worker, 2)
            alice = Client(boots[0].address, f"alice{worker}", tmp_path, room=room, extra=TIMERS)
            bob = Client(boots[1].address, f"bob{worker}", tmp_path, room=room, extra=TIMERS)
            clients += [alice, bob]
            alice.wait_event("peer_connected", name=f"bob{worker}", timeout=20)
            bob.say(f"to worker {worker}")
            alice.wait_for(lambda e, w=worker: e.get("text") == f"to worker {w}", what="bob's message")
    finally:
        for c in clients:
            c.kill()
        for b in boots:
            b.stop()
        n1.stop()
