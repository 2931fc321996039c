"""Real gochat processes behind real kernel NATs in network namespaces (root only)."""

from __future__ import annotations

import itertools

import pytest

from gochat.constants import PUNCH_DEADLINE_s

from .coturn import Coturn
from .coturn import missing as coturn_missing
from .natlab import BOOTNODE, CLIENT_PORT, FULL_CONE, PORT_RESTRICTED, RESTRICTED, SYMMETRIC, Lab, missing_requirements
from .procs import Bootnode, Client

_why = missing_requirements()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(_why is not None, reason=_why or "")]

CONES = [FULL_CONE, RESTRICTED, PORT_RESTRICTED]
LAB_TIMERS = ["--heartbeat-interval", "2s", "--peer-timeout", "6s"]


def _start(lab, tmp_path, names=(("alice", "a", 0), ("bob", "b", 0))):
    boot = Bootnode(listen=BOOTNODE, prefix=lab.prefix(lab.ns["boot"]), extra=LAB_TIMERS)
    clients = [
        Client(BOOTNODE, name, tmp_path, prefix=lab.prefix(lab.hosts[side][i]), port=CLIENT_PORT, extra=LAB_TIMERS)
        for name, side, i in names
    ]
    return boot, clients


def _chat_both_ways(alice, bob):
    alice.say("hello from behind nat a")
    bob.say("hello from behind nat b")
    bob.wait_for(lambda e: e.get("text") == "hello from behind nat a", what="alice's message")
    alice.wait_for(lambda e: e.get("text") == "hello from behind nat b", what="bob's message")


def _stop(boot, clients):
    for c in clients:
        c.kill()
    boot.stop()


@pytest.mark.parametrize(
    "kind_a,kind_b", [*itertools.product(CONES, CONES), (SYMMETRIC, FULL_CONE), (SYMMETRIC, RESTRICTED)]
)
def test_direct_path_through_nats(tmp_path, kind_a, kind_b):
    with Lab(kind_a, kind_b) as lab:
        boot, (alice, bob) = _start(lab, tmp_path)
        try:
            a_conn = alice.wait_event("peer_connected", name="bob", timeout=15)
            b_conn = bob.wait_event("peer_connected", name="alice", timeout=15)
            assert a_conn["path"] == b_conn["path"] == "direct"
            assert a_conn["endpoint"].startswith("198.18.3.2:") and b_conn["endpoint"].startswith("198.18.2.2:")
            if kind_a == SYMMETRIC:
                # bob reached alice on the port her NAT opened towards him, not the one the
                # bootnode saw: a peer-reflexive endpoint.
                assert b_conn["endpoint"] != alice.wait_event("registered")["public_endpoint"]
            _chat_both_ways(alice, bob)
        finally:
            _stop(boot, clients=[alice, bob])


RELAYED = [(PORT_RESTRICTED, SYMMETRIC), (SYMMETRIC, PORT_RESTRICTED), (SYMMETRIC, SYMMETRIC)]


def _exchange(alice, bob, n=100, timeout=60):
    """n messages each way; both must arrive exactly once and in order."""
    for i in range(n):
        alice.say(f"a{i:03d}")
        bob.say(f"b{i:03d}")
    bob.wait_for(lambda e: e.get("text") == f"a{n - 1:03d}", timeout=timeout, what="the last of alice's messages")
    alice.wait_for(lambda e: e.get("text") == f"b{n - 1:03d}", timeout=timeout, what="the last of bob's messages")
    assert bob.messages("alice") == [f"a{i:03d}" for i in range(n)]
    assert alice.messages("bob") == [f"b{i:03d}" for i in range(n)]
    assert not alice.kinds("undelivered") and not bob.kinds("undelivered")


