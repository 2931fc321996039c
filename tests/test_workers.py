"""--workers: N bootnode processes on one port, steered by the kernel (a classic BPF
program on the SO_REUSEPORT group) by room and token; a dead worker restarted."""

from __future__ import annotations

import os
import signal
import socket
import time
import urllib.request

import pytest

from gochat.bootnode.driver import _make_socket
from gochat.bootnode.metrics import parse_exposition
from gochat.bootnode.workers import _reuseport, reuseport_sockets, shard_of_room
from gochat.client.bootnode_link import room_id_for
from gochat.wire import control as wire
from gochat.wire.control import MsgType

from .procs import Bootnode, Client

TIMERS = ["--heartbeat-interval", "1s", "--peer-timeout", "3s"]


def _group(n):
    return reuseport_sockets(("127.0.0.1", 0), n, 1 << 20, _reuseport(_make_socket))


def _receiver(socks, data, sender):
    """Which socket of the group the kernel hands ``data`` to."""
    sender.sendto(data, socks[0].getsockname())
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        for i, s in enumerate(socks):
            try:
                s.recv(2048)
                return i
            except BlockingIOError:
                pass
    raise AssertionError("nothing arrived")


def room_on(worker: int, workers: int, prefix: str = "room") -> str:
    """A room name whose registrations the kernel steers to ``worker``."""
    return next(f"{prefix}-{k}" for k in range(1000) if shard_of_room(room_id_for(f"{prefix}-{k}"), workers) == worker)


def test_the_kernel_steers_registrations_by_room_and_the_rest_by_token():
    socks = _group(2)
    senders = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(6)]
    try:
        for sender in senders:  # whatever the source port, the kernel's hash is overruled
            sender.bind(("127.0.0.1", 0))
            for worker in (0, 1):
                room = room_id_for(room_on(worker, 2))
                register = wire.encode(wire.Register(bytes(16), 1, room, os.urandom(32), "a"))
                assert _receiver(socks, register, sender) == worker
                token = bytes([worker]) + os.urandom(11)
                for msg in (MsgType.HEARTBEAT, MsgType.DISCONNECT):
                    assert _receiver(socks, wire.encode(wire.TokenMessage(msg, token)), sender) == worker
                assert _receiver(socks, wire.encode_relay(token, bytes(8), b"x"), sender) == worker
        # STUN and anything else: the kernel's own hash, any worker
        got = {_receiver(socks, bytes.fromhex("000100002112a442") + os.urandom(12), s) for s in senders}
        assert got <= {0, 1}
    finally:
        for s in (*socks, *senders):
            s.close()


def _metrics(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return parse_exposition(r.read().decode())


def _free_tcp_pair() -> int:
    """A TCP port whose next one is free too (the workers' metrics: port, port + 1)."""
    for _ in range(50):
        with socket.socket() as a, socket.socket() as b:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            try:
                b.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port
    raise AssertionError("no two free TCP ports in a row")


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(entry))
            except OSError:
                continue
    return out


@pytest.mark.slow
def test_two_workers_serve_rooms_whole_and_a_dead_one_comes_back(tmp_path):
    metrics = _free_tcp_pair()
    boot = Bootnode(extra=[*TIMERS, "--workers", "2", "--metrics-listen", f"127.0.0.1:{metrics}"])
    room_a, room_b = room_on(0, 2), room_on(1, 2)
    clients = []
    try:
        boot.wait_for_line(r"worker 1: metrics on")
        boot.wait_for_line(r"worker 0: metrics on")
        alice, bob, carol = (
            Client(boot.address, n, tmp_path, room=room_a, extra=TIMERS) for n in ("alice", "bob", "carol")
        )
        dave, erin = (Client(boot.address, n, tmp_path, room=room_b, extra=TIMERS) for n in ("dave", "erin"))
        clients = [alice, bob, carol, dave, erin]
        for c, others in ((alice, ("bob", "carol")), (dave, ("erin",))):
            for name in others:
                c.wait_event("peer_connected", name=name)
        # each room whole on its own worker, whatever ports its members came from
        assert _metrics(metrics)["gochat_peers"] == 3 and _metrics(metrics + 1)["gochat_peers"] == 2
        alice.say("one room, one worker")
        for c in (bob, carol):
            c.wait_for(lambda e: e.get("text") == "one room, one worker", what="alice's message")

        # worker 0 (room a) dies: the parent starts it again on the same socket; its
        # clients find their tokens unknown and register again; the chat never stopped
        (worker0,) = [p for p in _children(boot.proc.pid) if _comm(p) == "gochat-w0"]
        os.kill(worker0, signal.SIGKILL)
        boot.wait_for_line(r"worker 0 exited with -9: restarting it on the same socket")
        for c in (alice, bob, carol):
            c.wait_event("bootnode_reregistering", timeout=20)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and _metrics_peers(metrics) != 3:
            time.sleep(0.2)  # polling a counter in another process
        assert _metrics_peers(metrics) == 3 and _metrics(metrics + 1)["gochat_peers"] == 2
        frank = Client(boot.address, "frank", tmp_path, room=room_a, extra=TIMERS)
        clients.append(frank)
        for name in ("alice", "bob", "carol"):
            frank.wait_event("peer_connected", name=name)
        bob.say("after the restart")
        for c in (alice, carol, frank):
            c.wait_for(lambda e: e.get("text") == "after the restart", what="bob's message")
        assert not dave.kinds("bootnode_reregistering")  # the other worker's clients saw nothing
    finally:
        for c in clients:
            c.kill()
        boot.stop()


def _comm(pid: int) -> str:
    with open(f"/proc/{pid}/comm") as f:
        return f.read().strip()


def _metrics_peers(port: int) -> float:
    try:
        return _metrics(port)["gochat_peers"]
    except OSError:
        return -1
