"""The rendezvous machine with simulated time and an in-memory network: no sockets,
no clock; each case takes microseconds. Runs against both fast-path tables."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import pytest

from gochat.bootnode.cookie import CookieJar
from gochat.bootnode.keys import BootnodeKey
from gochat.bootnode.rendezvous import Limits, Rendezvous, Send, SendToRoom
from gochat.crypto.noise import dh, generate_private_key, public_key
from gochat.wire import control as wire
from gochat.wire.control import LeaveReason, MsgType, RefuseReason

from .peer import room_id

BOOT = ("198.51.100.1", 9595)


@dataclass
class Net:
    """Runs the machine and delivers its actions into per-address inboxes."""

    machine: Rendezvous
    inbox: dict = field(default_factory=dict)

    def deliver(self, actions):
        t = self.machine.table
        for a in actions:
            if isinstance(a, Send):
                self.inbox.setdefault(wire.normalize_host(a.addr[0]) + f":{a.addr[1]}", []).append(wire.decode(a.data))
            else:
                assert isinstance(a, SendToRoom)
                for i in t.room_members(a.room_id):
                    if i != a.exclude_slot:
                        host, port = t.endpoint(i)
                        self.inbox.setdefault(f"{host}:{port}", []).append(wire.decode(a.data))

    def send(self, data, addr, now, flush=True):
        self.deliver(self.machine.receive_datagram(data, addr, now))
        if flush:  # as the driver does after each receive batch
            self.deliver(self.machine.flush_announcements())

    def tick(self, now):
        self.deliver(self.machine.handle_timer(now))

    def take(self, addr, kind=None):
        msgs = self.inbox.pop(f"{addr[0]}:{addr[1]}", [])
        return [m for m in msgs if kind is None or isinstance(m, kind)]


def make(impl, now=1000.0, **limits):
    table = impl.RegistrationTable(limits.pop("capacity", 1000), 15.0, now)
    lim = Limits(
        max_peers=limits.pop("max_peers", 1000),
        max_peers_per_room=limits.pop("max_peers_per_room", 100),
        register_rate_per_ip=limits.pop("rate", 1000.0),
        register_burst_per_ip=limits.pop("burst", 1000),
        max_peers_per_source=limits.pop("per_source", 16),
    )
    machine = Rendezvous(
        table,
        heartbeat_interval_s=10.0,
        peer_timeout_s=15.0,
        limits=lim,
        cookies=CookieJar(b"k" * 32),
        key=BootnodeKey(b"b" * 32),
    )
    return Net(machine)


class Client:
    def __init__(self, net, addr, name, room="lobby", private=None, locals_=()):
        self.net, self.addr, self.name = net, addr, name
        self.private = private or generate_private_key()
        self.key = public_key(self.private)
        self.room = room_id(room)
        self.locals = tuple(locals_)
        self.token = None

    def message(self, cookie=bytes(16), request_id=7, name=None):
        return wire.Register(cookie, request_id, self.room, self.key, name or self.name, self.locals)

    def signed(self, cookie, request_id=7, name=None):
        """The REGISTER with its proof, as the real client makes it."""
        proof_key = wire.register_proof_key(dh(self.private, self.net.machine.key.public))
        return wire.encode_signed_register(self.message(cookie, request_id, name), proof_key)

    def register(self, now, request_id=7):
        self.net.send(wire.encode(self.message(request_id=request_id)), self.addr, now)
        (cookie,) = self.net.take(self.addr, wire.Cookie)
        assert cookie.bootnode_key == self.net.machine.key.public
        self.net.send(self.signed(cookie.cookie, request_id), self.addr, now)
        msgs = self.net.take(self.addr)
        first = msgs[0]
        if isinstance(first, wire.Registered):
            self.token = first.token
        return first, msgs[1:]

    def token_msg(self, t, flags=0):
        return wire.encode(wire.TokenMessage(t, self.token, flags))


def test_register_needs_a_cookie_and_replies_small(impl):
    net = make(impl)
    reg = wire.encode(wire.Register(bytes(16), 1, room_id("r"), os.urandom(32), "a"))
    actions = net.machine.receive_datagram(reg, ("203.0.113.5", 4000), 1000.0)
    assert len(actions) == 1 and isinstance(actions[0], Send)
    assert len(actions[0].data) <= len(reg)
    assert isinstance(wire.decode(actions[0].data), wire.Cookie)
    assert len(net.machine.table) == 0  # no state for an unvalidated address


def test_cookie_carries_the_bootnode_key_and_stays_smaller_than_any_register(impl):
    net = make(impl)
    smallest = wire.encode(wire.Register(bytes(16), 1, room_id("r"), os.urandom(32), "a"))
    (action,) = net.machine.receive_datagram(smallest, ("203.0.113.5", 4000), 1000.0)
    cookie = wire.decode(action.data)
    assert cookie.bootnode_key == net.machine.key.public
    assert len(action.data) == 56 < len(smallest) == 91


def test_cookie_is_bound_to_address_and_expires(impl):
    net = make(impl)
    jar = net.machine.cookies
    cookie = jar.make(("203.0.113.5", 4000), 1000.0)
    assert jar.verify(cookie, ("203.0.113.5", 4000), 1000.0)
    assert jar.verify(cookie, ("203.0.113.5", 4000), 1000.0 + 60)
    assert not jar.verify(cookie, ("203.0.113.5", 4001), 1000.0)
    assert not jar.verify(cookie, ("203.0.113.6", 4000), 1000.0)
    assert not jar.verify(cookie, ("203.0.113.5", 4000), 1000.0 + 180)


def test_register_reply_peer_list_and_join_announcements(impl):
    net = make(impl)
    alice = Client(net, ("203.0.113.5", 4000), "alice", locals_=[("192.168.1.5", 4545)])
    reg, rest = alice.register(1000.0, request_id=11)
    assert isinstance(reg, wire.Registered) and reg.request_id == 11
    assert reg.observed_endpoint == alice.addr
    assert (reg.heartbeat_interval_ms, reg.peer_timeout_ms) == (10_000, 15_000)
    assert rest == [wire.PeerList(reg.room_tag, 0, 1, ())]  # empty room, and the list says so

    bob = Client(net, ("198.51.100.77", 5000), "bob")
    reg_b, rest_b = bob.register(1001.0)
    assert reg_b.room_tag == reg.room_tag
    (plist,) = rest_b
    assert plist.peers == (wire.PeerEntry(alice.key, "alice", (alice.addr, ("192.168.1.5", 4545))),)
    (joined,) = net.take(alice.addr)
    assert joined == wire.PeerJoined(reg.room_tag, (wire.PeerEntry(bob.key, "bob", (bob.addr,)),))


def test_rooms_are_separate(impl):
    net = make(impl)
    a = Client(net, ("203.0.113.5", 4000), "a", room="one")
    b = Client(net, ("203.0.113.6", 4000), "b", room="two")
    a.register(1000.0)
    _, rest = b.register(1000.0)
    assert rest[0].peers == ()
    assert net.take(a.addr) == []


def test_large_room_peer_list_is_split_across_datagrams(impl):
    net = make(impl, max_peers_per_room=500)
    clients = [Client(net, (f"10.1.{n // 200}.{n % 200 + 1}", 4000), f"peer{n:03d}") for n in range(60)]
    for c in clients:
        c.register(1000.0)
    newcomer = Client(net, ("10.9.9.9", 4000), "late")
    _, rest = newcomer.register(1000.0)
    assert len(rest) > 1 and all(p.parts == len(rest) for p in rest)
    names = sorted(e.name for p in rest for e in p.peers)
    assert names == sorted(c.name for c in clients)


def ack(net, client):
    """The HEARTBEAT_ACK ``client`` gets: its token and its room's membership digest."""
    return wire.TokenMessage(
        MsgType.HEARTBEAT_ACK, client.token, digest=net.machine.table.room_digest(room_id("lobby"))
    )


