"""Real client processes and a real bootnode on loopback, over real UDP."""

from __future__ import annotations

import json
import re
import signal

import pytest

from .procs import FAST_TIMERS, Bootnode, Client

pytestmark = pytest.mark.slow


@pytest.fixture
def bootnode():
    node = Bootnode()
    yield node
    node.stop()


def _all_connected(clients):
    for c in clients:
        for other in clients:
            if other is not c:
                c.wait_event("peer_connected", name=other.name)


def test_three_clients_chat_then_kill_term_and_bootnode_restart(tmp_path, bootnode):
    clients = [Client(bootnode.address, name, tmp_path) for name in ("alice", "bob", "carol")]
    try:
        for c in clients:
            reg = c.wait_event("registered")
            assert reg["room"] == "lobby" and reg["public_endpoint"].startswith("127.0.0.1:")
            assert reg["fingerprint"] == c.wait_event("started")["fingerprint"]
        _all_connected(clients)
        alice, bob, carol = clients
        joined = alice.wait_event("peer_joined", name="bob")
        assert joined["fingerprint"] == bob.wait_event("registered")["fingerprint"] and joined["trust"] == "new"
        alice.say("hello from alice")
        bob.say("hello from bob")
        carol.say("ünïcode ✓ 漢字")
        for c in clients:
            for other in clients:
                if other is not c:
                    c.wait_for(
                        lambda e, sender=other.name: e["event"] == "message" and e["from"] == sender,
                        what=f"from {other.name}",
                    )
        assert bob.messages("alice") == ["hello from alice"] and alice.messages("carol") == ["ünïcode ✓ 漢字"]

        # The bootnode restarts mid-chat: clients re-register by themselves, the chat goes on.
        port = bootnode.port
        assert bootnode.stop() == 0
        alice.say("while the bootnode is away")
        bob.wait_for(lambda e: e.get("text") == "while the bootnode is away")
        restarted = Bootnode(listen=f"127.0.0.1:{port}")
        try:
            for c in clients:
                c.wait_for(lambda e: e["event"] == "registered" and e["again"], timeout=20, what="re-registration")

            # carol is killed: no bye; the others see her time out.
            carol.kill()
            for c in (alice, bob):
                left = c.wait_event("peer_left", name="carol", timeout=20)
                assert left["reason"] == "timed_out"
            # bob quits with SIGTERM: a bye, so alice knows at once; bob exits 0.
            assert bob.stop(signal.SIGTERM) == 0
            assert alice.wait_event("peer_left", name="bob", timeout=5)["reason"] == "quit"
            alice.say("alone now")
            alice.wait_for(lambda e: e["event"] == "error" and "nobody" in e["message"])
            alice.close_stdin()  # end of input: graceful quit
            assert alice.proc.wait(15) == 0
            assert restarted.stop() == 0
        finally:
            restarted.stop()
    finally:
        for c in clients:
            c.kill()


def test_commands_and_errors_in_line_mode(tmp_path, bootnode):
    alice = Client(bootnode.address, "alice", tmp_path)
    bob = Client(bootnode.address, "bob", tmp_path)
    try:
        _all_connected([alice, bob])
        alice.say("/peers")
        peers = alice.wait_event("peers")
        assert peers["bootnode"]["state"] == "connected"
        assert [(p["name"], p["state"], p["path"]) for p in peers["peers"]] == [("bob", "connected", "direct")]
        alice.say("/frobnicate")
        assert "unknown command /frobnicate" in alice.wait_event("error")["message"]
        alice.say("x" * 70000)
        assert (
            "limit is 65536" in alice.wait_for(lambda e: e["event"] == "error" and "limit" in e["message"])["message"]
        )
        alice.say("/quit")
        assert alice.proc.wait(15) == 0
        assert bob.wait_event("peer_left", name="alice", timeout=5)["reason"] == "quit"
        assert bob.stop(signal.SIGINT) == 0
    finally:
        alice.kill()
        bob.kill()


