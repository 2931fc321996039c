"""The client state machines end to end over a simulated network, with simulated time:
real Rendezvous bootnode, NATs of the four RFC 4787 kinds, loss, reordering."""

from __future__ import annotations

import itertools

import pytest

from gochat import events as ev
from gochat.client.punching import MAX_REFLEXIVE
from gochat.client.reliable import MessageTooLong
from gochat.constants import PEER_RETRY_s, PUNCH_DEADLINE_s
from gochat.crypto.noise import dh, generate_private_key, public_key
from gochat.crypto.transport import REKEY_AFTER_TIME_s
from gochat.wire import control as wire
from gochat.wire import data as pw

from .simnet import FULL_CONE, PORT_RESTRICTED, RESTRICTED, SYMMETRIC, SimWorld

KINDS = [FULL_CONE, RESTRICTED, PORT_RESTRICTED, SYMMETRIC]
RELAYED_PAIRS = {(PORT_RESTRICTED, SYMMETRIC), (SYMMETRIC, PORT_RESTRICTED), (SYMMETRIC, SYMMETRIC)}


def connected(w, name, peer):
    return any(isinstance(e, ev.PeerConnected) and e.name == peer for e in w.events[name])


def texts(w, name, sender=None):
    return [
        e.text for e in w.events[name] if isinstance(e, ev.MessageReceived) and (sender is None or e.sender == sender)
    ]


def two_peers(kind_a=None, kind_b=None, relay=True, **world):
    w = SimWorld(**world)
    w.start_bootnode(relay=relay)
    na = w.add_nat("203.0.113.1", kind_a) if kind_a else None
    nb = w.add_nat("203.0.113.2", kind_b) if kind_b else None
    a = w.add_client("alice", "10.0.1.2" if na else "198.51.100.10", nat=na)
    b = w.add_client("bob", "10.0.2.2" if nb else "198.51.100.20", nat=nb)
    return w, a, b


@pytest.mark.parametrize("kind_a,kind_b", list(itertools.product(KINDS, KINDS)))
def test_nat_combinations(kind_a, kind_b):
    w, a, b = two_peers(kind_a, kind_b)
    took = w.run_until(lambda: connected(w, "alice", "bob") and connected(w, "bob", "alice"), limit=PUNCH_DEADLINE_s)
    paths = {e.path for name in ("alice", "bob") for e in w.kinds(name, ev.PeerConnected)}
    w.send(a, "hello bob")
    w.send(b, "hello alice")
    w.run_until(lambda: texts(w, "bob") and texts(w, "alice"), limit=5)
    assert texts(w, "bob") == ["hello bob"] and texts(w, "alice") == ["hello alice"]
    assert not w.kinds("alice", ev.PeerUnreachable) and not w.kinds("bob", ev.PeerUnreachable)
    if (kind_a, kind_b) in RELAYED_PAIRS:
        # No direct path exists: the bootnode relays, at once since NAT discovery told the
        # symmetric side (within a second or so), and the relay sees only ciphertext.
        assert paths == {"relay"}
        assert took < 2.0
        assert w.bootnode.stats["relay.forwarded"] > 0
        w.run_for(30)  # the direct probes never get through: the pair stays relayed, quietly
        assert not w.kinds("alice", ev.PathChanged) and not w.kinds("bob", ev.PathChanged)
        return
    assert paths == {"direct"}  # pairs that can punch stay direct
    assert took < 1.0  # one round trip to the bootnode, a punch round, a handshake
    if SYMMETRIC in (kind_a, kind_b):
        # the symmetric side was reached on a port the bootnode never saw: peer-reflexive
        sym_name, other = ("alice", "bob") if kind_a == SYMMETRIC else ("bob", "alice")
        announced = w.kinds(other, ev.Registered)[0]  # other's own; the sym peer's public port is in the bootnode
        endpoint = w.kinds(other, ev.PeerConnected)[0].endpoint
        sym_public = w.kinds(sym_name, ev.Registered)[0].public_endpoint
        assert endpoint != sym_public and endpoint.split(":")[0] == sym_public.split(":")[0]
        assert announced


def test_same_nat_without_hairpin_uses_local_endpoints():
    w = SimWorld()
    w.start_bootnode()
    nat = w.add_nat("203.0.113.1", PORT_RESTRICTED)
    w.add_client("alice", "10.0.1.2", nat=nat)
    w.add_client("bob", "10.0.1.3", nat=nat)
    w.run_until(lambda: connected(w, "alice", "bob") and connected(w, "bob", "alice"), limit=5)
    assert w.kinds("alice", ev.PeerConnected)[0].endpoint == "10.0.1.3:4545"


def test_lower_key_initiates_one_session_each_side():
    w, a, b = two_peers()
    w.run_until(lambda: connected(w, "alice", "bob") and connected(w, "bob", "alice"), limit=5)
    initiations = [d for (_, _, d) in w.sent if pw.is_peer_datagram(d) and d[2] == pw.PeerType.HANDSHAKE_INIT]
    assert len(initiations) == 1
    initiator = a if a.public_key < b.public_key else b
    assert initiations[0] in [d for (src, _, d) in w.sent if w.nodes.get(src) is initiator]
    assert len(w.kinds("alice", ev.PeerConnected)) == 1 and len(w.kinds("bob", ev.PeerConnected)) == 1


def test_wrong_passphrase_fails_handshake_on_both_sides_and_nothing_crosses():
    w = SimWorld()
    w.start_bootnode()
    a = w.add_client("alice", "198.51.100.10", passphrase="correct horse")
    b = w.add_client("bob", "198.51.100.20", passphrase="battery staple")
    w.run_until(lambda: w.kinds("alice", ev.HandshakeFailed) and w.kinds("bob", ev.HandshakeFailed), limit=15)
    assert "passphrase" in w.kinds("alice", ev.HandshakeFailed)[0].reason
    w.send(a, "secret")
    w.send(b, "secret")
    w.run_for(5)
    assert not texts(w, "alice") and not texts(w, "bob")
    assert not connected(w, "alice", "bob") and not connected(w, "bob", "alice")


def _established(loss=0.0, jitter=0.0, delay=0.005, seed=1):
    """Two connected peers; the link impairments apply from then on."""
    w, a, b = two_peers(seed=seed)
    w.run_until(lambda: connected(w, "alice", "bob") and connected(w, "bob", "alice"), limit=5)
    w.loss, w.jitter, w.delay = loss, jitter, delay
    return w, a, b


def _last_transport_to(w, node):
    dst = next(ep for ep, n in w.nodes.items() if n is node)
    return [
        (src, d) for (src, to, d) in w.sent if to == dst and pw.is_peer_datagram(d) and d[2] == pw.PeerType.TRANSPORT
    ][-1]


