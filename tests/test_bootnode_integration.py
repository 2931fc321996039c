"""The bootnode over real UDP sockets on loopback: an in-process driver with many
simulated clients, the anti-amplification guarantee, and the real `gochat` process."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from gochat.bootnode.metrics import parse_exposition
from gochat.wire import control as wire
from gochat.wire.control import LeaveReason, MsgType

from . import procs
from .peer import SimPeer, room_id


def test_many_clients_across_rooms(bootnode_factory):
    node = bootnode_factory(peer_timeout_s=30.0)
    rooms = {f"room{r}": [] for r in range(8)}
    peers = []
    try:
        for n in range(96):
            room = f"room{n % 8}"
            p = SimPeer(node.address, room=room, name=f"peer{n}")
            reg = p.register()
            assert isinstance(reg, wire.Registered), reg
            assert reg.observed_endpoint == p.address
            listed = {e.name for e in p.peer_list()}
            assert listed == {q.name for q in rooms[room]}  # exactly the room's earlier members
            rooms[room].append(p)
            peers.append(p)
        for members in rooms.values():
            first = members[0]
            joined = set()
            while len(joined) < len(members) - 1:
                m = first.wait_for(lambda m: isinstance(m, wire.PeerJoined))
                joined.update(e.name for e in m.peers)
            assert joined == {q.name for q in members[1:]}
        for p in peers:
            p.heartbeat(ack=True)
        for p in peers:
            ack = p.wait_for(lambda m: isinstance(m, wire.TokenMessage) and m.type is MsgType.HEARTBEAT_ACK)
            assert ack.token == p.token
        snap = node.snapshot()
        assert snap["peers"] == 96 and snap["rooms"] == 8
        assert snap["fast.heartbeats"] == 96 and snap["register.accepted"] == 96
    finally:
        for p in peers:
            p.close()


@pytest.mark.slow
def test_timeout_and_graceful_disconnect_announced(bootnode_factory):
    node = bootnode_factory(peer_timeout_s=1.0, heartbeat_interval_s=0.5)
    a, b, c = (SimPeer(node.address, name=n) for n in ("a", "b", "c"))
    try:
        for p in (a, b, c):
            assert isinstance(p.register(), wire.Registered)
        b.disconnect()
        assert (
            b.wait_for(lambda m: isinstance(m, wire.TokenMessage) and m.type is MsgType.DISCONNECT_ACK).token == b.token
        )
        left = a.wait_for(lambda m: isinstance(m, wire.PeerLeft))
        assert left.left == ((b.key, LeaveReason.DISCONNECTED),)
        # c keeps heartbeating while a falls silent: a is announced as timed out to c
        deadline = time.monotonic() + 5
        while True:
            c.heartbeat()
            m = c.recv(0.3)
            if isinstance(m, wire.PeerLeft) and m.left[0][0] == a.key:
                assert m.left == ((a.key, LeaveReason.TIMED_OUT),)
                break
            assert time.monotonic() < deadline, "expiry was never announced"
        snap = node.snapshot()
        assert snap["peers"] == 1 and snap["expired"] == 1 and snap["disconnected"] == 1
    finally:
        for p in (a, b, c):
            p.close()


def test_no_amplification_for_unvalidated_sources(bootnode_factory):
    """A flood of cookie-less registers and guessed heartbeats from fresh source ports
    (what spoofed sources look like) gets back no more bytes than it sent."""
    node = bootnode_factory()
    socks = []
    sent = {}
    try:
        for n in range(100):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.0.0.1", 0))
            s.setblocking(False)
            socks.append(s)
            reg = wire.encode(wire.Register(os.urandom(16), n, room_id("victim"), os.urandom(32), "x"))
            hb = wire.encode(wire.TokenMessage(MsgType.HEARTBEAT, os.urandom(12), wire.FLAG_ACK_REQUESTED))
            disc = wire.encode(wire.TokenMessage(MsgType.DISCONNECT, os.urandom(12)))
            junk = os.urandom(200)
            for d in (reg, reg, hb, disc, junk, b"\x47\x01\x01\x00"):
                s.sendto(d, node.address)
                sent[s] = sent.get(s, 0) + len(d)
        expected = 100 * 5  # cookie x2, unknown token, disconnect ack; junk and truncated: nothing
        deadline = time.monotonic() + 10
        received = {s: 0 for s in socks}
        count = 0
        while count < expected - 100 and time.monotonic() < deadline:  # 4 replies per source
            ready, _, _ = select.select(socks, [], [], 0.5)
            for s in ready:
                try:
                    while True:
                        data = s.recv(4096)
                        received[s] += len(data)
                        count += 1
                except BlockingIOError:
                    pass
        assert count == 400
        for s in socks:
            assert 0 < received[s] <= sent[s]
        snap = node.snapshot()
        assert snap["peers"] == 0 and snap["register.cookie_sent"] == 200
        malformed = sum(v for k, v in snap.items() if k.startswith("malformed."))
        assert snap["malformed.truncated"] >= 100 and malformed == 200  # the junk and the cut registers
    finally:
        for s in socks:
            s.close()


def _drain_all(socks, until_count, timeout=10.0):
    """Bytes and messages each socket received, reading until ``until_count`` messages in
    all arrived or the bounded timeout passed."""
    received = {s: [] for s in socks}
    deadline = time.monotonic() + timeout
    while sum(map(len, received.values())) < until_count and time.monotonic() < deadline:
        ready, _, _ = select.select(socks, [], [], 0.2)
        for s in ready:
            try:
                while True:
                    received[s].append(s.recv(4096))
            except BlockingIOError:
                pass
    return received


def test_stolen_tokens_reflect_nothing_larger_to_a_victim(bootnode_factory):
    """Whoever has the members' tokens heartbeats them from victims' addresses (a spoofed
    source looks like this): the victims get one challenge per heartbeat, never larger,
    and none of the room's announcements."""
    node = bootnode_factory()
    members = [SimPeer(node.address, room="hijacked", name=f"m{n}") for n in range(5)]
    victims = []
    try:
        for p in members:
            assert isinstance(p.register(), wire.Registered)
        for _ in range(10):
            v = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            v.bind(("127.0.0.1", 0))
            v.setblocking(False)
            victims.append(v)
        sent = dict.fromkeys(victims, 0)
        for v in victims:
            for p in members:
                for data in (
                    wire.encode(wire.TokenMessage(MsgType.HEARTBEAT, p.token, wire.FLAG_ACK_REQUESTED)),
                    wire.encode(wire.TokenMessage(MsgType.HEARTBEAT, p.token, wire.FLAG_REBIND, os.urandom(12))),
                ):
                    v.sendto(data, node.address)
                    sent[v] += len(data)
        received = _drain_all(victims, 100)
        for v in victims:
            assert len(received[v]) == 10 and sum(map(len, received[v])) <= sent[v]
            assert {type(wire.decode(d)) for d in received[v]} == {wire.RebindChallenge}
        late = SimPeer(node.address, room="hijacked", name="late")
        members.append(late)
        assert isinstance(late.register(), wire.Registered)
        assert sorted(e.endpoints[0] for e in late.peer_list()) == sorted(p.address for p in members[:5])
        members[0].disconnect()
        members[1].wait_for(lambda m: isinstance(m, wire.PeerLeft))  # the room heard both
        assert not any(_drain_all(victims, 1, timeout=0.3).values())
        snap = node.snapshot()
        assert snap.get("rebinds", 0) == 0 and snap["rebind_challenges"] == 100 and snap["fast.new_source"] == 50
    finally:
        for x in [*members, *victims]:
            x.close()