def test_heartbeat_ack_unknown_and_rebinding(impl):
    net = make(impl)
    a = Client(net, ("203.0.113.5", 4000), "a")
    a.register(1000.0)
    net.send(a.token_msg(MsgType.HEARTBEAT, wire.FLAG_ACK_REQUESTED), a.addr, 1005.0)
    assert net.take(a.addr) == [ack(net, a)]
    net.send(a.token_msg(MsgType.HEARTBEAT), a.addr, 1006.0)
    assert net.take(a.addr) == []
    new_addr = ("203.0.113.5", 4999)  # the NAT gave the client a new port
    net.send(a.token_msg(MsgType.HEARTBEAT, wire.FLAG_ACK_REQUESTED), new_addr, 1007.0)
    (challenge,) = net.take(new_addr)  # one round trip proves the new address
    assert isinstance(challenge, wire.RebindChallenge)
    answer = wire.TokenMessage(
        MsgType.HEARTBEAT, a.token, wire.FLAG_REBIND | wire.FLAG_ACK_REQUESTED, challenge.challenge
    )
    net.send(wire.encode(answer), new_addr, 1007.05)
    assert net.take(new_addr) == [ack(net, a)]
    assert (net.machine.stats["rebinds"], net.machine.stats["rebind_challenges"]) == (1, 1)
    b = Client(net, ("203.0.113.9", 4000), "b")
    _, rest = b.register(1008.0)
    assert rest[0].peers[0].endpoints[0] == new_addr  # newcomers learn the new endpoint
    bogus = wire.encode(wire.TokenMessage(MsgType.HEARTBEAT, b"\0\0\0\x09" + bytes(8)))
    net.send(bogus, ("203.0.113.66", 1), 1009.0)
    (reply,) = net.take(("203.0.113.66", 1))
    assert reply.type is MsgType.UNKNOWN_TOKEN and len(wire.encode(reply)) <= len(bogus)