@pytest.mark.parametrize("kind_a,kind_b", RELAYED)
def test_pairs_that_cannot_punch_talk_through_the_bootnodes_relay(tmp_path, kind_a, kind_b):
    """Real kernel NATs that no punch crosses: the pair meets through the bootnode's relay
    (the symmetric side knows from NAT discovery and goes there at once), chats exactly
    once and in order, and keeps probing for a direct path in vain."""
    with Lab(kind_a, kind_b) as lab:
        boot, (alice, bob) = _start(lab, tmp_path)
        try:
            for client, kind in ((alice, kind_a), (bob, kind_b)):  # the bootnode's two ports tell them apart
                mapping = client.wait_event("nat_mapping")
                assert mapping["independent"] is (kind != SYMMETRIC)
            a_conn = alice.wait_event("peer_connected", name="bob", timeout=15)
            b_conn = bob.wait_event("peer_connected", name="alice", timeout=15)
            assert a_conn["path"] == b_conn["path"] == "relay"
            assert a_conn["endpoint"] == b_conn["endpoint"] == "relay"
            _exchange(alice, bob)
            for client in (alice, bob):
                client.say("/peers")
                (peer,) = client.wait_event("peers")["peers"]
                assert peer["path"] == "relay"
            assert not alice.kinds("peer_unreachable") and not bob.kinds("peer_unreachable")
            assert not alice.kinds("path_changed") and not bob.kinds("path_changed")
        finally:
            _stop(boot, [alice, bob])


@pytest.mark.parametrize("kind_a,kind_b", RELAYED)
def test_relayed_pair_on_a_lossy_reordering_path_delivers_exactly_once_in_order(tmp_path, kind_a, kind_b):
    """20% loss, 50 ms delay and reordering jitter on every path through the internet
    router, the bootnode's (and so the relay's) included."""
    with Lab(kind_a, kind_b) as lab:
        lab.impair(loss_percent=20, delay_ms=50, jitter_ms=10, seconds=240, bootnode_too=True)
        boot, (alice, bob) = _start(lab, tmp_path)
        try:
            assert alice.wait_event("peer_connected", name="bob", timeout=45)["path"] == "relay"
            assert bob.wait_event("peer_connected", name="alice", timeout=45)["path"] == "relay"
            _exchange(alice, bob, timeout=150)
            assert lab.impaired_drops() >= 20  # the path really was lossy
        finally:
            _stop(boot, [alice, bob])


def test_without_the_relay_such_a_pair_is_reported_unreachable(tmp_path):
    with Lab(PORT_RESTRICTED, SYMMETRIC) as lab:
        boot = Bootnode(listen=BOOTNODE, prefix=lab.prefix(lab.ns["boot"]), extra=[*LAB_TIMERS, "--relay", "off"])
        alice, bob = (
            Client(BOOTNODE, name, tmp_path, prefix=lab.prefix(lab.hosts[side][0]), port=CLIENT_PORT, extra=LAB_TIMERS)
            for name, side in (("alice", "a"), ("bob", "b"))
        )
        try:
            event = alice.wait_event("peer_unreachable", name="bob", timeout=PUNCH_DEADLINE_s + 5)
            assert "no relay binding" in event["message"]
            bob.wait_event("peer_unreachable", name="alice", timeout=PUNCH_DEADLINE_s + 5)
            assert any("gives no relay binding (disabled)" in e["message"] for e in alice.kinds("notice"))
            assert not alice.kinds("peer_connected") and not bob.kinds("peer_connected")
        finally:
            _stop(boot, [alice, bob])


def test_same_nat_without_hairpin_connects_over_local_endpoints(tmp_path):
    with Lab(PORT_RESTRICTED, PORT_RESTRICTED, hosts_a=2) as lab:
        boot, (alice, bob) = _start(lab, tmp_path, names=(("alice", "a", 0), ("bob", "a", 1)))
        try:
            assert alice.wait_event("peer_connected", name="bob", timeout=15)["endpoint"] == f"10.0.1.3:{CLIENT_PORT}"
            assert bob.wait_event("peer_connected", name="alice", timeout=15)["endpoint"] == f"10.0.1.2:{CLIENT_PORT}"
            _chat_both_ways(alice, bob)
        finally:
            _stop(boot, [alice, bob])