def test_replayed_and_tampered_packets_are_dropped():
    w, a, b = _established()
    w.send(a, "once")
    w.run_until(lambda: texts(w, "bob") == ["once"], limit=5)
    w.run_for(0.5)
    src, data = next(
        (s, d)
        for (s, to, d) in w.sent
        if w.nodes.get(to) is b
        and pw.is_peer_datagram(d)
        and d[2] == pw.PeerType.TRANSPORT
        and len(d) == 16 + 17 + len("once") + 16
    )
    b.receive_datagram(data, src, w.now)  # the captured packet again
    flipped = bytearray(data)
    flipped[-1] ^= 1
    b.receive_datagram(bytes(flipped), src, w.now)
    w.run_for(0.5)
    assert texts(w, "bob") == ["once"]
    assert b.counters["replayed"] == 1 and b.counters["tampered"] == 1


def test_packet_from_unknown_address_claiming_a_session_is_dropped():
    w, a, b = _established()
    w.send(a, "hello")
    w.run_until(lambda: texts(w, "bob") == ["hello"], limit=5)
    _src, data = _last_transport_to(w, b)
    peer = b.peers[a.public_key]
    path_before = peer.path
    forged = data[:16] + bytes(len(data) - 16)  # a valid index, garbage ciphertext
    b.receive_datagram(forged, ("192.0.2.99", 4444), w.now)
    b.receive_datagram(data, ("192.0.2.99", 4444), w.now)  # a replay from elsewhere
    assert b.counters["tampered"] == 1 and b.counters["replayed"] == 1
    assert peer.path == path_before
    w.send(a, "still here")
    w.run_until(lambda: texts(w, "bob") == ["hello", "still here"], limit=5)


def test_lossy_reordering_link_delivers_exactly_once_in_order():
    w, a, b = _established(loss=0.2, delay=0.05, jitter=0.04, seed=7)
    for i in range(100):
        w.send(a, f"a{i}")
        w.send(b, f"b{i}")
        w.run_for(0.01)
    w.run_until(lambda: len(texts(w, "bob")) == 100 and len(texts(w, "alice")) == 100, limit=60)
    assert texts(w, "bob") == [f"a{i}" for i in range(100)]
    assert texts(w, "alice") == [f"b{i}" for i in range(100)]
    assert not w.kinds("alice", ev.Undelivered) and not w.kinds("bob", ev.Undelivered)


def test_large_messages_fragment_and_oversized_are_refused():
    w, a, _b = _established(loss=0.1, seed=3)
    big = "x" * (64 * 1024)
    w.send(a, big)
    w.run_until(lambda: texts(w, "bob") == [big], limit=30)
    with pytest.raises(MessageTooLong):
        a.send_message(big + "y", w.now)


def test_bootnode_death_leaves_conversations_alone_and_restart_reregisters():
    w, a, b = _established()
    w.stop_bootnode()
    w.run_until(lambda: w.kinds("alice", ev.BootnodeLost) and w.kinds("bob", ev.BootnodeLost), limit=30)
    w.send(a, "still talking")
    w.run_until(lambda: texts(w, "bob") == ["still talking"], limit=5)
    w.run_for(30)  # long past the peer timeout: keepalives hold the session
    w.send(b, "yes")
    w.run_until(lambda: texts(w, "alice") == ["yes"], limit=5)
    w.start_bootnode()
    w.run_until(lambda: w.kinds("alice", ev.BootnodeRestored) and w.kinds("bob", ev.BootnodeRestored), limit=15)
    assert [e.again for e in w.kinds("alice", ev.Registered)] == [False, True]
    assert not w.kinds("alice", ev.PeerLeft) and not w.kinds("bob", ev.PeerLeft)
    assert len(w.kinds("alice", ev.PeerConnected)) == 1  # the session was never torn down


def test_quick_bootnode_restart_answers_unknown_token_with_reregistration():
    w, a, _b = _established()
    w.stop_bootnode()
    w.start_bootnode()  # lost its table; the next heartbeat gets UNKNOWN_SESSION
    w.run_until(lambda: len(w.kinds("alice", ev.Registered)) == 2 and len(w.kinds("bob", ev.Registered)) == 2, limit=15)
    assert w.kinds("alice", ev.BootnodeReregistering)[0].reason == "unknown_session"
    assert not w.kinds("alice", ev.BootnodeLost)
    w.send(a, "after")
    w.run_until(lambda: texts(w, "bob") == ["after"], limit=5)
    assert w.bootnode.table.room_size(a.room_id) == 2


def test_bye_is_immediate_and_vanished_peer_times_out():
    w = SimWorld()
    w.start_bootnode(timeout=15.0)
    a = w.add_client("alice", "198.51.100.10")
    w.add_client("bob", "198.51.100.20")
    c = w.add_client("carol", "198.51.100.30")
    w.run_until(
        lambda: all(connected(w, x, y) for x in ("alice", "bob", "carol") for y in ("alice", "bob", "carol") if x != y),
        limit=5,
    )
    c.quit(w.now)
    w._drain(c, ("198.51.100.30", 4545))
    w.run_until(lambda: w.kinds("alice", ev.PeerLeft), limit=1)  # at once, by the bye
    assert w.kinds("alice", ev.PeerLeft)[0] == ev.PeerLeft("carol", c.fingerprint, "quit")
    w.run_until(lambda: c.finished, limit=2)
    w.remove(("198.51.100.20", 4545))  # bob vanishes without a word
    t = w.run_until(lambda: w.kinds("alice", ev.PeerLeft)[1:], limit=30)
    assert w.kinds("alice", ev.PeerLeft)[1].name == "bob"
    assert w.kinds("alice", ev.PeerLeft)[1].reason == "timed_out"
    assert t <= 15.5
    w.send(a, "anyone?")
    assert len(w.kinds("alice", ev.PeerLeft)) == 2 and len(w.kinds("alice", ev.Error)) == 0


@pytest.mark.parametrize("alice_initiates", [True, False])
def test_restarted_peer_with_the_same_key_reconnects_and_messages_flow(alice_initiates):
    w, a, b = _connected_pair(alice_initiates)
    w.send(a, "before")
    w.send(b, "before")
    w.run_until(lambda: texts(w, "bob") == ["before"] and texts(w, "alice") == ["before"], limit=5)
    w.remove(("198.51.100.20", 4545))
    b2 = w.add_client("bob2", "198.51.100.20", key=b.static_private)  # same identity, new process
    w.run_until(lambda: connected(w, "bob2", "alice"), limit=10)
    w.send(b2, "after restart")
    w.send(a, "welcome back")
    w.run_until(
        lambda: texts(w, "alice", "bob2") == ["after restart"] and texts(w, "bob2") == ["welcome back"], limit=10
    )
    assert not w.kinds("alice", ev.Undelivered)  # typed as bob2 connected: it waited for his new epoch