def test_expiry_exactly_at_timeout_announced_to_room(impl):
    net = make(impl)
    a = Client(net, ("203.0.113.5", 4000), "a")
    b = Client(net, ("203.0.113.6", 4000), "b")
    a.register(1000.0)
    b.register(1002.0)
    net.take(a.addr)
    for now in (1005.0, 1010.0):
        net.send(b.token_msg(MsgType.HEARTBEAT), b.addr, now)
    net.tick(1014.999)
    assert net.take(b.addr) == [] and len(net.machine.table) == 2
    net.tick(1015.0)
    (left,) = net.take(b.addr)
    assert left.left == ((a.key, LeaveReason.TIMED_OUT),)
    assert len(net.machine.table) == 1
    net.tick(1024.999)
    assert len(net.machine.table) == 1
    net.tick(1025.0)
    assert len(net.machine.table) == 0 and net.machine.stats["expired"] == 2


def test_disconnect_is_acked_and_announced(impl):
    net = make(impl)
    a = Client(net, ("203.0.113.5", 4000), "a")
    b = Client(net, ("203.0.113.6", 4000), "b")
    a.register(1000.0)
    b.register(1000.0)
    net.take(a.addr)
    net.send(a.token_msg(MsgType.DISCONNECT), a.addr, 1001.0)
    assert net.take(a.addr) == [wire.TokenMessage(MsgType.DISCONNECT_ACK, a.token)]
    (left,) = net.take(b.addr)
    assert left.left == ((a.key, LeaveReason.DISCONNECTED),)
    net.send(a.token_msg(MsgType.DISCONNECT), a.addr, 1001.5)  # retransmission: acked again
    assert net.take(a.addr) == [wire.TokenMessage(MsgType.DISCONNECT_ACK, a.token)]
    assert net.take(b.addr) == []


def test_restart_means_unknown_token_then_reregister(impl):
    net = make(impl)
    a = Client(net, ("203.0.113.5", 4000), "a")
    a.register(1000.0)
    old = a.token
    restarted = make(impl, now=2000.0)  # a new bootnode process: empty table, new secret
    a.net = restarted
    restarted.send(wire.encode(wire.TokenMessage(MsgType.HEARTBEAT, old)), a.addr, 2001.0)
    (reply,) = restarted.take(a.addr)
    assert reply.type is MsgType.UNKNOWN_TOKEN and reply.token == old
    reg, _ = a.register(2001.5)
    assert isinstance(reg, wire.Registered) and reg.token != old


def test_reregistering_replaces_the_old_registration(impl):
    net = make(impl)
    key = generate_private_key()
    a1 = Client(net, ("203.0.113.5", 4000), "a", private=key)
    b = Client(net, ("203.0.113.6", 4000), "b")
    a1.register(1000.0)
    b.register(1000.0)
    a2 = Client(net, ("203.0.113.5", 4100), "a", private=key)
    a2.register(1001.0)
    assert len(net.machine.table) == 2
    assert net.machine.table.lookup(a1.token) == -1
    (joined,) = [m for m in net.take(b.addr) if isinstance(m, wire.PeerJoined)]
    assert joined.peers[0].endpoints[0] == a2.addr