def test_unreachable_bootnode_is_a_clear_error_exit_1(tmp_path):
    import socket

    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))  # a port where nobody answers (we hold it and read nothing)
    try:
        c = Client(f"127.0.0.1:{s.getsockname()[1]}", "alice", tmp_path, extra=["--register-timeout", "8s"])
        progress = c.wait_event("bootnode_unanswered", timeout=20)
        assert progress["tries"] == 1 and progress["give_up_s"] == 8
        error = c.wait_event("error", timeout=20)
        assert error["fatal"]
        assert error["message"] == (
            f"bootnode 127.0.0.1:{s.getsockname()[1]} did not answer after 4 tries over 8 s: "
            "is it running and reachable over UDP? (REGISTER_TIMEOUT sets how long to try)"
        )
        assert c.proc.wait(10) == 1
    finally:
        s.close()


def test_identity_is_kept_and_a_changed_key_is_reported(tmp_path, bootnode):
    alice = Client(bootnode.address, "alice", tmp_path)
    bob = Client(bootnode.address, "bob", tmp_path)
    try:
        _all_connected([alice, bob])
        first = bob.wait_event("registered")["fingerprint"]
        assert (tmp_path / "bob" / "identity").stat().st_mode & 0o777 == 0o600
        assert bob.stop() == 0
        bob = Client(bootnode.address, "bob", tmp_path)  # same identity file
        assert bob.wait_event("registered")["fingerprint"] == first
        alice.wait_for(lambda e: e["event"] == "peer_joined" and e["name"] == "bob" and e["trust"] == "known")
        assert bob.stop() == 0
        mallory = Client(bootnode.address, "bob", tmp_path, identity=str(tmp_path / "mallory" / "identity"))
        warning = alice.wait_event("key_changed", name="bob")
        assert warning["previous_fingerprint"] == first and "WARNING" in warning["message"]
        mallory.stop()
    finally:
        alice.kill()
        bob.kill()


def test_wrong_passphrase_gives_handshake_failed_and_no_message_crosses(tmp_path, bootnode):
    alice = Client(bootnode.address, "alice", tmp_path, env={"ROOM_PASSPHRASE": "correct horse"})
    bob = Client(bootnode.address, "bob", tmp_path, env={"ROOM_PASSPHRASE": "battery staple"})
    carol = Client(bootnode.address, "carol", tmp_path, env={"ROOM_PASSPHRASE": "correct horse"})
    try:
        for c, other in ((alice, "bob"), (bob, "alice")):
            failed = c.wait_event("handshake_failed", name=other, timeout=20)
            assert "passphrase" in failed["reason"]
        alice.wait_event("peer_connected", name="carol")  # the right passphrase works
        alice.say("for carol only")
        carol.wait_for(lambda e: e.get("text") == "for carol only")
        bob.say("can anyone hear me?")
        bob.wait_for(lambda e: e["event"] in ("undelivered", "error"), timeout=40)
        assert not bob.messages() and alice.messages() == []
        assert not alice.kinds("peer_connected")[1:] and not bob.kinds("peer_connected")
    finally:
        for c in (alice, bob, carol):
            c.kill()


def test_the_demo_meets_the_same_echo_every_run_and_leaves_real_trust_alone(tmp_path):
    """Run the demo twice: echo answers both times, its key is the same (no key_changed
    warning, which taught users to ignore it), and the demo's keys are remembered apart
    from the ones the user trusts in real rooms."""
    identity = tmp_path / "me" / "identity"
    fingerprints = []
    for _ in range(2):
        me = Client("", "me", tmp_path, identity=str(identity), mode="demo", extra=())
        try:
            joined = me.wait_event("peer_connected", name="echo")
            me.say("stressed")
            me.wait_event("message", **{"from": "echo", "text": "desserts"})
            fingerprints.append(joined["fingerprint"])
            assert not me.kinds("key_changed")
            assert [e["trust"] for e in me.kinds("peer_joined")] == (["new"] if len(fingerprints) == 1 else ["known"])
            me.close_stdin()
            assert me.proc.wait(15) == 0
        finally:
            me.kill()
    assert fingerprints[0] == fingerprints[1]
    assert not (identity.parent / "known_peers.json").exists()  # the real store: untouched
    assert "echo" in (identity.parent / "demo" / "known_peers.json").read_text()


