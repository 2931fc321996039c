"""Relay throughput and latency: the bootnode's relay (the compiled fast path and the
pure-Python twin, each a real `gochat --mode bootnode` process) and coturn relaying the
same load over TURN ChannelData, side by side in one run on loopback.

For each relay, one client floods it with datagrams of the same payload for another
client (RELAY to a relay binding; ChannelData to a TURN channel) and the receiver
counts what arrives. The relay's own CPU (user + system, all threads, from /proc) over
the flood, divided by the datagrams delivered, is its cost per relayed datagram; its
inverse is the rate one core sustains. Then a paced probe (one datagram per ms)
measures the one-way delay through each relay against the direct path between the same
two sockets: the latency the relay adds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import struct
import sys
import threading
import time

from aioice import stun as ice_stun

from benchmarks.bootnode_load import Bootnode, log
from gochat.bootnode import fastpath
from gochat.client.bootnode_link import REGISTERED, BootnodeLink
from gochat.crypto.noise import generate_private_key, public_key
from gochat.wire import control as wire
from tests.coturn import Coturn, missing

MAX_RATE = str(2**32 - 1)  # the relay's limits out of the way: this measures its work
CHANNEL = 0x4000


def proc_cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process, all its threads."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def udp_socket() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024 * 1024)
    s.bind(("127.0.0.1", 0))
    return s


class Counter:
    """Drains a socket on a thread: datagrams received, and (for the latency probe) the
    arrival time of each by its 8-byte sequence number at ``offset``."""

    def __init__(self, sock: socket.socket, offset: int) -> None:
        self.sock, self.offset = sock, offset
        self.count = 0
        self.arrivals: dict[int, int] = {}
        self.probing = False
        self._stop = False
        sock.settimeout(0.05)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                data = self.sock.recv(2048)
            except TimeoutError:
                continue
            now = time.perf_counter_ns()
            self.count += 1
            if self.probing:
                (seq,) = struct.unpack_from("!Q", data, self.offset)
                self.arrivals[seq] = now
            for more, _ in fastpath.recv_batch(self.sock, 64):
                self.count += 1
                if self.probing:
                    (seq,) = struct.unpack_from("!Q", more, self.offset)
                    self.arrivals[seq] = time.perf_counter_ns()

    def stop(self) -> None:
        self._stop = True
        self._thread.join()


def register(boot: tuple[str, int], name: str) -> tuple[socket.socket, BootnodeLink]:
    """A client registered with a relay binding, over the real protocol (cookie, proof)."""
    sock = udp_socket()
    key = generate_private_key()
    card = wire.encode_card(public_key(key), name, [])
    link = BootnodeLink(boot, "relay-bench", card, time.monotonic(), static_private=key, relay=True)
    sock.settimeout(0.5)
    deadline = time.monotonic() + 10
    while link.state is not REGISTERED and time.monotonic() < deadline:
        for data in link.outbox:
            sock.sendto(data, boot)
        link.outbox.clear()
        try:
            data, _ = sock.recvfrom(2048)
        except TimeoutError:
            link.handle_timer(time.monotonic())
            continue
        link.receive(wire.decode(data), time.monotonic())
    if link.state is not REGISTERED or link.relay_id is None:
        raise RuntimeError(f"{name} did not get a relay binding: {link.events}")
    return sock, link


def flood(sender: socket.socket, dest: tuple[str, int], frame: bytes, counter: Counter, cpu, seconds: float) -> dict:
    """Send ``frame`` as fast as one core of this process can for ``seconds``."""
    records = frame * 256
    sent = 0
    counter.count = 0
    (user0, sys0), t0 = cpu(), time.monotonic()
    while time.monotonic() - t0 < seconds:
        sent += fastpath.send_records(sender, dest, records, len(frame), 0, 256)
    time.sleep(0.3)  # what is in flight arrives (not a synchronisation: the figures are totals)
    (user1, sys1), wall = cpu(), time.monotonic() - t0
    user_s, sys_s = user1 - user0, sys1 - sys0
    cpu_s = user_s + sys_s
    got = counter.count
    return {
        "sent": sent,
        "relayed": got,
        "seconds": round(wall, 2),
        "relay_cpu_s": round(cpu_s, 3),
        "us_per_datagram": round(cpu_s / got * 1e6, 3) if got else None,
        "user_us_per_datagram": round(user_s / got * 1e6, 3) if got else None,
        "system_us_per_datagram": round(sys_s / got * 1e6, 3) if got else None,
        "per_core_per_s": round(got / cpu_s) if cpu_s else None,
        "offered_per_s": round(sent / wall),
    }


def quiet(counter: Counter, limit: float = 60.0) -> None:
    """Wait until nothing has arrived for 0.3 s (the flood's backlog is through), bounded."""
    deadline = time.monotonic() + limit
    last = -1
    while counter.count != last and time.monotonic() < deadline:
        last = counter.count
        time.sleep(0.3)


def probe(sender, dest, make, counter: Counter, n: int) -> list[float]:
    """One-way delays (ms) of n datagrams, one per ms, through dest (once the relay is idle)."""
    quiet(counter)
    counter.arrivals.clear()
    counter.probing = True
    sent_at = {}
    for seq in range(n):
        sent_at[seq] = time.perf_counter_ns()
        sender.sendto(make(seq), dest)
        time.sleep(0.001)
    time.sleep(0.3)
    counter.probing = False
    return sorted((counter.arrivals[s] - sent_at[s]) / 1e6 for s in sent_at if s in counter.arrivals)


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return round(values[min(len(values) - 1, int(q * len(values)))], 3)


def run_bootnode(pure: bool, args, batch_wait: str) -> dict:
    node = Bootnode(
        pure,
        100,
        15.0,
        batch_wait=batch_wait,
        extra=["--relay-rate", MAX_RATE, "--relay-burst", MAX_RATE, "--relay-total-rate", MAX_RATE],
    )
    try:
        a_sock, alice = register(node.addr, "alice")
        b_sock, bob = register(node.addr, "bob")
        assert alice.token is not None and bob.relay_id is not None
        header = wire.encode_relay(alice.token, bob.relay_id, b"")
        return measure(a_sock, b_sock, node.addr, header, 12, lambda: proc_cpu_seconds(node.proc.pid), args)
    finally:
        node.stop()


def measure(sender, receiver, dest, header: bytes, offset: int, cpu, args) -> dict:
    """The flood, then the latency probes, through one relay: datagrams are ``header``
    and the payload; the receiver finds the probe's number ``offset`` bytes in."""
    counter = Counter(receiver, offset=offset)
    result = flood(sender, dest, header + bytes(args.payload), counter, cpu, args.seconds)
    delays = probe(
        sender, dest, lambda s: header + struct.pack("!Q", s) + bytes(args.payload - 8), counter, args.probes
    )
    counter.stop()
    result.update(p50_ms=pct(delays, 0.5), p99_ms=pct(delays, 0.99), probes_delivered=len(delays))
    return result


def run_coturn(args) -> dict:
    turn = Coturn()
    try:
        client, peer = udp_socket(), udp_socket()
        client.settimeout(2.0)

        def transact(method, **attrs):
            msg = ice_stun.Message(message_method=method, message_class=ice_stun.Class.REQUEST)
            msg.attributes.update(attrs)
            client.sendto(bytes(msg), turn.addr)
            reply = ice_stun.parse_message(client.recv(2048))
            if reply.message_class != ice_stun.Class.RESPONSE:
                raise RuntimeError(f"coturn refused {method}: {reply.attributes.get('ERROR-CODE')}")
            return reply

        transact(ice_stun.Method.ALLOCATE, **{"REQUESTED-TRANSPORT": 0x11000000, "LIFETIME": 600})
        transact(ice_stun.Method.CHANNEL_BIND, **{"CHANNEL-NUMBER": CHANNEL, "XOR-PEER-ADDRESS": peer.getsockname()})
        header = struct.pack("!HH", CHANNEL, args.payload)  # ChannelData: channel, length
        return measure(client, peer, turn.addr, header, 0, turn.cpu_seconds, args)
    finally:
        turn.stop()


def run_direct(args) -> dict:
    a, b = udp_socket(), udp_socket()
    counter = Counter(b, offset=0)
    delays = probe(a, b.getsockname(), lambda s: struct.pack("!Q", s) + bytes(args.payload - 8), counter, args.probes)
    counter.stop()
    return {"p50_ms": pct(delays, 0.5), "p99_ms": pct(delays, 0.99), "probes_delivered": len(delays)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=5.0, help="flood length per relay")
    p.add_argument("--payload", type=int, default=120, help="payload bytes (a short chat message's TRANSPORT)")
    p.add_argument("--probes", type=int, default=2000, help="latency probes per relay")
    p.add_argument("--json", dest="json_path")
    args = p.parse_args(argv)
    results: dict = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_implementation()} "
        f"{platform.python_version()}",
        "payload_bytes": args.payload,
    }
    log("direct path (baseline latency)")
    results["direct"] = run_direct(args)
    for name, pure, wait in (("fast", False, "1ms"), ("fast_no_batch_wait", False, "0"), ("pure", True, "1ms")):
        log(f"bootnode relay, {name}")
        results[name] = run_bootnode(pure, args, wait)
    why = missing()
    if why is None:
        log("coturn over TURN ChannelData")
        results["coturn"] = run_coturn(args)
    else:
        results["coturn"] = {"skipped": why}
    fast, pure, turn = results["fast"], results["pure"], results["coturn"]
    if fast.get("per_core_per_s") and pure.get("per_core_per_s"):
        results["fast_vs_pure"] = round(fast["per_core_per_s"] / pure["per_core_per_s"], 2)
    if fast.get("per_core_per_s") and turn.get("per_core_per_s"):
        results["fast_vs_coturn"] = round(fast["per_core_per_s"] / turn["per_core_per_s"], 2)
    print(json.dumps(results, indent=2))
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