def test_limits_refuse_politely(impl):
    net = make(impl, max_peers_per_room=2, max_peers=3)
    c = [Client(net, (f"203.0.113.{n}", 4000), f"c{n}", room="full" if n < 3 else "other") for n in range(5)]
    assert isinstance(c[0].register(1000.0)[0], wire.Registered)
    assert isinstance(c[1].register(1000.0)[0], wire.Registered)
    refused = c[2].register(1000.0)[0]
    assert isinstance(refused, wire.Refused) and refused.reason is RefuseReason.ROOM_FULL
    assert isinstance(c[3].register(1000.0)[0], wire.Registered)
    refused = c[4].register(1000.0)[0]
    assert refused.reason is RefuseReason.SERVER_FULL and refused.request_id == 7
    assert net.machine.stats["refused.room_full"] == 1 and net.machine.stats["refused.server_full"] == 1


def test_rate_limit_per_source_ip(impl):
    net = make(impl, rate=1.0, burst=2)
    same_ip = [Client(net, ("203.0.113.5", 4000 + n), f"c{n}") for n in range(3)]
    assert isinstance(same_ip[0].register(1000.0)[0], wire.Registered)
    assert isinstance(same_ip[1].register(1000.0)[0], wire.Registered)
    refused = same_ip[2].register(1000.0)[0]
    assert refused.reason is RefuseReason.RATE_LIMITED and 900 <= refused.retry_after_ms <= 1000
    assert isinstance(same_ip[2].register(1001.0)[0], wire.Registered)
    other = Client(net, ("203.0.113.6", 4000), "x")
    assert isinstance(other.register(1000.0)[0], wire.Registered)


def test_malformed_counted_by_reason_and_nothing_sent(impl):
    net = make(impl)
    for data in (
        b"",
        b"\x00\x01\x02\x03\x04",
        b"\x47\x09\x01\x00",
        b"\x47\x01\x99\x00",
        b"\x47\x01\x01\x00" + bytes(10),
    ):
        assert net.machine.receive_datagram(data, ("203.0.113.5", 1), 1000.0) == []
    s = net.machine.stats
    assert (
        s["malformed.truncated"],
        s["malformed.bad_magic"],
        s["malformed.bad_version"],
        s["malformed.unknown_type"],
    ) == (2, 1, 1, 1)
    # a message the bootnode only ever sends is ignored, not answered
    assert (
        net.machine.receive_datagram(wire.encode(wire.Cookie(1, bytes(16), bytes(32))), ("203.0.113.5", 1), 1000.0)
        == []
    )
    assert s["unexpected.Cookie"] == 1


def test_joins_in_one_batch_are_coalesced_per_room(impl):
    net = make(impl)
    old = Client(net, ("203.0.113.1", 4000), "old")
    old.register(1000.0)
    newcomers = [Client(net, (f"203.0.113.{10 + n}", 4000), f"new{n}") for n in range(4)]
    jar = net.machine.cookies
    for c in newcomers:  # all arrive in one receive batch: no flush in between
        net.send(c.signed(jar.make(c.addr, 1000.0), 1), c.addr, 1000.0, flush=False)
        c.token = net.take(c.addr, wire.Registered)[0].token
    net.send(newcomers[1].token_msg(MsgType.DISCONNECT), newcomers[1].addr, 1000.0, flush=False)
    net.take(newcomers[1].addr)
    assert net.take(old.addr, wire.PeerJoined) == []  # no join announced yet
    net.deliver(net.machine.flush_announcements())
    alive = [newcomers[0], newcomers[2], newcomers[3]]
    (joined,) = net.take(old.addr, wire.PeerJoined)
    assert [e.name for e in joined.peers] == [c.name for c in alive]  # the one who left is not announced
    assert [e.name for e in net.take(newcomers[0].addr, wire.PeerJoined)[0].peers] == ["new0", "new2", "new3"]
    assert net.take(newcomers[3].addr, wire.PeerJoined) == []  # the latest knew everyone from its list
    assert net.machine.flush_announcements() == []


def test_retried_register_keeps_the_registration(impl):
    net = make(impl)
    a = Client(net, ("203.0.113.5", 4000), "a")
    b = Client(net, ("203.0.113.6", 4000), "b")
    b.register(1000.0)
    reg1, _ = a.register(1000.0, request_id=5)
    net.take(b.addr)
    reg2, rest = a.register(1009.0, request_id=5)  # the first reply was lost; same request again
    assert reg2.token == reg1.token and len(net.machine.table) == 2
    assert [e.name for e in rest[0].peers] == ["b"]
    assert net.take(b.addr) == []  # nothing new to announce
    assert net.machine.stats["register.duplicate"] == 1
    net.tick(1023.999)  # the retry refreshed the registration: not expired at 1000 + 15
    assert net.machine.table.lookup(reg1.token) >= 0