def test_a_nat_rebinding_moves_the_endpoint_after_one_round_trip(bootnode_factory):
    node = bootnode_factory()
    a, b = SimPeer(node.address, name="a"), SimPeer(node.address, name="b")
    try:
        assert isinstance(a.register(), wire.Registered)
        old = a.address
        a.sock.close()  # the NAT gives a another port
        a.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        a.sock.bind(("127.0.0.1", 0))
        a.heartbeat(ack=True)
        challenge = a.wait_for(lambda m: isinstance(m, wire.RebindChallenge))
        flags = wire.FLAG_REBIND | wire.FLAG_ACK_REQUESTED
        a.send(wire.encode(wire.TokenMessage(MsgType.HEARTBEAT, a.token, flags, challenge.challenge)))
        a.wait_for(lambda m: isinstance(m, wire.TokenMessage) and m.type is MsgType.HEARTBEAT_ACK)
        assert isinstance(b.register(), wire.Registered)
        (entry,) = b.peer_list()
        assert entry.endpoints[0] == a.address != old
        a.heartbeat(ack=True)  # from where it is now: the fast path answers
        a.wait_for(lambda m: isinstance(m, wire.TokenMessage) and m.type is MsgType.HEARTBEAT_ACK)
        snap = node.snapshot()
        assert (snap["rebinds"], snap["rebind_challenges"], snap["fast.heartbeats"]) == (1, 1, 1)
    finally:
        a.close(), b.close()