def test_peers_are_told_apart_by_key_whatever_their_names(tmp_path, bootnode):
    """Two people who set no name (same login name) get distinct names; a second `bob`
    beside the one we know is shown apart and still gets the loud key-change warning (an
    impostor beside the real one would look the same); someone who takes our own name is
    told to us. Nobody is mistaken for anyone."""
    env = {"USER": "user", "LOGNAME": "user"}
    watcher = Client(bootnode.address, "carol", tmp_path)
    bob = Client(bootnode.address, "bob", tmp_path)
    clients = [watcher, bob]
    try:
        watcher.wait_event("peer_connected", name="bob")
        first = [Client(bootnode.address, f"anon{i}", tmp_path, env=env, choose_name=False) for i in range(2)]
        clients += first
        names = []
        for anon in first:
            started = anon.wait_event("started")
            assert re.fullmatch(r"user-[0-9a-f]{4}", started["name"])
            assert started["name"] == "user-" + started["fingerprint"][:4]
            anon.wait_for(lambda e: e["event"] == "notice" and "--name" in e["message"], what="how to name")
            names.append(started["name"])
        assert names[0] != names[1]
        for name in names:
            watcher.wait_event("peer_connected", name=name)
        other_bob = Client(bootnode.address, "bob", tmp_path / "elsewhere")  # another key, the same name
        clients.append(other_bob)
        clash = watcher.wait_event("name_clash", name="bob")
        assert clash["fingerprint"] == other_bob.wait_event("started")["fingerprint"]
        assert clash["other_fingerprint"] == bob.wait_event("started")["fingerprint"]
        changed = watcher.wait_event("key_changed", name="bob")
        assert changed["previous_fingerprint"] == clash["other_fingerprint"]
        impostor = Client(bootnode.address, "carol", tmp_path / "elsewhere")  # takes the watcher's name
        clients.append(impostor)
        mine = watcher.wait_event("name_clash", name="carol")
        assert "your name" in mine["message"]
        assert len(watcher.kinds("key_changed")) == 1  # only for the second bob
        joined = {e["fingerprint"]: e["trust"] for e in watcher.kinds("peer_joined")}
        assert len(joined) == 5 and sorted(joined.values()) == ["changed", "new", "new", "new", "new"]
    finally:
        for c in clients:
            c.kill()


def test_clients_given_two_bootnodes_meet_on_one_and_fail_over_to_the_other(tmp_path):
    """BOOTNODE=a,b: every member of a room starts at the bootnode the room's hash picks,
    so they meet; when it dies they register at the other one, in the list's order, and
    meet there, while their conversation goes on directly. Each bootnode's key is pinned
    on its own (a failover to another key is not an impersonation)."""
    from gochat.client.driver import bootnode_order

    nodes = [Bootnode(extra=[*FAST_TIMERS, "--bootnode-key", str(tmp_path / f"boot{i}.key")]) for i in range(2)]
    addresses = [n.address for n in nodes]
    first = bootnode_order([(n.host, n.port) for n in nodes], "lobby")[0]
    primary = next(n for n in nodes if (n.host, n.port) == first)
    other = next(n for n in nodes if n is not primary)
    listed = ",".join(addresses)
    clients = [Client(listed, name, tmp_path) for name in ("alice", "bob")]
    try:
        _all_connected(clients)
        for c in clients:
            assert c.wait_event("registered")["room"] == "lobby"
        primary.stop()
        for c in clients:  # lost, then registered again: at the other bootnode
            c.wait_event("bootnode_lost", timeout=15)
            c.wait_for(lambda e: e["event"] == "registered" and e["again"], timeout=20, what="re-registered")
        clients[0].say("still here")
        clients[1].wait_event("message", text="still here")
        carol = Client(listed, "carol", tmp_path)  # a newcomer finds them at the second bootnode
        clients.append(carol)
        carol.wait_event("peer_connected", name="alice", timeout=20)
        carol.wait_event("peer_connected", name="bob", timeout=20)
        pins = json.loads((tmp_path / "alice" / "known_bootnodes.json").read_text())["bootnodes"]
        assert set(pins) == set(addresses) and len({p["key"] for p in pins.values()}) == 2
        assert not any(e["event"] == "error" for c in clients for e in c.events)
    finally:
        for c in clients:
            c.kill()
        other.stop()