# --- proof of possession of the key --------------------------------------------------------


def _nothing_announced(net, *clients):
    for c in clients:
        assert net.take(c.addr, wire.PeerJoined) == [] and net.take(c.addr, wire.PeerLeft) == []


def test_register_with_another_members_key_is_refused(impl):
    """Keys are public (every PEER_LIST has them): a valid cookie and alice's key, without
    alice's private key, neither replaces nor disconnects her."""
    net = make(impl)
    alice = Client(net, ("203.0.113.5", 4000), "alice")
    bob = Client(net, ("203.0.113.6", 4000), "bob")
    alice.register(1000.0)
    bob.register(1000.0)
    net.take(alice.addr)
    mallory = Client(net, ("198.51.100.66", 5000), "alice")
    mallory.key = alice.key  # claims alice's key, proves with its own private key
    reply, rest = mallory.register(1001.0)
    assert reply == wire.Refused(7, RefuseReason.BAD_PROOF, 30_000) and rest == []
    assert net.machine.stats["refused.bad_proof"] == 1
    assert net.machine.table.lookup(alice.token) >= 0 and len(net.machine.table) == 2
    _nothing_announced(net, alice, bob)
    # and the zero proof of a client that never saw the bootnode's key is no proof either
    cookie = net.machine.cookies.make(mallory.addr, 1001.0)
    net.send(wire.encode(mallory.message(cookie)), mallory.addr, 1001.0)
    assert net.take(mallory.addr) == [wire.Refused(7, RefuseReason.BAD_PROOF, 30_000)]
    net.send(alice.token_msg(MsgType.HEARTBEAT, wire.FLAG_ACK_REQUESTED), alice.addr, 1002.0)
    assert net.take(alice.addr) == [ack(net, alice)]
    _nothing_announced(net, alice, bob)


def test_replayed_register_from_another_address_fails_the_cookie(impl):
    net = make(impl)
    alice = Client(net, ("203.0.113.5", 4000), "alice")
    bob = Client(net, ("203.0.113.6", 4000), "bob")
    bob.register(1000.0)
    signed = alice.signed(net.machine.cookies.make(alice.addr, 1000.0))
    net.send(signed, alice.addr, 1000.0)
    alice.token = net.take(alice.addr, wire.Registered)[0].token
    net.take(bob.addr)
    mallory = ("198.51.100.66", 5000)
    net.send(signed, mallory, 1001.0)  # alice's own bytes, proof and all, from elsewhere
    (reply,) = net.take(mallory)
    assert isinstance(reply, wire.Cookie)  # an unvalidated address: a cookie, nothing else
    assert net.machine.table.endpoint(net.machine.table.lookup(alice.token)) == alice.addr
    assert net.machine.stats["register.replaced"] == 0
    _nothing_announced(net, alice, bob)


def test_the_proof_covers_the_card(impl):
    net = make(impl)
    alice = Client(net, ("203.0.113.5", 4000), "alice", locals_=[("192.168.1.5", 4545)])
    cookie = net.machine.cookies.make(alice.addr, 1000.0)
    signed = alice.signed(cookie)
    renamed = alice.signed(cookie, name="alicf")[:-16] + signed[-16:]  # same proof, another name
    net.send(renamed, alice.addr, 1000.0)
    assert net.take(alice.addr) == [wire.Refused(7, RefuseReason.BAD_PROOF, 30_000)]
    for pos in (20, 30, 45, len(signed) - 5, len(signed) - 17):  # request id, room, key, endpoint, proof
        tampered = bytearray(signed)
        tampered[pos] ^= 1
        net.send(bytes(tampered), alice.addr, 1000.0)
        assert [type(m) for m in net.take(alice.addr)] == [wire.Refused]
    assert net.machine.stats["refused.bad_proof"] == 6 and len(net.machine.table) == 0
    net.send(signed, alice.addr, 1000.0)
    assert isinstance(net.take(alice.addr)[0], wire.Registered)


def test_a_key_nobody_can_hold_is_refused_without_error(impl):
    net = make(impl)
    addr = ("203.0.113.5", 4000)
    for key in (bytes(32), (1).to_bytes(32, "little")):  # low-order points: no shared secret
        reg = wire.Register(net.machine.cookies.make(addr, 1000.0), 1, room_id("r"), key, "x")
        net.send(wire.encode(reg), addr, 1000.0)
        assert net.take(addr) == [wire.Refused(1, RefuseReason.BAD_PROOF, 30_000)]


