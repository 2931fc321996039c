"""The client's bootnode link with simulated time: retries, give-up, refusals, loss and
return, leaving. The bootnode side here is the real Rendezvous machine or silence."""

from __future__ import annotations

import pytest

from gochat import events as ev
from gochat.bootnode import fastpath
from gochat.bootnode.cookie import CookieJar
from gochat.bootnode.keys import BootnodeKey
from gochat.bootnode.rendezvous import Limits, Rendezvous, Send
from gochat.client.bootnode_link import CLOSED, FAILED, REGISTERED, REGISTERING, BootnodeLink
from gochat.constants import DISCONNECT_WAIT_s, REGISTER_TIMEOUTS_s
from gochat.crypto.noise import public_key
from gochat.wire import control as wire
from gochat.wire.control import MsgType, RefuseReason

BOOTNODE = ("192.0.2.1", 9595)
PRIVATE = bytes(range(1, 33))
CARD = wire.encode_card(public_key(PRIVATE), "alice", [])
BOOT_KEY = BootnodeKey(b"b" * 32)
OTHER_KEY = BootnodeKey(b"o" * 32)


def new_link(now=0.0):
    return BootnodeLink(BOOTNODE, "lobby", CARD, now=now, static_private=PRIVATE)


def sent_types(link):
    types = [wire.decode(d).__class__.__name__ if d[2] != MsgType.REGISTER else "Register" for d in link.outbox]
    link.outbox.clear()
    return types


def run_timers(link, until):
    while (t := link.get_timer()) is not None and t <= until:
        link.handle_timer(t)
        if link.closed:
            break


def _tries_until_closed(link):
    tries = [0.0]
    link.outbox.clear()
    while not link.closed:
        t = link.get_timer()
        link.handle_timer(t)
        if link.outbox:
            tries.append(t)
            link.outbox.clear()
    return tries


def test_silent_bootnode_is_tried_with_backoff_for_a_minute_with_progress_then_a_clear_error():
    link = new_link()
    tries = _tries_until_closed(link)
    assert tries[:6] == [0.0, 1.0, 2.5, 5.0, 8.0, 13.0]  # backoff, then every 5 s
    assert tries[-1] == 58.0 and len(tries) == 15 and link.get_timer() is None
    *progress, error = link.events
    assert [(p.tries, p.waited_s) for p in progress[:3]] == [(1, 1.0), (2, 2.5), (3, 5.0)]
    assert all(isinstance(p, ev.BootnodeUnanswered) and p.give_up_s == 60.0 for p in progress)
    assert error.fatal and error.message == (
        "bootnode 192.0.2.1:9595 did not answer after 15 tries over 60 s: is it running and reachable over UDP? "
        "(REGISTER_TIMEOUT sets how long to try)"
    )


def test_a_shorter_register_timeout_gives_up_sooner():
    link = BootnodeLink(BOOTNODE, "lobby", CARD, now=0.0, static_private=PRIVATE, give_up_s=sum(REGISTER_TIMEOUTS_s))
    assert _tries_until_closed(link) == [0.0, 1.0, 2.5, 5.0]
    assert "did not answer after 4 tries over 8 s" in link.events[-1].message


def _registered(link, now, token=b"t" * 12, tag=b"g" * 8, hb=1000, timeout=3000):
    rid = int.from_bytes(link._register_bytes()[20:24], "big")
    link.receive(wire.Registered(rid, token, tag, hb, timeout, ("203.0.113.5", 4545)), now)


def test_cookie_round_then_registered_and_heartbeats_ask_for_acks():
    link = new_link()
    first = link.outbox.pop()
    rid = int.from_bytes(first[20:24], "big")
    assert first[4:20] == bytes(16)
    assert link.receive(wire.Cookie(rid, b"c" * 16, BOOT_KEY.public), 0.01)
    again = link.outbox.pop()
    assert again[4:20] == b"c" * 16 and again[20:24] == first[20:24]
    assert not link.receive(wire.Cookie(rid + 1, b"x" * 16, BOOT_KEY.public), 0.01)  # not our request
    _registered(link, 0.02)
    assert link.state == REGISTERED and link.public_endpoint == ("203.0.113.5", 4545)
    assert isinstance(link.events[-1], ev.Registered) and link.events[-1].public_endpoint == "203.0.113.5:4545"
    run_timers(link, 1.02)
    (hb,) = link.outbox
    assert hb[2] == MsgType.HEARTBEAT and hb[3] & wire.FLAG_ACK_REQUESTED and hb[4:] == b"t" * 12
    link.receive(wire.TokenMessage(MsgType.HEARTBEAT_ACK, b"t" * 12), 1.07)
    assert link.rtt == pytest.approx(0.05)


def test_refused_first_registration_is_fatal_with_the_reason():
    link = new_link()
    rid = int.from_bytes(link.outbox[0][20:24], "big")
    link.receive(wire.Refused(rid, RefuseReason.ROOM_FULL, 5000), 0.1)
    assert link.closed
    assert link.events[-1].fatal and "room_full" in link.events[-1].message


def test_lost_then_restored_and_never_gives_up():
    link = new_link()
    _registered(link, 0.0)
    link.events.clear()
    run_timers(link, 2.99)
    assert not link.events
    run_timers(link, 3.0)  # no answer for the 3 s peer timeout
    assert link.events == [ev.BootnodeLost()]
    link.outbox.clear()
    run_timers(link, 600.0)  # ten minutes of silence: still trying, calmly
    registers = [d for d in link.outbox if d[2] == MsgType.REGISTER]
    assert 100 < len(registers) < 140 and not link.closed
    _registered(link, 600.1, token=b"u" * 12)
    assert [type(e) for e in link.events[1:]] == [ev.BootnodeRestored, ev.Registered]
    assert link.events[-1].again is True