def test_rekey_keeps_the_conversation_going():
    w, a, b = _established()
    first = a.peers[b.public_key].current
    w.run_for(REKEY_AFTER_TIME_s + 5)
    assert a.peers[b.public_key].current is not first and b.peers[a.public_key].current is not None
    for i in range(5):
        w.send(a, f"m{i}")
        w.send(b, f"n{i}")
    w.run_until(lambda: len(texts(w, "bob")) == 5 and len(texts(w, "alice")) == 5, limit=5)
    w.run_for(REKEY_AFTER_TIME_s * 2)  # past the keys' hard limit: rekeying kept them fresh
    w.send(a, "late")
    w.run_until(lambda: texts(w, "bob")[-1:] == ["late"], limit=5)
    assert len(w.kinds("alice", ev.PeerConnected)) == 1 and not w.kinds("alice", ev.PeerLeft)


def test_undelivered_after_give_up_names_the_peer():
    w, a, _b = _established()
    w.filter = lambda src, dst, data: not (dst[0] == "198.51.100.20" and pw.is_peer_datagram(data))
    w.send(a, "into the void")
    w.run_until(lambda: w.kinds("alice", ev.Undelivered), limit=40)
    assert w.kinds("alice", ev.Undelivered)[0].to == ("bob",)
    assert w.kinds("alice", ev.Undelivered)[0].text == "into the void"


def test_garbage_datagrams_are_counted_not_raised():
    w, a, b = _established()
    for junk in [
        b"",
        b"\x47",
        b"\x47\x01\x20\x00" + b"x" * 10,
        b"\x47\x01\x23\x00" + bytes(30),
        b"\x47\x01\x21\x00" + bytes(200),
        b"\x47\x01\x05\x00" + bytes(12),
        b"\x00" * 1300,
    ]:
        a.receive_datagram(junk, ("198.51.100.20", 4545), w.now)
        a.receive_datagram(junk, w.bootnode_addr, w.now)
    assert sum(a.counters.values()) >= 14
    w.send(b, "fine")
    w.run_until(lambda: texts(w, "alice") == ["fine"], limit=5)


@pytest.mark.parametrize("seed", range(6))
def test_burst_over_a_slow_lossy_path_gives_up_nothing(seed):
    # 100 messages each way at once over a ~300 ms RTT path losing 20% each way: every
    # fragment is retransmitted at some point, so recovery must not depend on fresh RTT
    # samples (backoff ends on an ACK of new data; RACK resends what later ACKs show lost).
    w, a, b = _established(loss=0.2, delay=0.13, jitter=0.05, seed=seed)
    for i in range(100):
        w.send(a, f"a{i}")
        w.send(b, f"b{i}")
    w.run_until(lambda: len(texts(w, "bob")) == 100 and len(texts(w, "alice")) == 100, limit=60)
    assert texts(w, "bob") == [f"a{i}" for i in range(100)]
    assert texts(w, "alice") == [f"b{i}" for i in range(100)]
    assert not w.kinds("alice", ev.Undelivered) and not w.kinds("bob", ev.Undelivered)