# --- registrations per source address per room -------------------------------------------


def test_one_address_cannot_fill_a_room(impl):
    net = make(impl, per_source=3)
    member = Client(net, ("198.51.100.7", 4000), "member")
    member.register(1000.0)
    flood = [Client(net, ("203.0.113.5", 5000 + n), f"throwaway{n}") for n in range(5)]
    replies = [c.register(1000.0)[0] for c in flood]
    assert [type(r) for r in replies] == [wire.Registered] * 3 + [wire.Refused] * 2
    assert replies[3] == wire.Refused(7, RefuseReason.SOURCE_FULL, 5000)
    assert net.machine.stats["refused.source_full"] == 2 and len(net.machine.table) == 4
    joined = {e.name for m in net.take(member.addr, wire.PeerJoined) for e in m.peers}
    assert joined == {"throwaway0", "throwaway1", "throwaway2"}  # the refused ones never announced
    elsewhere = Client(net, ("203.0.113.5", 6000), "elsewhere", room="another room")
    assert isinstance(elsewhere.register(1000.0)[0], wire.Registered)  # the cap is per room
    neighbour = Client(net, ("203.0.113.6", 5000), "neighbour")
    assert isinstance(neighbour.register(1000.0)[0], wire.Registered)  # and per address
    net.send(flood[0].token_msg(MsgType.DISCONNECT), flood[0].addr, 1001.0)
    assert isinstance(flood[3].register(1001.0)[0], wire.Registered)  # a place freed


def test_a_reregistration_from_the_same_address_replaces_and_is_not_counted_twice(impl):
    net = make(impl, per_source=2)
    key_a, key_b = generate_private_key(), generate_private_key()
    a = Client(net, ("203.0.113.5", 5000), "a", private=key_a)
    b = Client(net, ("203.0.113.5", 5001), "b", private=key_b)
    a.register(1000.0)
    b.register(1000.0)
    old_token = a.token
    moved = Client(net, ("203.0.113.5", 5999), "a", private=key_a)  # a restarted on a new port
    assert isinstance(moved.register(1001.0)[0], wire.Registered)
    assert net.machine.table.lookup(old_token) == -1 and len(net.machine.table) == 2
    assert isinstance(moved.register(1002.0)[0], wire.Registered)  # a retry at the cap: the duplicate stands
    assert net.machine.stats["register.duplicate"] == 1
    # a key registered from elsewhere makes no room for itself at a full address
    c_key = generate_private_key()
    c = Client(net, ("198.51.100.9", 4000), "c", private=c_key)
    c.register(1003.0)
    c_there = Client(net, ("203.0.113.5", 6000), "c", private=c_key)
    assert c_there.register(1004.0)[0].reason is RefuseReason.SOURCE_FULL
    assert net.machine.table.lookup(c.token) >= 0  # the refused one did not replace it


# --- no reflection through unvalidated addresses ------------------------------------------


def rebind_answer(token, challenge, flags=wire.FLAG_REBIND | wire.FLAG_ACK_REQUESTED):
    return wire.encode(wire.TokenMessage(MsgType.HEARTBEAT, token, flags, challenge))


def test_tokens_pointed_at_a_victim_get_nothing_there_but_same_size_replies(impl):
    """Whoever has the room's tokens heartbeats them from a victim's address: the victim
    must get no announcement, only a reply per heartbeat, none larger than it."""
    net = make(impl)
    members = [Client(net, (f"203.0.113.{n}", 4000), f"m{n}") for n in range(1, 6)]
    for c in members:
        c.register(1000.0)
    for c in members:
        net.take(c.addr)
    victim = ("192.0.2.99", 53)
    sent = received = 0
    for now in (1001.0, 1001.5, 1002.0):
        for c in members:
            for data in (
                c.token_msg(MsgType.HEARTBEAT, wire.FLAG_ACK_REQUESTED),
                rebind_answer(c.token, os.urandom(12)),  # a guessed challenge
            ):
                actions = net.machine.receive_datagram(data, victim, now)
                sent += len(data)
                for a in actions:
                    assert isinstance(a, Send) and a.addr == victim and len(a.data) <= len(data)
                    received += len(a.data)
                net.deliver(actions)
    replies = net.take(victim)
    assert {type(m) for m in replies} == {wire.RebindChallenge} and received <= sent
    late = Client(net, ("203.0.113.77", 4000), "late")  # joins, leaves, expiries: none reach the victim
    _, (plist,) = late.register(1003.0)
    assert sorted(e.endpoints[0] for e in plist.peers) == sorted(c.addr for c in members)
    net.send(members[0].token_msg(MsgType.DISCONNECT), members[0].addr, 1004.0)
    net.tick(1020.0)
    assert net.take(victim) == []
    s = net.machine.stats
    assert s["rebinds"] == 0 and s["rebind_challenges"] == 30 and s["rebind_refused"] == 15