@pytest.mark.parametrize(
    "jitter_ms,bootnode_too,run",
    [(30, False, 0), *((10, True, run) for run in range(3))],
    ids=lambda v: str(v),
)
def test_lossy_delayed_reordering_path_delivers_exactly_once_in_order(tmp_path, jitter_ms, bootnode_too, run):
    """20% loss, 50 ms delay and jitter that reorders; with ``bootnode_too`` the bootnode's
    datagrams suffer it as well (registration, peer lists, introductions), several runs:
    it must connect and deliver every time."""
    with Lab(PORT_RESTRICTED, PORT_RESTRICTED) as lab:
        lab.impair(loss_percent=20, delay_ms=50, jitter_ms=jitter_ms, seconds=240, bootnode_too=bootnode_too)
        boot, (alice, bob) = _start(lab, tmp_path)
        try:
            alice.wait_event("peer_connected", name="bob", timeout=30)
            bob.wait_event("peer_connected", name="alice", timeout=30)
            for i in range(100):
                alice.say(f"a{i:03d}")
                bob.say(f"b{i:03d}")
            want_a = [f"a{i:03d}" for i in range(100)]
            want_b = [f"b{i:03d}" for i in range(100)]
            try:
                bob.wait_for(lambda e: e.get("text") == "a099", timeout=120, what="the last of alice's messages")
                alice.wait_for(lambda e: e.get("text") == "b099", timeout=120, what="the last of bob's messages")
            except AssertionError:
                for c in (alice, bob):  # both sides' view, for the failure report
                    c.say("/peers")
                    print(c.name, c.wait_event("peers"))
                    print(c.name, [e for e in c.events if e["event"] != "message"])
                print("".join(lab.relay_log[-40:]))
                raise
            assert bob.messages("alice") == want_a
            assert alice.messages("bob") == want_b
            assert not alice.kinds("undelivered") and not bob.kinds("undelivered")
            assert lab.impaired_drops() >= 20  # the path really was lossy
        finally:
            _stop(boot, [alice, bob])


@pytest.mark.skipif(coturn_missing() is not None, reason=coturn_missing() or "")
@pytest.mark.parametrize(
    "kind_a,kind_b,loss",
    [
        (PORT_RESTRICTED, SYMMETRIC, 0),
        (SYMMETRIC, PORT_RESTRICTED, 0),
        (SYMMETRIC, SYMMETRIC, 0),
        (SYMMETRIC, SYMMETRIC, 20),
    ],
)
def test_pairs_talk_through_coturn_with_credentials_the_bootnode_mints(tmp_path, kind_a, kind_b, loss):
    """A deployment that runs coturn beside its bootnode (whose own relay is off): the
    bootnode mints TURN REST credentials from the secret it shares with coturn, each
    client allocates a relayed address and announces it, and NATs that cannot punch meet
    through coturn, exactly once and in order, at 20% loss too."""
    with Lab(kind_a, kind_b) as lab:
        if loss:
            lab.impair(loss_percent=loss, delay_ms=30, jitter_ms=10, seconds=240, bootnode_too=True)
        turn = Coturn(secret="deployment secret", ip="198.18.1.2", port=3478, prefix=lab.prefix(lab.ns["boot"]))
        boot = Bootnode(
            listen=BOOTNODE,
            prefix=lab.prefix(lab.ns["boot"]),
            extra=[
                *LAB_TIMERS,
                "--relay",
                "off",
                "--turn-url",
                "turn:198.18.1.2:3478",
                "--turn-secret",
                "deployment secret",
            ],
        )
        alice, bob = (
            Client(BOOTNODE, name, tmp_path, prefix=lab.prefix(lab.hosts[side][0]), port=CLIENT_PORT, extra=LAB_TIMERS)
            for name, side in (("alice", "a"), ("bob", "b"))
        )
        try:
            a_conn = alice.wait_event("peer_connected", name="bob", timeout=45)
            b_conn = bob.wait_event("peer_connected", name="alice", timeout=45)
            assert a_conn["path"] == b_conn["path"] == "relay"
            assert a_conn["endpoint"].startswith("turn 198.18.1.2:") and b_conn["endpoint"].startswith(
                "turn 198.18.1.2:"
            )
            _exchange(alice, bob, timeout=150)
            assert any("relaying through TURN" in e["message"] for e in alice.kinds("notice"))
        finally:
            _stop(boot, [alice, bob])
            turn.stop()