def test_punch_schedule_and_deadline():
    w, _a, _b = two_peers(PORT_RESTRICTED, SYMMETRIC, relay=False)
    w.run_until(lambda: w.kinds("alice", ev.PeerUnreachable), limit=PUNCH_DEADLINE_s + 2)
    a_ip = "10.0.1.2"
    punches = [
        (t, dst)
        for t, (src, dst, d) in zip(w.sent_times, w.sent, strict=True)
        if src[0] == a_ip and pw.is_peer_datagram(d) and d[2] == pw.PeerType.PUNCH
    ]
    host, port = w.kinds("bob", ev.Registered)[0].public_endpoint.split(":")
    announced = {(host, int(port))}  # bob's public endpoint
    # bob's LAN endpoint (announced too) is behind another public address: never punched
    assert not [dst for _, dst in punches if dst == ("10.0.2.2", 4545)]
    start = punches[0][0]
    scheduled = [(t, dst) for t, dst in punches if dst in announced]
    rounds = sorted({round(t - start, 3) for t, _ in scheduled})
    assert rounds == [0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    assert len(scheduled) == len(rounds)  # every round goes to every candidate
    # bob's punches came from ports his symmetric NAT opened towards alice (her NAT lets
    # none of them in: it filters). Nothing else was punched.
    assert {dst for _, dst in punches} <= announced
    unreachable_at = next(
        t for t, e in zip(w.event_times["alice"], w.events["alice"], strict=True) if isinstance(e, ev.PeerUnreachable)
    )
    assert unreachable_at - start == pytest.approx(PUNCH_DEADLINE_s, abs=0.01)


def test_nat_rebinding_moves_the_path_and_says_so():
    w, a, b = two_peers(FULL_CONE, FULL_CONE)
    w.run_until(lambda: connected(w, "alice", "bob") and connected(w, "bob", "alice"), limit=5)
    nat_b = w.nats["203.0.113.2"]
    nat_b._map.clear()  # bob's NAT forgets its mappings: new ports from now on
    nat_b._next_port = 50000
    w.send(b, "after rebinding")
    w.run_until(lambda: texts(w, "alice") == ["after rebinding"], limit=5)
    (moved,) = w.kinds("alice", ev.PathChanged)
    assert moved.name == "bob" and moved.endpoint == "203.0.113.2:50000"
    assert moved.previous_endpoint != moved.endpoint
    w.send(a, "reply")
    w.run_until(lambda: texts(w, "bob") == ["reply"], limit=5)  # the answer goes to the new port


def test_initiation_flood_is_rate_limited_before_any_crypto():
    w, a, b = _established()
    src, init = next((s, d) for (s, to, d) in w.sent if pw.is_peer_datagram(d) and d[2] == pw.PeerType.HANDSHAKE_INIT)
    target = a if w.nodes.get(src) is b else b
    for _ in range(100):
        target.receive_datagram(init, ("192.0.2.66", 1234), w.now)
    assert target.counters["handshake_rate_limited"] == 60  # the burst of 40 went through
    assert target.counters["replayed_initiation"] + target.counters["init_from_responder"] <= 40
    w.send(a, "unharmed")
    w.run_until(lambda: texts(w, "bob") == ["unharmed"], limit=5)


def test_an_outage_longer_than_the_timeout_heals_and_queued_messages_arrive():
    w, a, b = _established()
    w.filter = lambda src, dst, data: not pw.is_peer_datagram(data)  # the direct path goes dark
    w.run_for(16)  # past the 15 s peer timeout: both look again
    w.send(a, "sent during the outage")
    w.run_for(2)
    w.filter = None
    w.run_until(lambda: texts(w, "bob") == ["sent during the outage"], limit=10)
    assert not w.kinds("alice", ev.PeerLeft) and not w.kinds("bob", ev.PeerLeft)
    assert len(w.kinds("alice", ev.PeerConnected)) == 2  # connected again
    w.send(b, "back")
    w.run_until(lambda: texts(w, "alice") == ["back"], limit=5)


def test_a_silent_peer_without_a_bootnode_is_gone_after_one_more_punch_deadline():
    w, _a, _b = _established()
    w.stop_bootnode()
    w.remove(("198.51.100.20", 4545))  # bob vanishes; nobody will announce it
    took = w.run_until(lambda: w.kinds("alice", ev.PeerLeft), limit=40)
    assert w.kinds("alice", ev.PeerLeft)[0].reason == "timed_out"
    assert 15 + PUNCH_DEADLINE_s - 3.5 <= took <= 15 + PUNCH_DEADLINE_s + 0.5
    assert not w.kinds("alice", ev.PeerUnreachable)


def test_a_message_in_flight_when_the_path_goes_dark_arrives_after_it_heals():
    w, a, _b = _established()
    w.filter = lambda src, dst, data: not pw.is_peer_datagram(data)
    w.send(a, "in flight when the path went dark")  # sent, never acknowledged
    w.run_for(17)  # silence: both punch again, nothing is due meanwhile
    w.filter = None
    w.run_until(lambda: texts(w, "bob") == ["in flight when the path went dark"], limit=10)
    assert not w.kinds("alice", ev.Undelivered)


def test_a_message_typed_while_the_peer_connects_goes_out_when_the_session_is_up():
    w, a, _b = two_peers(PORT_RESTRICTED, PORT_RESTRICTED, delay=0.02)
    w.run_until(lambda: "bob" in [p.name for p in a.peers.values()], limit=5)
    assert not connected(w, "alice", "bob")
    w.send(a, "early bird")  # bob is known but not yet reachable
    w.run_until(lambda: connected(w, "alice", "bob"), limit=5)
    connected_at = w.event_times["alice"][
        next(i for i, e in enumerate(w.events["alice"]) if isinstance(e, ev.PeerConnected))
    ]
    w.run_until(lambda: texts(w, "bob") == ["early bird"], limit=5)
    assert w.now - connected_at < 0.1  # with the session, not at the next keepalive


def test_a_live_session_outlasts_the_bootnode_saying_the_peer_left():
    """B's link to the bootnode fails while the direct path works: the bootnode expires B
    and tells the room, but A keeps the authenticated session, and nothing is lost."""
    w, a, _b = _established()
    bob_addr = ("198.51.100.20", 4545)
    w.filter = lambda src, dst, data: not (bob_addr in (src, dst) and w.bootnode_addr in (src, dst))
    w.run_for(20)  # the bootnode times bob out and announces it
    assert a.counters["peer_left_but_alive"] >= 1
    assert not w.kinds("alice", ev.PeerLeft)
    w.filter = None
    w.run_until(lambda: len(w.kinds("bob", ev.Registered)) == 2, limit=30)
    for i in range(30):
        w.send(a, f"after {i}")
    w.run_until(lambda: len(texts(w, "bob", "alice")) == 30, limit=10)
    assert texts(w, "bob", "alice") == [f"after {i}" for i in range(30)]
    assert not w.kinds("alice", ev.Undelivered)


def test_a_forged_peer_left_does_not_drop_a_connected_peer_but_silence_does():
    w, a, _b = _established()
    (peer,) = a.peers.values()
    tag = a.link.room_tag
    forged = wire.encode(wire.PeerLeft(tag, ((peer.key, wire.LeaveReason.DISCONNECTED),)))
    a.receive_datagram(forged, w.bootnode_addr, w.now)
    assert peer.key in a.peers and not w.kinds("alice", ev.PeerLeft)
    w.remove(("198.51.100.20", 4545))  # now bob really vanishes
    w.run_until(lambda: w.kinds("alice", ev.PeerLeft), limit=40)
    assert w.kinds("alice", ev.PeerLeft)[0].reason in ("timed_out", "disconnected")


def test_a_peer_list_that_overtakes_the_registered_reply_is_kept():
    w = SimWorld(delay=0.01)
    w.start_bootnode()
    w.add_client("alice", "198.51.100.10")
    w.run_for(1)
    b = w.add_client("bob", "198.51.100.20")
    # Hold bob's REGISTERED back so that the peer list arrives first.
    held = []

    def hold_registered(src, dst, data):
        if dst[0] == "198.51.100.20" and src == w.bootnode_addr and len(data) > 2 and data[2] == 0x03 and not held:
            held.append((src, dst, data))
            return False
        return True

    w.filter = hold_registered
    w.run_until(lambda: held, limit=5)
    w.filter = None
    w.run_for(0.05)  # the peer list arrives without its REGISTERED
    src, _dst, data = held[0]
    b.receive_datagram(data, src, w.now)
    w.run_until(lambda: connected(w, "bob", "alice") and connected(w, "alice", "bob"), limit=5)
    assert b.counters["bad_room_tag"] == 0


@pytest.mark.slow  # 255 members simulated for a minute
def test_fake_members_that_never_answer_make_room_for_a_real_newcomer():
    from gochat.constants import MAX_PEERS_PER_CLIENT

    w = SimWorld()
    w.start_bootnode(timeout=60.0, interval=10.0, room_size=MAX_PEERS_PER_CLIENT + 10)
    a = w.add_client("alice", "198.51.100.10")
    w.run_for(1)
    for i in range(MAX_PEERS_PER_CLIENT):  # throwaway keys from addresses that never answer
        w.add_silent_member(f"fake{i}", (f"198.18.{i // 200}.{i % 200 + 1}", 4545))
    w.run_for(2)
    assert len(a.peers) == MAX_PEERS_PER_CLIENT
    w.send(a, "hello room")
    w.add_client("bob", "198.51.100.20")
    w.run_until(lambda: connected(w, "alice", "bob"), limit=20)  # long before the fakes expire
    w.send(a, "hello bob")
    w.run_until(lambda: "hello bob" in texts(w, "bob", "alice"), limit=5)
    w.run_for(10)
    reports = [u for u in w.kinds("alice", ev.Undelivered) if u.text == "hello room"]
    assert 1 <= len(reports) <= 2  # one line naming the fakes, not one per fake
    assert sum(len(u.to) for u in reports) == MAX_PEERS_PER_CLIENT
    assert all(u.reason == "unreachable" and "bob" not in u.to for u in reports)


def test_a_lost_introduction_is_made_by_the_newcomers_punch():
    """The bootnode's PEER_JOINED to alice is lost; bob got alice in his peer list and
    punches her: his authenticated punch introduces him, and they connect."""
    w = SimWorld()
    w.start_bootnode()
    a = w.add_client("alice", "198.51.100.10")
    w.run_for(1)
    alice = ("198.51.100.10", 4545)
    w.filter = lambda src, dst, data: not (src == w.bootnode_addr and dst == alice and data[2] == 0x0B)
    w.add_client("bob", "198.51.100.20")
    w.run_until(lambda: connected(w, "alice", "bob") and connected(w, "bob", "alice"), limit=5)
    assert a.counters["introduced_by_punch"] == 1
    assert [e.name for e in w.kinds("alice", ev.PeerJoined)] == ["bob"]  # shown once, by its proved name
    w.filter = None
    w.send(a, "found you")
    w.run_until(lambda: texts(w, "bob", "alice") == ["found you"], limit=5)


def test_a_punch_from_a_stranger_key_with_a_bad_mac_introduces_nobody():
    w, a, _ = _established()
    stranger = generate_private_key()
    forged = pw.encode_punch(b"\x00" * 32, public_key(stranger), b"\x01" * 8, 1)  # MAC under a wrong key
    a.receive_datagram(forged, ("203.0.113.66", 5000), w.now)
    assert public_key(stranger) not in a.peers and a.counters["introduced_by_punch"] == 0


def _keys_with(alice_initiates: bool) -> tuple[bytes, bytes]:
    """Two private keys ordered so that alice initiates, or bob does (the lower public key)."""
    x, y = generate_private_key(), generate_private_key()
    lower, higher = (x, y) if public_key(x) < public_key(y) else (y, x)
    return (lower, higher) if alice_initiates else (higher, lower)


def _connected_pair(alice_initiates: bool) -> tuple[SimWorld, object, object]:
    """alice and bob on public addresses, connected, the given one initiating."""
    ka, kb = _keys_with(alice_initiates)
    w = SimWorld()
    w.start_bootnode()
    a = w.add_client("alice", "198.51.100.10", key=ka)
    b = w.add_client("bob", "198.51.100.20", key=kb)
    w.run_until(lambda: connected(w, "alice", "bob") and connected(w, "bob", "alice"), limit=5)
    return w, a, b


def _drop_peer(client, key, now):
    """What a room that takes the bootnode's PEER_LEFT at its word does: it drops the Peer
    (and builds a new one when the peer is announced again)."""
    peer = client.peers[key]
    peer.leave("disconnected")
    client._forget(peer, now)


@pytest.mark.parametrize("alice_initiates", [True, False])
def test_a_peer_dropped_and_met_again_gets_every_message_or_a_report(alice_initiates):
    """B's path to the bootnode fails for 20 s while the direct path works; the bootnode
    expires B and tells the room, and A drops its Peer for B. When B re-registers, A
    builds a new Peer, whose sequence numbers and handshake numbers start over while B
    remembers the old ones: the new epoch in the handshake makes B start over too."""
    w, a, b = _connected_pair(alice_initiates)
    for i in range(5):
        w.send(a, f"before {i}")
        w.send(b, f"before {i}")
    w.run_until(lambda: len(texts(w, "bob")) == 5 and len(texts(w, "alice")) == 5, limit=5)
    w.cut_bootnode_path(b)
    w.run_for(20)  # the bootnode times bob out and announces it
    _drop_peer(a, b.public_key, w.now)
    w.restore_bootnode_path(b)
    w.run_until(lambda: len(w.kinds("bob", ev.Registered)) == 2 and b.public_key in a.peers, limit=30)
    w.run_until(lambda: len(w.kinds("alice", ev.PeerConnected)) == 2, limit=10)
    for i in range(30):
        w.send(a, f"after {i}")
        w.send(b, f"after {i}")
    w.run_for(40)  # past the give-up: whatever did not arrive is reported by now
    got_bob = texts(w, "bob", "alice")[5:]
    got_alice = texts(w, "alice", "bob")[5:]
    assert got_bob == [f"after {i}" for i in range(30)]
    assert got_alice == [f"after {i}" for i in range(30)]
    assert not w.kinds("alice", ev.Undelivered) and not w.kinds("bob", ev.Undelivered)
    if alice_initiates:  # bob retired alice's old epoch: its initiations are replays now
        old = next(d for (s, _, d) in w.sent if pw.is_peer_datagram(d) and d[2] == pw.PeerType.HANDSHAKE_INIT)
        before = b.counters["replayed_initiation"]
        b.receive_datagram(old, ("198.51.100.10", 4545), w.now)
        assert b.counters["replayed_initiation"] == before + 1


def _record_undelivered(client):
    """Every give-up the client's peers report to it: (peer name, ref, text, reason)."""
    reports = []
    report = client.undelivered

    def undelivered(peer, ref, text, reason):
        reports.append((peer.name, ref, text, reason))
        report(peer, ref, text, reason)

    client.undelivered = undelivered
    return reports


def test_give_ups_are_reported_to_the_room_with_the_message_ref_and_why():
    """A Peer does not report undelivered messages itself: it tells its room which of the
    room's messages (by the room's reference) it gave up on and why, so that the room can
    report each message once, naming every peer that did not get it."""
    w, a, b = _established()
    reports = _record_undelivered(a)
    peer = a.peers[b.public_key]
    w.filter = lambda src, dst, data: not (dst[0] == "198.51.100.20" and pw.is_peer_datagram(data))
    peer.send_message("into the void", w.now, ref=("msg", 1))
    w.run_until(lambda: reports, limit=40)
    assert reports == [("bob", ("msg", 1), "into the void", "timeout")]  # bob may still have it
    reports.clear()
    peer.send_message("as bob leaves", w.now, ref=("msg", 2))
    b.quit(w.now)
    w.filter = None
    w._drain(b, w.endpoint_of(b))
    w.run_until(lambda: reports, limit=5)
    assert reports == [("bob", ("msg", 2), "as bob leaves", "peer_gone")]


@pytest.mark.parametrize(
    "setup,reason", [("symmetric", "unreachable"), ("passphrase", "failed")], ids=["unreachable", "failed"]
)
def test_messages_for_a_peer_that_never_connects_are_reported_with_why(setup, reason):
    if setup == "symmetric":
        w, a, b = two_peers(PORT_RESTRICTED, SYMMETRIC, relay=False)
    else:
        w = SimWorld()
        w.start_bootnode()
        a = w.add_client("alice", "198.51.100.10", passphrase="correct horse")
        b = w.add_client("bob", "198.51.100.20", passphrase="battery staple")
    reports = _record_undelivered(a)
    w.run_until(lambda: b.public_key in a.peers, limit=5)
    a.peers[b.public_key].send_message("waiting for bob", w.now, ref=7)
    w.run_until(lambda: reports, limit=20)
    assert reports == [("bob", 7, "waiting for bob", reason)]


def test_a_peer_is_named_by_its_handshake_not_by_the_bootnode():
    """The bootnode announces bob as "mallory" (its word is a hint); bob's authenticated
    handshake says "bob": once connected, alice shows bob's own name, and her room is
    told that the two differ."""
    w = SimWorld()
    w.start_bootnode()
    a = w.add_client("alice", "198.51.100.10")
    b = w.add_client("bob", "198.51.100.20")
    b.link.card = wire.encode_card(b.public_key, "mallory", [("198.51.100.20", 4545)])  # what the bootnode tells
    told = []
    a.name_authenticated = lambda peer, announced, authenticated: told.append((announced, authenticated))
    w.run_until(lambda: w.kinds("alice", ev.PeerJoined), limit=5)
    peer = a.peers[b.public_key]
    assert peer.name == "mallory"  # announced, not yet authenticated
    w.run_until(lambda: connected(w, "alice", "bob") and connected(w, "bob", "alice"), limit=5)
    assert peer.name == "bob" and told == [("mallory", "bob")]
    w.send(b, "it is me")
    w.run_until(lambda: texts(w, "alice", "bob") == ["it is me"], limit=5)
    assert b.peers[a.public_key].name == "alice"  # the same on the other side, where they agree


@pytest.mark.parametrize("alice_initiates", [True, False])
def test_a_message_whose_acks_were_lost_is_not_shown_twice_when_the_peer_starts_over(alice_initiates):
    """Alice shows bob's message but her ACKs are lost; then she drops her record of bob
    and makes a new one (a new epoch). Bob cannot know whether her old record showed the
    message: he reports it undelivered rather than send it to her new one, and what he
    types from then on arrives."""
    w, a, b = _connected_pair(alice_initiates)
    reports = _record_undelivered(b)
    alice = w.endpoint_of(a)
    w.filter = lambda src, dst, data: not (src == alice and pw.is_peer_datagram(data))  # her ACKs are lost
    w.send(b, "once")
    w.run_until(lambda: texts(w, "alice", "bob") == ["once"], limit=5)
    w.run_for(1)
    _drop_peer(a, b.public_key, w.now)
    w.filter = None
    w.run_until(lambda: len(w.kinds("alice", ev.PeerConnected)) == 2 and reports, limit=40)
    w.send(b, "after")
    w.run_until(lambda: "after" in texts(w, "alice", "bob"), limit=10)
    assert texts(w, "alice", "bob") == ["once", "after"]
    assert reports == [("alice", 0, "once", "peer_gone")]  # she may have it: she did


def test_an_initiation_flood_from_the_peers_own_ip_does_not_starve_its_rekey():
    """Someone behind bob's IP floods alice with initiations, timed so that her per-IP
    bucket is always empty when bob's own (rekey) initiation arrives: the session must
    still rekey, and live past its first keys' 180 s."""
    ka, kb = _keys_with(alice_initiates=False)  # bob initiates the rekeys
    w = SimWorld()
    w.start_bootnode()
    a = w.add_client("alice", "198.51.100.10", key=ka)
    w.add_client("bob", "198.51.100.20", key=kb)
    w.run_until(lambda: connected(w, "alice", "bob") and connected(w, "bob", "alice"), limit=5)
    peer = next(iter(a.peers.values()))
    first = peer.current
    junk = pw.encode_handshake_init(7, bytes(pw.NOISE_INIT_MIN_bytes))  # fails after its X25519
    alice = ("198.51.100.10", 4545)

    def flood_ahead_of_bobs_initiations(src, dst, data):
        if dst == alice and data[2] == pw.PeerType.HANDSHAKE_INIT:
            for _ in range(50):  # from bob's IP, another port, just before his arrives
                a.receive_datagram(junk, ("198.51.100.20", 9999), w.now)
        return True

    w.filter = flood_ahead_of_bobs_initiations
    w.run_for(REKEY_AFTER_TIME_s + 70)  # past the first keys' 180 s reject limit
    assert a.counters["handshake_rate_limited"] >= 10  # the flood was limited...
    assert peer.current is not first and peer.key in a.peers  # ...and bob's rekey got through
    assert not w.kinds("alice", ev.PeerLeft)
    w.send(a, "still here")
    w.run_until(lambda: texts(w, "bob", "alice") == ["still here"], limit=5)


# --- punches: freshness, peer-reflexive budgets, retries --------------------------------


def _punches(w, src_ip=None, dst_ip=None, after=0.0):
    return [
        (t, src, dst, d)
        for t, (src, dst, d) in zip(w.sent_times, w.sent, strict=True)
        if t >= after
        and pw.is_peer_datagram(d)
        and d[2] == pw.PeerType.PUNCH
        and (src_ip is None or src[0] == src_ip)
        and (dst_ip is None or dst[0] == dst_ip)
    ]


@pytest.mark.parametrize("alice_initiates", [True, False])
def test_a_captured_punch_replayed_from_elsewhere_gets_nothing_and_restarts_nothing(alice_initiates):
    """A request bob sent while they punched, replayed once they are connected, from a
    stranger's address and from bob's own: alice answers neither and starts no
    handshake (before punches had a clock, she answered both and, as the initiator,
    sent the stranger a handshake initiation)."""
    w, a, b = _connected_pair(alice_initiates)
    _, src, _, captured = next(p for p in _punches(w, "198.51.100.20", "198.51.100.10") if not p[3][3])
    w.run_for(20)  # long past the freshness window
    since = w.now
    stranger = ("203.0.113.66", 5000)
    for source in (stranger, src):
        w.inject(source, ("198.51.100.10", 4545), captured)
    w.run_for(2)
    assert a.counters["stale_punch"] == 2
    assert not [d for t, (s, to, d) in zip(w.sent_times, w.sent, strict=True) if t >= since and to == stranger]
    initiations = [
        d
        for t, (s, _, d) in zip(w.sent_times, w.sent, strict=True)
        if t >= since and s[0] == "198.51.100.10" and pw.is_peer_datagram(d) and d[2] == pw.PeerType.HANDSHAKE_INIT
    ]
    assert initiations == []
    w.send(b, "still one session")
    w.run_until(lambda: texts(w, "alice", "bob") == ["still one session"], limit=5)


@pytest.mark.parametrize("victim_is_member", [False, True])
def test_a_member_cannot_make_a_peer_punch_a_victim(victim_is_member):
    """Mallory is a member: she can make valid punches towards alice, and sends them
    with a victim's address as source, a new port each time, for a minute. Alice must
    send the victim no more than mallory sent in its name (before: every port became
    a candidate punched every round, 10x in 10 s, 38.6x over 30 s)."""
    w = SimWorld()
    w.start_bootnode()
    a = w.add_client("alice", "198.51.100.10")
    mallory = w.add_silent_member("mallory", ("198.51.100.30", 4545))
    if victim_is_member:  # alice is connected to the victim: it is a validated address of another peer
        w.add_client("victim", "192.0.2.99")
    w.run_for(1)
    key = pw.punch_key(dh(mallory.static_private, a.public_key))
    mallory_key = public_key(mallory.static_private)
    sent_bytes = 0
    since = w.now
    for i in range(600):
        punch = pw.encode_punch(key, mallory_key, i.to_bytes(8, "big"), int(w.now * 1000) + i)
        w.inject(("192.0.2.99", 10_000 + i), ("198.51.100.10", 4545), punch)
        sent_bytes += len(punch)
        w.run_for(0.1)
    w.run_for(60)
    to_victim = sum(len(d) for t, _, dst, d in _punches(w, "198.51.100.10", "192.0.2.99", since) if dst[1] >= 10_000)
    assert 0 < to_victim <= sent_bytes
    peer = a.peers[mallory_key]
    assert len([c for c in peer.punching.candidates if c[0] == "192.0.2.99"]) <= MAX_REFLEXIVE


def test_peers_whose_handshake_failed_look_again_and_connect():
    """Handshakes lost for longer than the handshake deadline (a NAT that rebound
    mid-handshake, a bad minute): both sides report it once and look again later, so
    the two meet when the path is good (before: FAILED for as long as they lived)."""
    w = SimWorld()
    w.start_bootnode()
    a = w.add_client("alice", "198.51.100.10")
    w.run_for(1)
    handshakes = (pw.PeerType.HANDSHAKE_INIT, pw.PeerType.HANDSHAKE_RESP)
    w.filter = lambda src, dst, data: not (pw.is_peer_datagram(data) and data[2] in handshakes)
    b = w.add_client("bob", "198.51.100.20")
    w.run_until(lambda: w.kinds("alice", ev.HandshakeFailed) and w.kinds("bob", ev.HandshakeFailed), limit=20)
    w.run_for(PEER_RETRY_s + 12)  # a retry fails the same way (handshake deadline 10 s): not told again
    assert a.peers[b.public_key].failures >= 2
    assert len(w.kinds("alice", ev.HandshakeFailed)) == len(w.kinds("bob", ev.HandshakeFailed)) == 1
    w.filter = None
    w.run_until(lambda: connected(w, "alice", "bob") and connected(w, "bob", "alice"), limit=4 * PEER_RETRY_s + 12)
    w.send(a, "there you are")
    w.run_until(lambda: texts(w, "bob", "alice") == ["there you are"], limit=5)


def test_an_unreachable_peer_is_looked_for_again_quietly_with_backoff():
    w, _a, _b = two_peers(PORT_RESTRICTED, SYMMETRIC, relay=False)
    w.run_for(PUNCH_DEADLINE_s + 4 + 8 + 16 + 32 + 60 + 5 * PUNCH_DEADLINE_s + 5)
    assert len(w.kinds("alice", ev.PeerUnreachable)) == len(w.kinds("bob", ev.PeerUnreachable)) == 1
    series = []  # the starts of alice's punch series towards bob's public address
    for t, _, _, _ in _punches(w, "10.0.1.2", "203.0.113.2"):
        if not series or t - series[-1] > PUNCH_DEADLINE_s:
            series.append(t)
    gaps = [round(b - a - PUNCH_DEADLINE_s) for a, b in itertools.pairwise(series)]
    assert gaps == [4, 8, 16, 32, 60]


@pytest.mark.parametrize("alice_initiates", [True, False])
def test_a_nat_that_forgets_its_mappings_costs_a_reconnection_not_the_peer(alice_initiates):
    """Alice's full-cone NAT forgets every mapping (a reboot); bob is behind a
    port-restricted one and lets in only what he sent to. The old path is dead both ways,
    and bob can only punch alice's new mapping once the bootnode, which she proves it
    to, announces it. They find each other again and the chat goes on (before: both
    timed out and never met again)."""
    ka, kb = _keys_with(alice_initiates)
    w = SimWorld()
    w.start_bootnode()
    nat_a, nat_b = w.add_nat("203.0.113.1", FULL_CONE), w.add_nat("203.0.113.2", PORT_RESTRICTED)
    a = w.add_client("alice", "10.0.1.2", nat=nat_a, key=ka)
    b = w.add_client("bob", "10.0.2.2", nat=nat_b, key=kb)
    w.run_until(lambda: connected(w, "alice", "bob") and connected(w, "bob", "alice"), limit=5)
    nat_a.rebind()
    w.send(a, "after the reboot")
    w.run_until(lambda: texts(w, "bob", "alice") == ["after the reboot"], limit=60)
    w.send(b, "welcome back")
    w.run_until(lambda: texts(w, "alice", "bob") == ["welcome back"], limit=10)
    assert a.peers[b.public_key].state.value == b.peers[a.public_key].state.value == "connected"
    assert not w.kinds("alice", ev.Undelivered) and not w.kinds("bob", ev.Undelivered)


def test_a_bootnode_name_with_several_addresses_is_tried_address_by_address():
    """`--bootnode localhost:PORT` resolves to 127.0.0.1 and ::1; the bootnode may listen on
    only one of them. Registration goes to the next address when one stays silent, and
    the one that answered is the bootnode from then on (its announcements are taken)."""
    w = SimWorld()
    w.start_bootnode()
    silent = ("192.0.2.250", 9595)  # the name's first address: nobody there
    a = w.add_client("alice", "198.51.100.10", bootnode=silent, bootnode_alternatives=[w.bootnode_addr])
    w.add_client("bob", "198.51.100.20")
    took = w.run_until(lambda: connected(w, "alice", "bob") and connected(w, "bob", "alice"), limit=10)
    assert 1.0 <= took < 2.0  # one unanswered try (1 s), then the second address answered
    assert a.bootnode == w.bootnode_addr and a.link.addresses == [silent, w.bootnode_addr]
    assert w.kinds("alice", ev.BootnodeUnanswered)[0].bootnode == "192.0.2.250:9595"


@pytest.mark.parametrize("alice_initiates", [True, False])
def test_a_rename_is_proved_in_a_new_handshake_and_shown_as_a_rename(alice_initiates):
    """/nick: the bootnode announces the new name (a hint) and each session proves it in a
    new handshake, whichever side initiates; the others see one rename, no mismatch
    warning, and the chat goes on under the new name without restarting anything."""
    w, a, b = _connected_pair(alice_initiates)
    w.send(a, "before")
    w.run_until(lambda: texts(w, "bob") == ["before"], limit=5)
    a.rename("alicia", w.now)
    w.run_until(lambda: w.kinds("bob", ev.PeerRenamed), limit=5)
    assert [(e.name, e.previous) for e in w.kinds("bob", ev.PeerRenamed)] == [("alicia", "alice")]
    w.run_for(10)  # past the wait for a proof: nothing more to say
    assert not w.kinds("bob", ev.PeerNamed) and len(w.kinds("bob", ev.PeerRenamed)) == 1
    w.send(a, "after")
    w.run_until(lambda: texts(w, "bob", "alicia") == ["after"], limit=5)
    assert b.peers[a.public_key].name == "alicia" and not w.kinds("bob", ev.Undelivered)
    assert len(w.kinds("bob", ev.PeerConnected)) == 1  # the same session, rekeyed


def test_a_name_the_bootnode_announces_but_no_handshake_proves_is_reported():
    """A bootnode (or anyone who could make it) announcing another name for a connected
    peer: after a grace period for the proof, the mismatch is shown; the proved name stays."""
    w, a, b = _established()
    entry = wire.PeerEntry(a.public_key, "mallory", (("198.51.100.10", 4545),))
    b._introduce(entry, w.now)  # what a PEER_JOINED with that entry does
    w.run_for(2)
    assert not w.kinds("bob", ev.PeerNamed)
    w.run_for(5)
    (named,) = w.kinds("bob", ev.PeerNamed)
    assert (named.name, named.announced) == ("alice", "mallory") and b.peers[a.public_key].name == "alice"


def test_a_lost_introduction_behind_a_filtering_nat_is_found_by_the_room_digest():
    """Bob's NAT lets in only what he sent to, and the bootnode's PEER_JOINED telling him
    of alice is lost: her punches die at his NAT, and he never punches her. The digest
    in his heartbeat acknowledgements shows a member he does not know; he asks for the
    list again and they meet (before: alice unreachable, bob unaware, for good)."""
    w = SimWorld()
    w.start_bootnode()
    nat_a, nat_b = w.add_nat("203.0.113.1", PORT_RESTRICTED), w.add_nat("203.0.113.2", PORT_RESTRICTED)
    b = w.add_client("bob", "10.0.2.2", nat=nat_b)
    w.run_for(1)
    bob_public = w.bootnode.table.endpoint(w.bootnode.table.room_members(b.room_id)[0])
    lost = []

    def drop_first_join_to_bob(src, dst, data):
        if src == w.bootnode_addr and dst == bob_public and data[2] == 0x0B and not lost:
            lost.append(data)
            return False
        return True

    w.filter = drop_first_join_to_bob
    a = w.add_client("alice", "10.0.1.2", nat=nat_a)
    took = w.run_until(lambda: connected(w, "alice", "bob") and connected(w, "bob", "alice"), limit=60)
    assert lost and b.counters["roster_resync"] == 1 and a.counters["roster_resync"] == 0
    # bob's next acknowledged heartbeat showed a member he did not know, one a second
    # later confirmed it, and the list came back: before alice's punch deadline ran out
    assert took < PUNCH_DEADLINE_s
    w.run_for(30)
    assert b.counters["roster_resync"] == 1  # the digest agrees from then on


def test_a_lost_leave_is_found_by_the_room_digest_and_nothing_else_resyncs():
    """Carol vanishes and the bootnode's PEER_LEFT to alice is lost: her record of the room
    still holds carol until the digest says otherwise; in a quiet room nobody resyncs."""
    w = SimWorld()
    w.start_bootnode()
    a = w.add_client("alice", "198.51.100.10")
    w.add_client("bob", "198.51.100.20")
    c = w.add_client("carol", "198.51.100.30")
    w.run_until(lambda: connected(w, "alice", "carol") and connected(w, "alice", "bob"), limit=5)
    w.run_for(40)
    assert a.counters["roster_resync"] == 0  # heartbeats with acks, nothing missed
    w.filter = lambda src, dst, data: not (src == w.bootnode_addr and dst[0] == "198.51.100.10" and data[2] == 0x0C)
    w.remove(("198.51.100.30", 4545))  # carol's process dies
    w.run_until(lambda: w.bootnode.table.room_size(a.room_id) == 2, limit=30)  # expired at the bootnode
    assert c.public_key in a._roster  # its PEER_LEFT to alice was lost
    w.run_until(lambda: c.public_key not in a._roster, limit=15)  # her next heartbeats' digest showed it
    assert a.counters["roster_resync"] == 1


@pytest.mark.parametrize(
    "kind,independent", [(None, True), (FULL_CONE, True), (PORT_RESTRICTED, True), (SYMMETRIC, False)]
)
def test_the_client_learns_once_whether_its_nat_maps_per_destination(kind, independent):
    """The bootnode's main port and its second port each tell the client its public
    endpoint; the same one means endpoint-independent mapping, another a symmetric NAT."""
    w = SimWorld()
    w.start_bootnode()
    nat = w.add_nat("203.0.113.1", kind) if kind else None
    w.add_client("alice", "10.0.1.2" if nat else "198.51.100.10", nat=nat)
    w.run_for(5)
    (found,) = w.kinds("alice", ev.NatMapping)
    assert found.independent is independent
    assert ("direct connections likely" in found.message) is independent


def test_without_a_discovery_port_nothing_is_claimed():
    w = SimWorld()
    w.start_bootnode()
    w.bootnode.stun_other = None  # an older bootnode, or DISCOVERY_PORT=off
    a = w.add_client("alice", "198.51.100.10")
    w.run_for(10)
    assert not w.kinds("alice", ev.NatMapping) and a._nat is not None and a._nat.target is None


def test_a_responder_that_quits_before_its_keys_are_confirmed_still_says_bye():
    """Bob answered alice's initiation, but her confirming packet has not reached him when
    he quits: his bye goes on the new keys anyway, and alice shows him gone at once (not
    15 s later, from his silence, as she had to when only confirmed keys could carry it)."""
    ka, kb = _keys_with(alice_initiates=True)
    w = SimWorld()
    w.start_bootnode()
    bob_ip = "198.51.100.20"

    def no_transport_to_bob(src, dst, data):
        return not (dst[0] == bob_ip and pw.is_peer_datagram(data) and data[2] == pw.PeerType.TRANSPORT)

    w.filter = no_transport_to_bob
    a = w.add_client("alice", "198.51.100.10", key=ka)
    b = w.add_client("bob", bob_ip, key=kb)
    w.run_until(lambda: connected(w, "alice", "bob"), limit=5)
    assert b.peers[a.public_key].state.value == "handshaking"  # alice's confirmation never arrived
    quit_at = w.now
    b.quit(w.now)
    w._drain(b, (bob_ip, 4545))
    w.run_until(lambda: w.kinds("alice", ev.PeerLeft), limit=30)
    (left,) = w.kinds("alice", ev.PeerLeft)
    assert left.reason == "quit" and w.now - quit_at < 1.0