def test_heartbeats_from_a_new_source_keep_the_registration_alive(impl):
    net = make(impl)
    a = Client(net, ("203.0.113.5", 4000), "a")
    a.register(1000.0)
    for now in (1010.0, 1020.0):  # from elsewhere, never answering the challenge
        net.send(a.token_msg(MsgType.HEARTBEAT), ("203.0.113.5", 4999), now)
    net.tick(1030.0)
    slot = net.machine.table.lookup(a.token)
    assert slot >= 0 and net.machine.table.endpoint(slot) == a.addr


def test_a_forged_stale_or_borrowed_challenge_moves_nothing(impl):
    net = make(impl)
    a = Client(net, ("203.0.113.5", 4000), "a")
    b = Client(net, ("203.0.113.6", 4000), "b")
    a.register(1000.0)
    b.register(1000.0)
    new, elsewhere = ("203.0.113.5", 4999), ("198.51.100.1", 7000)
    net.send(a.token_msg(MsgType.HEARTBEAT), new, 1001.0)
    (challenge,) = net.take(new)
    table = net.machine.table

    def refused(data, addr, now):
        net.send(data, addr, now)
        (reply,) = net.take(addr)  # a fresh challenge, never an ack
        assert isinstance(reply, wire.RebindChallenge)
        assert table.endpoint(table.lookup(a.token)) == a.addr
        return reply

    refused(rebind_answer(a.token, bytes(12)), new, 1001.1)  # forged
    refused(rebind_answer(a.token, challenge.challenge), elsewhere, 1001.2)  # from another address
    net.send(b.token_msg(MsgType.HEARTBEAT), new, 1001.3)
    (b_challenge,) = net.take(new)
    refused(rebind_answer(a.token, b_challenge.challenge), new, 1001.4)  # made for another token
    for now in (1010.0, 1020.0, 1030.0, 1040.0, 1050.0, 1060.0, 1070.0, 1080.0, 1090.0, 1100.0, 1110.0, 1120.0):
        net.send(a.token_msg(MsgType.HEARTBEAT), a.addr, now)  # a stays alive meanwhile
    fresh = refused(rebind_answer(a.token, challenge.challenge), new, 1121.0)  # stale: past two cookie buckets
    assert net.machine.stats["rebind_refused"] == 4 and net.machine.stats["rebinds"] == 0
    net.send(rebind_answer(a.token, fresh.challenge), new, 1121.1)  # the fresh one works
    assert net.take(new) == [ack(net, a)]
    assert table.endpoint(table.lookup(a.token)) == new and net.machine.stats["rebinds"] == 1
    net.send(rebind_answer(a.token, fresh.challenge), new, 1121.2)  # a retransmission, from where it is
    assert net.take(new) == [ack(net, a)]
    assert net.machine.stats["rebinds"] == 1


def test_the_client_link_answers_a_challenge_at_once_and_moves(impl):
    """The real client link behind a NAT that rebinds: one round trip and the bootnode
    announces its new endpoint."""
    from gochat.client.bootnode_link import REGISTERED, BootnodeLink

    net = make(impl)
    private = generate_private_key()
    link = BootnodeLink(BOOT, "lobby", wire.encode_card(public_key(private), "a", []), 1000.0, static_private=private)
    addr = ("203.0.113.5", 4000)

    def exchange(now):
        for data in link.outbox:
            net.send(data, addr, now)
        link.outbox.clear()
        for msg in net.take(addr):
            if not isinstance(msg, wire.PeerList):
                link.receive(msg, now)

    for _ in range(3):
        exchange(1000.0)
    assert link.state == REGISTERED
    addr = ("203.0.113.5", 4999)  # the NAT rebinds
    when = link.get_timer()
    assert when == 1001.0  # the first heartbeat a second after registering (its digest checks the list)
    link.handle_timer(when)  # the next heartbeat goes out from the new port
    exchange(when)  # heartbeat -> challenge; the link answers at once
    assert len(link.outbox) == 1 and len(link.outbox[0]) == 28
    exchange(when + 0.1)  # answer -> ack
    slot = net.machine.table.lookup(link.token)
    assert net.machine.table.endpoint(slot) == addr and link.rtt == pytest.approx(0.1)
    assert net.machine.stats["rebinds"] == 1