def test_disconnect_waits_for_the_ack_but_not_forever():
    link = new_link()
    _registered(link, 0.0)
    link.outbox.clear()
    link.disconnect(0.5)
    assert link.outbox[0][2] == MsgType.DISCONNECT and not link.closed
    link.receive(wire.TokenMessage(MsgType.DISCONNECT_ACK, b"t" * 12), 0.6)
    assert link.state == CLOSED

    silent = new_link()
    _registered(silent, 0.0)
    silent.outbox.clear()
    silent.disconnect(0.5)
    run_timers(silent, 10.0)
    assert silent.closed
    assert 2 <= len(silent.outbox) <= 6  # retransmitted a few times within the wait
    assert all(d[2] == MsgType.DISCONNECT for d in silent.outbox)
    assert DISCONNECT_WAIT_s <= 1.0


# --- the bootnode's key: proofs and pinning ---------------------------------------------------


def _cookie(link, key=BOOT_KEY, cookie=b"c" * 16):
    rid = int.from_bytes(link._register_bytes()[20:24], "big")
    return wire.Cookie(rid, cookie, key.public)


def test_register_proves_the_key_with_the_bootnode_key_from_the_cookie():
    link = new_link()
    first = link.outbox.pop()
    assert first[-16:] == bytes(16)  # no bootnode key known yet: a zero proof earns a COOKIE
    assert link.receive(_cookie(link), 0.01)
    signed = link.outbox.pop()
    assert BOOT_KEY.check_proof(wire.decode_register(signed))
    assert not OTHER_KEY.check_proof(wire.decode_register(signed))
    assert link.learned_key == BOOT_KEY.public == link.bootnode_key  # for the driver to remember


def test_link_registers_with_the_real_machine():
    machine = Rendezvous(
        fastpath.RegistrationTable(10, 15.0, 0.0),
        heartbeat_interval_s=10.0,
        peer_timeout_s=15.0,
        limits=Limits(10, 10, 100.0, 100),
        cookies=CookieJar(b"k" * 32),
        key=BOOT_KEY,
    )
    link = new_link()
    addr = ("203.0.113.5", 4545)
    for _ in range(3):
        for data in link.outbox:
            for action in machine.receive_datagram(data, addr, 0.1):
                assert isinstance(action, Send)
                msg = wire.decode(action.data)
                if not isinstance(msg, wire.PeerList):
                    link.receive(msg, 0.1)
        link.outbox.clear()
    assert link.state == REGISTERED and machine.stats["register.accepted"] == 1


def test_a_cookie_with_another_key_than_the_pinned_one_is_fatal_at_first():
    link = new_link()
    link.pin_bootnode_key(BOOT_KEY.public, "pinned in /x/known_bootnodes.json", "delete its entry")
    link.outbox.clear()
    assert link.receive(_cookie(link, OTHER_KEY), 0.01)
    assert link.state == FAILED and link.closed and link.outbox == []  # nothing proved to the impostor
    (error,) = link.events
    assert error.fatal
    assert error.message == (
        f"bootnode 192.0.2.1:9595 presented the key {OTHER_KEY.public.hex()}, but this client expects "
        f"{BOOT_KEY.public.hex()} (pinned in /x/known_bootnodes.json). Someone may be impersonating the "
        "bootnode: not registering. If its operator really replaced its key, delete its entry."
    )
    assert link.learned_key is None


def test_a_changed_key_after_registering_is_an_error_once_and_registration_waits():
    link = new_link()
    link.receive(_cookie(link), 0.01)  # learned on first use
    _registered(link, 0.02)
    link.events.clear()
    link.receive(wire.TokenMessage(MsgType.UNKNOWN_TOKEN, b"t" * 12), 5.0)  # the bootnode restarted...
    link.outbox.clear()
    link.events.clear()
    assert link.receive(_cookie(link, OTHER_KEY), 5.01)  # ...with another key
    assert link.state == REGISTERING and link.outbox == []
    (error,) = link.events
    assert not error.fatal and OTHER_KEY.public.hex() in error.message
    assert "the key it presented earlier" in error.message
    link.receive(_cookie(link, OTHER_KEY), 6.0)
    assert len(link.events) == 1  # said once, not at every retry
    run_timers(link, 30.0)  # it keeps trying, with the key it knows
    assert link.outbox and not link.closed
    link.outbox.clear()
    assert link.receive(_cookie(link), 30.1)  # the right bootnode again
    assert BOOT_KEY.check_proof(wire.decode_register(link.outbox.pop()))


def test_a_rebind_challenge_is_answered_at_once_but_not_flooded():
    link = new_link()
    assert not link.receive(wire.RebindChallenge(b"c" * 12), 0.0)  # no token yet: nothing to prove
    _registered(link, 0.0)
    link.outbox.clear()
    assert link.receive(wire.RebindChallenge(b"c" * 12), 0.5)
    (answer,) = link.outbox
    assert wire.decode(answer) == wire.TokenMessage(
        MsgType.HEARTBEAT, b"t" * 12, wire.FLAG_REBIND | wire.FLAG_ACK_REQUESTED, b"c" * 12
    )
    for t in (0.6, 1.0, 1.4):  # forged challenges cannot make the client flood the bootnode
        assert not link.receive(wire.RebindChallenge(b"d" * 12), t)
    assert len(link.outbox) == 1
    assert link.receive(wire.RebindChallenge(b"e" * 12), 1.5)
    assert len(link.outbox) == 2
    link.receive(wire.TokenMessage(MsgType.HEARTBEAT_ACK, b"t" * 12), 1.55)
    assert link.rtt == pytest.approx(0.05)