def test_one_address_holds_at_most_max_peers_per_source_in_a_room(bootnode_factory):
    node = bootnode_factory(max_peers_per_source=16)
    peers = [SimPeer(node.address, room="full", name=f"p{n}") for n in range(17)]  # 17 ports of 127.0.0.1
    other = SimPeer(node.address, room="other", name="other")
    try:
        replies = [p.register() for p in peers]
        assert all(isinstance(r, wire.Registered) for r in replies[:16])
        assert replies[16].reason is wire.RefuseReason.SOURCE_FULL and replies[16].retry_after_ms == 5000
        assert isinstance(other.register(), wire.Registered)
        snap = node.snapshot()
        assert snap["refused.source_full"] == 1 and snap["peers"] == 17
    finally:
        for p in [*peers, other]:
            p.close()


def test_malformed_flood_never_stops_the_loop(bootnode_factory):
    node = bootnode_factory()
    rnd_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for n in range(2000):
            body = os.urandom(n % 300)
            rnd_sock.sendto(b"\x47\x01" + bytes([n % 16]) + body, node.address)
        p = SimPeer(node.address, name="survivor")
        assert isinstance(p.register(), wire.Registered)
        p.close()
        snap = node.snapshot()
        assert snap["internal_errors"] == 0
        assert sum(v for k, v in snap.items() if k.startswith("malformed.")) > 0
    finally:
        rnd_sock.close()


# --- the real process ----------------------------------------------------------------------


class Process:
    """A gochat process whose stderr a thread reads line by line (select() on a buffered
    pipe misses lines already read into Python's buffer)."""

    def __init__(self, *args, env=None):
        full_env = {**os.environ, **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gochat", *args],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            env=full_env,
        )
        self.lines = []
        self._seen = 0  # lines wait_for_line has looked at
        self._cond = threading.Condition()
        self._eof = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stderr:
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def wait_for_line(self, pattern, timeout=15.0):
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                while self._seen < len(self.lines):
                    m = rx.search(self.lines[self._seen])
                    self._seen += 1
                    if m:
                        return m
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._eof:
                    raise AssertionError(f"no line matching {pattern!r}; got {self.lines}")
                self._cond.wait(remaining)

    def stop(self, sig=signal.SIGTERM, timeout=15.0):
        self.proc.send_signal(sig)
        rc = self.proc.wait(timeout)
        self._reader.join(timeout)
        return rc


