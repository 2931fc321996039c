"""Chaos: hypothesis drives the simulated network (tests/simnet.py) through random loss,
duplication, reordering and delay, NAT rebindings, bootnode restarts and lost bootnode
paths, forged PEER_LEFTs from the bootnode's address, peer restarts and joins, while
the members type. Then the faults stop, and two promises are checked:

- every message typed reaches every peer that stayed in the room (that the sender knew
  as a member when it was typed) exactly once and in order, or the sender reports it
  undelivered naming that peer (then it arrived at most once);
- membership converges: within a bounded time after the faults stop, every member is
  connected to every other, and nobody keeps a peer that is gone.

Runs are reproducible: hypothesis is derandomized, the simulated world (the bootnode's
tokens, tags and relay nonces included) draws from one seeded generator, and a failure
prints its steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gochat import events as ev
from gochat.client.peer import CONNECTED
from gochat.crypto.identity import fingerprint
from gochat.wire import control as wire

from .simnet import FULL_CONE, PORT_RESTRICTED, RESTRICTED, SYMMETRIC, SimWorld

pytestmark = pytest.mark.slow  # a few hundred long simulated runs: make test runs them, test-fast does not

CONES = [None, FULL_CONE, RESTRICTED, PORT_RESTRICTED]  # every pair of these connects directly
NATS = [*CONES, SYMMETRIC]  # with a symmetric NAT, some pairs talk through the bootnode's relay
CONVERGE_s = 90.0  # after the faults stop: re-registration, punching, the 30 s give-up, the 2 s gather


@dataclass
class Member:
    """One client process of the run (a restart is a new Member with the same key)."""

    label: str
    client: object
    key: bytes
    endpoint: tuple[str, int]
    alive: bool = True
    typed: list[tuple[str, set[str]]] = field(default_factory=list)  # (text, labels of the members it was for)


class Chaos:
    def __init__(self, nats: list[str | None], seed: int) -> None:
        self.w = SimWorld(seed=seed, delay=0.01)
        self.w.start_bootnode()
        self.members: list[Member] = []
        self.hosts = 0
        self.log: list[str] = []
        for kind in nats:
            self.join(kind)
        self.w.run_for(2)

    # --- the members ------------------------------------------------------------------

    def join(self, kind: str | None, key: bytes | None = None, slot: int | None = None) -> Member:
        n = self.hosts if slot is None else slot
        if slot is None:
            self.hosts += 1
        restarts = sum(1 for m in self.members if m.label == f"m{n}" or m.label.startswith(f"m{n}r"))
        label = f"m{n}" + (f"r{restarts}" if restarts else "")
        nat = None
        if kind is not None:
            public = f"203.0.113.{n + 1}"
            nat = self.w.nats.get(public) or self.w.add_nat(public, kind)
            ip = f"10.0.{n + 1}.2"
        else:
            ip = f"198.51.100.{n + 1}"
        key = key or self.w.rng.randbytes(32)  # from the seed: who initiates is reproducible too
        client = self.w.add_client(label, ip, nat=nat, key=key)
        member = Member(label, client, client.public_key, (ip, 4545))
        self.members.append(member)
        return member

    def live(self) -> list[Member]:
        """The processes still running (one whose first registration failed has exited)."""
        for m in self.members:
            if m.alive and m.client.failure is not None:
                m.alive = False
                self.w.remove(m.endpoint)
        return [m for m in self.members if m.alive]

    def restart(self, i: int) -> None:
        old = self.live()[i % len(self.live())]
        old.alive = False
        self.w.remove(old.endpoint)
        slot = int(old.label[1:].split("r")[0])
        nat = self.w.nat_of.get(old.endpoint[0])
        self.join(nat.kind if nat else None, key=old.client.static_private, slot=slot)

    def type(self, i: int) -> None:
        m = self.live()[i % len(self.live())]
        text = f"{m.label}:{len(m.typed)}"
        accepting = {k for k, p in m.client.peers.items() if p.accepts_messages}
        m.typed.append((text, {r.label for r in self.live() if r.key in accepting and r is not m}))
        self.w.send(m.client, text)

    # --- the faults -------------------------------------------------------------------

    def step(self, action: tuple) -> None:
        w = self.w
        kind, *args = action
        self.log.append(repr(action))
        if kind == "run":
            w.run_for(args[0])
        elif kind == "type":
            self.type(args[0])
        elif kind == "impair":
            w.loss, w.duplicate, w.jitter, w.delay = args
        elif kind == "rebind":
            nat = w.nat_of.get(self.live()[args[0] % len(self.live())].endpoint[0])
            if nat is not None:
                nat.rebind()
        elif kind == "bootnode_down":
            w.stop_bootnode()
            w.run_for(args[0])
            w.start_bootnode()
        elif kind == "cut_bootnode":
            m = self.live()[args[0] % len(self.live())]
            w.cut_bootnode_path(m.client)
            w.run_for(args[1])
            if m.alive:
                w.restore_bootnode_path(m.client)
        elif kind == "forged_left":
            target = self.live()[args[0] % len(self.live())]
            victim = self.live()[args[1] % len(self.live())]
            tag = target.client.link.room_tag
            if tag is not None and victim is not target:
                forged = wire.encode(wire.PeerLeft(tag, ((victim.key, wire.LeaveReason.TIMED_OUT),)))
                w.inject(w.bootnode_addr, self.public_endpoint(target), forged)
        elif kind == "restart":
            self.restart(args[0])
        elif kind == "join":
            self.join(args[0])
        else:
            raise AssertionError(kind)

    def public_endpoint(self, m: Member) -> tuple[str, int]:
        nat = self.w.nat_of.get(m.endpoint[0])
        if nat is None:
            return m.endpoint
        port = nat._map.get((m.endpoint,))
        return (nat.public_ip, port) if port is not None else (nat.public_ip, 1)

    def heal(self) -> None:
        w = self.w
        w.loss = w.duplicate = w.jitter = 0.0
        w.delay = 0.01
        w.cut_from_bootnode.clear()
        if w.bootnode is None:
            w.start_bootnode()
        w.run_for(CONVERGE_s)

    # --- the promises ----------------------------------------------------------------

    def check_delivery(self) -> None:
        """Exactly once and in order, or reported undelivered naming the peer."""
        for sender in self.members:
            if not sender.alive:
                continue
            reported: dict[str, set[str]] = {}
            for e in self.w.events[sender.label]:
                if isinstance(e, ev.Undelivered):
                    reported.setdefault(e.text, set()).update(e.fingerprints)
            for receiver in self.live():
                if receiver is sender:
                    continue
                got = [
                    e.text
                    for e in self.w.events[receiver.label]
                    if isinstance(e, ev.MessageReceived) and e.text.startswith(sender.label + ":")
                ]
                numbers = [int(t.split(":")[1]) for t in got]
                assert numbers == sorted(set(numbers)), f"{receiver.label} got {sender.label}'s {got}: order or twice"
                arrived = set(got)
                for text, recipients in sender.typed:
                    if receiver.label not in recipients:
                        continue
                    if text not in arrived:
                        assert fingerprint(receiver.key) in reported.get(text, set()), (
                            f"{text} neither reached {receiver.label} nor was reported undelivered"
                        )

    def check_membership(self) -> None:
        live = self.live()
        keys = {m.key for m in live}
        for m in live:
            for other in live:
                if other is m:
                    continue
                peer = m.client.peers.get(other.key)
                state = peer.state.value if peer else None
                assert peer is not None and peer.state is CONNECTED, f"{m.label} sees {other.label}: {state}"
            stale = [p.name for k, p in m.client.peers.items() if k not in keys]
            assert not stale, f"{m.label} still has {stale}"


# --- the scenarios ---------------------------------------------------------------------

_member = st.integers(0, 7)
_impairment = st.tuples(
    st.sampled_from([0.0, 0.05, 0.2, 0.5, 1.0]),  # loss
    st.sampled_from([0.0, 0.1, 0.3]),  # duplication
    st.sampled_from([0.0, 0.05, 0.3]),  # jitter: reordering
    st.sampled_from([0.005, 0.05, 0.2]),  # delay
)


def _actions(faults: bool):
    basic = [
        st.tuples(st.just("run"), st.sampled_from([0.05, 0.5, 2.0, 8.0, 20.0])),
        st.tuples(st.just("type"), _member),
        st.tuples(st.just("type"), _member),
        st.tuples(st.just("type"), _member),
    ]
    if not faults:
        return st.one_of(*basic)
    return st.one_of(
        *basic,
        _impairment.map(lambda t: ("impair", *t)),
        st.tuples(st.just("rebind"), _member),
        st.tuples(st.just("bootnode_down"), st.sampled_from([1.0, 5.0, 20.0])),
        st.tuples(st.just("cut_bootnode"), _member, st.sampled_from([5.0, 20.0])),
        st.tuples(st.just("forged_left"), _member, _member),
        st.tuples(st.just("restart"), _member),
        st.tuples(st.just("join"), st.sampled_from(CONES)),
    )


def _run(nats, seed, actions):
    chaos = Chaos(nats, seed)
    for action in actions:
        chaos.step(action)
    chaos.heal()
    return chaos


CHAOS_SETTINGS = settings(
    max_examples=150,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)


# One scenario space for both promises: two to four members behind any NAT (pairs with a
# symmetric one talk through the relay, which suffers the same faults), a seed, up to
# twenty steps of typing, waiting and faults.
SCENARIOS = {
    "nats": st.lists(st.sampled_from(NATS), min_size=2, max_size=4),
    "seed": st.integers(0, 2**16),
    "actions": st.lists(_actions(faults=True), max_size=20),
}


@CHAOS_SETTINGS
@given(**SCENARIOS)
def test_messages_arrive_once_in_order_or_are_reported(nats, seed, actions):
    chaos = _run(nats, seed, actions)
    chaos.check_delivery()


@CHAOS_SETTINGS
@given(**SCENARIOS)
def test_membership_converges_after_the_faults_stop(nats, seed, actions):
    chaos = _run(nats, seed, actions)
    chaos.check_membership()


@pytest.mark.parametrize("seed", range(3))
def test_without_faults_everything_arrives(seed):
    chaos = Chaos([FULL_CONE, PORT_RESTRICTED, None], seed)
    for i in range(30):
        chaos.step(("type", i))
        chaos.step(("run", 0.05))
    chaos.heal()
    chaos.check_delivery()
    chaos.check_membership()
    for m in chaos.members:
        assert not chaos.w.kinds(m.label, ev.Undelivered)