def test_no_reply_to_an_unvalidated_address_is_larger_than_what_it_answers(impl):
    """Every datagram a source that proved nothing can send, and what the bootnode sends
    back there: never more bytes than it received (README, Running a bootnode)."""
    net = make(impl)
    member = Client(net, ("203.0.113.5", 4000), "member")
    other = Client(net, ("203.0.113.6", 4000), "other")
    member.register(1000.0)
    other.register(1000.0)
    victim = ("192.0.2.99", 53)
    unknown = b"\0\0\0\x09" + bytes(8)
    smallest = wire.encode(wire.Register(bytes(16), 1, room_id("r"), os.urandom(32), "a"))
    cases = [
        (smallest, wire.Cookie),
        (
            wire.encode(
                wire.Register(net.machine.cookies.make(member.addr, 1000.0), 1, room_id("r"), os.urandom(32), "a")
            ),
            wire.Cookie,
        ),
        (wire.encode(wire.TokenMessage(MsgType.HEARTBEAT, unknown, wire.FLAG_ACK_REQUESTED)), wire.TokenMessage),
        (rebind_answer(unknown, bytes(12)), wire.TokenMessage),
        (member.token_msg(MsgType.HEARTBEAT, wire.FLAG_ACK_REQUESTED), wire.RebindChallenge),
        (rebind_answer(member.token, bytes(12)), wire.RebindChallenge),
        (wire.encode(wire.TokenMessage(MsgType.DISCONNECT, unknown)), wire.TokenMessage),
        (other.token_msg(MsgType.DISCONNECT), wire.TokenMessage),  # a stolen token can end its registration...
    ]
    factors = []
    for data, reply_type in cases:
        actions = net.machine.receive_datagram(data, victim, 1001.0)
        to_victim = [a for a in actions if isinstance(a, Send)]
        assert all(a.addr == victim for a in to_victim)  # ...and the room hears of it at its own endpoints
        assert [type(wire.decode(a.data)) for a in to_victim] == [reply_type]
        factors.append(sum(len(a.data) for a in to_victim) / len(data))
    assert max(factors) == 1.0 and factors[0] == 56 / 91
    # The relay: a RELAY with a token nobody holds gets UNKNOWN_TOKEN (16 for at least 25);
    # with a member's token from anywhere but the member's endpoint, nothing at all.
    smallest_relay = wire.encode_relay(unknown, bytes(8), b"x")
    (reply,) = net.machine.receive_datagram(smallest_relay, victim, 1001.0)
    assert reply.addr == victim and len(reply.data) / len(smallest_relay) == 16 / 25
    assert net.machine.receive_datagram(wire.encode_relay(member.token, bytes(8), b"x"), victim, 1001.0) == []


def test_a_proved_rebinding_is_announced_to_the_room(impl):
    """A member behind a filtering NAT can only punch a moved member's new mapping if it
    learns it: the bootnode announces the proved new endpoint as a join (insert or
    update), to the others only, and an unproved source changes nothing anyone hears."""
    net = make(impl)
    a = Client(net, ("203.0.113.5", 4000), "a")
    a.register(1000.0)
    b = Client(net, ("198.51.100.9", 4000), "b")
    b.register(1000.1)
    net.take(a.addr)
    new_addr = ("203.0.113.5", 4999)
    net.send(a.token_msg(MsgType.HEARTBEAT, wire.FLAG_ACK_REQUESTED), new_addr, 1001.0)
    (challenge,) = net.take(new_addr)
    assert net.take(b.addr) == []  # not proved yet: nothing announced
    net.send(rebind_answer(a.token, challenge.challenge), new_addr, 1001.1)
    (joined,) = net.take(b.addr, wire.PeerJoined)
    assert [(e.name, e.endpoints[0]) for e in joined.peers] == [("a", new_addr)]
    assert net.take(new_addr, wire.PeerJoined) == []  # the mover is not told about itself