@pytest.mark.slow
@pytest.mark.parametrize("pure", [False, True], ids=["cython", "pure"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_real_bootnode_process(pure, sig, tmp_path):
    env = {"GOCHAT_PURE_PYTHON": "1"} if pure else {"GOCHAT_PURE_PYTHON": "0"}
    env["XDG_DATA_HOME"] = str(tmp_path / "data")
    p = Process("--mode", "bootnode", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", env=env)
    try:
        created = p.wait_for_line(r"created a new bootnode key in (\S+)").group(1)
        assert created == str(tmp_path / "data" / "gochat" / "bootnode.key")  # the default place
        assert os.stat(created).st_mode & 0o777 == 0o600
        m = p.wait_for_line(r"listening on udp 127\.0\.0\.1:(\d+) \(fast path: ([\w-]+)")
        assert m.group(2) == ("pure-python" if pure else "cython")
        addr = ("127.0.0.1", int(m.group(1)))
        logged_key = bytes.fromhex(p.wait_for_line(r"bootnode public key ([0-9a-f]{64})").group(1))
        metrics = p.wait_for_line(r"metrics on http://([\d.]+:\d+)/metrics").group(1)
        a, b = SimPeer(addr, name="a"), SimPeer(addr, name="b")
        assert isinstance(a.register(), wire.Registered) and isinstance(b.register(), wire.Registered)
        assert a.bootnode_key == logged_key  # the COOKIE carries the key the operator sees
        assert [e.name for e in b.peer_list()] == ["a"]
        b.heartbeat(ack=True)
        b.wait_for(lambda m: isinstance(m, wire.TokenMessage) and m.type is MsgType.HEARTBEAT_ACK)
        text = urllib.request.urlopen(f"http://{metrics}/metrics", timeout=5).read().decode()
        values = parse_exposition(text)
        assert values["gochat_peers"] == 2 and values["gochat_fast_heartbeats_total"] == 1
        a.close(), b.close()
    finally:
        rc = p.stop(sig)
    assert rc == 0
    assert any("bootnode stopped: 2 peers in 1 rooms, 1 heartbeats, 2 registrations" in line for line in p.lines)


@pytest.mark.slow
def test_real_bootnode_ipv6():
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    probe = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no ::1 on this host")
    finally:
        probe.close()
    p = Process("--mode", "bootnode", "--listen", "[::]:0")
    try:
        port = int(p.wait_for_line(r"listening on udp \[::\]:(\d+)").group(1))
        six = SimPeer(("::1", port), name="six", bind="::1")
        four = SimPeer(("127.0.0.1", port), name="four")
        assert six.register().observed_endpoint == six.address
        assert four.register().observed_endpoint == four.address  # shown as IPv4, not ::ffff:
        (entry,) = four.peer_list()
        assert entry.endpoints[0] == six.address
        six.close(), four.close()
    finally:
        assert p.stop() == 0


@pytest.mark.slow
def test_listen_port_in_use_is_a_clear_error():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    try:
        r = subprocess.run(
            [sys.executable, "-m", "gochat", "--mode", "bootnode", "--listen", "{}:{}".format(*s.getsockname())],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert r.returncode == 1 and "cannot serve on 127.0.0.1" in r.stderr and "in use" in r.stderr
    finally:
        s.close()


# --- the bootnode's key, and real clients with it ------------------------------------------


def _key_line(node: procs.Bootnode) -> bytes:
    line = node.wait_for_line(r"bootnode public key [0-9a-f]{64}")
    return bytes.fromhex(re.search(r"bootnode public key ([0-9a-f]{64})", line).group(1))


@pytest.mark.slow
def test_bootnode_key_file_is_kept_and_one_readable_by_others_is_refused(tmp_path):
    key_file = tmp_path / "keys" / "bootnode.key"
    first = procs.Bootnode(extra=[*procs.FAST_TIMERS, "--bootnode-key", str(key_file)])
    try:
        key = _key_line(first)
    finally:
        assert first.stop() == 0
    assert key_file.stat().st_mode & 0o777 == 0o600
    again = procs.Bootnode(extra=[*procs.FAST_TIMERS, "--bootnode-key", str(key_file)])
    try:
        assert _key_line(again) == key  # a restart keeps the key its clients pinned
    finally:
        assert again.stop() == 0
    key_file.chmod(0o644)
    r = subprocess.run(
        procs.gochat_command("--mode", "bootnode", "--listen", "127.0.0.1:0"),
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "BOOTNODE_KEY_FILE": str(key_file)},
    )
    assert r.returncode == 2
    assert f"invalid BOOTNODE_KEY_FILE (environment): {key_file} is readable by others (mode 644)" in r.stderr
    assert "listening" not in r.stderr  # refused before anything started


@pytest.mark.slow
def test_real_clients_prove_their_keys_pin_the_bootnode_and_chat(tmp_path):
    node = procs.Bootnode(extra=[*procs.FAST_TIMERS, "--bootnode-key", str(tmp_path / "bootnode.key")])
    clients = []
    try:
        key = _key_line(node)
        alice = procs.Client(node.address, "alice", tmp_path)
        bob = procs.Client(node.address, "bob", tmp_path)
        clients += [alice, bob]
        alice.wait_event("peer_connected", name="bob")
        alice.say("proved and pinned")
        bob.wait_for(lambda e: e.get("text") == "proved and pinned", what="alice's message")
        pins = json.loads((tmp_path / "alice" / "known_bootnodes.json").read_text())
        assert pins["bootnodes"][node.address]["key"] == key.hex()
        assert (tmp_path / "alice" / "known_bootnodes.json").stat().st_mode & 0o777 == 0o600
    finally:
        for c in clients:
            c.stop()
        node.stop()


@pytest.mark.slow
def test_a_bootnode_with_another_key_than_the_pinned_one_is_refused_loudly(tmp_path):
    node = procs.Bootnode(extra=[*procs.FAST_TIMERS, "--bootnode-key", str(tmp_path / "bootnode.key")])
    clients = []
    try:
        key = _key_line(node)
        wrong = bytes(31) + b"\x09"
        pins = tmp_path / "alice" / "known_bootnodes.json"
        pins.parent.mkdir()
        pins.write_text(json.dumps({"version": 1, "bootnodes": {node.address: {"key": wrong.hex(), "first_seen": 0}}}))
        alice = procs.Client(node.address, "alice", tmp_path)
        bob = procs.Client(node.address, "bob", tmp_path, env={"BOOTNODE_PUBLIC_KEY": wrong.hex()})
        clients += [alice, bob]
        error = alice.wait_event("error", fatal=True)
        assert error["message"] == (
            f"bootnode {node.address} presented the key {key.hex()}, but this client expects {wrong.hex()} "
            f"(pinned in {pins}). Someone may be impersonating the bootnode: not registering. If its operator "
            f'really replaced its key, delete the "{node.address}" entry from {pins} and start again.'
        )
        assert "set by BOOTNODE_PUBLIC_KEY" in bob.wait_event("error", fatal=True)["message"]
        assert alice.proc.wait(15) == 1 and bob.proc.wait(15) == 1
        assert alice.kinds("registered") == [] and bob.kinds("registered") == []
        # the user removes the pin: the next start trusts the bootnode's key again
        pins.write_text(json.dumps({"version": 1, "bootnodes": {}}))
        again = procs.Client(node.address, "alice", tmp_path)
        clients.append(again)
        again.wait_event("registered")
        assert json.loads(pins.read_text())["bootnodes"][node.address]["key"] == key.hex()
    finally:
        for c in clients:
            c.kill()
        node.stop()


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.slow
def test_the_batch_wait_leaves_an_idle_bootnode_idle():
    """After a burst the bootnode waits a millisecond for more before reading again; once
    the traffic stops, nothing keeps it awake (no polling timer left behind)."""
    p = procs.Bootnode(listen="127.0.0.1:0")
    try:
        addr = ("127.0.0.1", p.port)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(5)
            for _ in range(200):  # unknown tokens: each gets an answer
                s.sendto(wire.encode(wire.TokenMessage(MsgType.HEARTBEAT, os.urandom(12))), addr)
            for _ in range(200):
                s.recv(64)
        before = _cpu_seconds(p.proc.pid)
        time.sleep(3)  # the measurement window: an idle bootnode for 3 s
        idle = _cpu_seconds(p.proc.pid) - before
        print(f"idle bootnode CPU over 3 s: {idle * 1000:.0f} ms")
        assert idle < 0.15  # a 1 kHz timer would cost more than this; the expiry tick is 8 Hz
    finally:
        assert p.stop() == 0
