"""A cluster of two bootnodes joined through two clustered nats-servers, on loopback:
registrations per second into rooms that span both bootnodes (and, in the same run, the
same registrations into two bootnodes without the bus), the NATS messages and bytes each
join costs (from the NATS servers' own counters), and the latency of a join made at one
bootnode until a member at the other hears of it (p50, p99)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import urllib.request

from benchmarks.bootnode_load import Bootnode, Generator, PeerKeys, log, register_peers
from benchmarks.relay_load import proc_cpu_seconds, register, udp_socket
from gochat.client.bootnode_link import REGISTERED, BootnodeLink
from gochat.crypto.noise import generate_private_key, public_key
from gochat.wire import control as wire
from tests.natsd import NatsServer, missing


def varz(monitor_port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{monitor_port}/varz", timeout=5) as r:
        return json.loads(r.read())


def bus_totals(servers: list[NatsServer]) -> tuple[int, int]:
    """Messages and payload bytes the NATS servers took in (from bootnodes and routes)."""
    msgs = sum(varz(s.monitor_port)["in_msgs"] for s in servers)
    size = sum(varz(s.monitor_port)["in_bytes"] for s in servers)
    return msgs, size


def published(nodes: list[Bootnode]) -> float:
    return sum(n.metrics().get("gochat_cluster_published_total", 0.0) for n in nodes)


def registrations(args, cluster: str | None, servers: list[NatsServer]) -> dict:
    """args.peers registrations per bootnode, rooms of args.room_size half at each."""
    extra = ["--cluster", cluster] if cluster else []
    nodes = [Bootnode(False, args.peers, 60.0, extra=extra) for _ in range(2)]
    gens = [Generator(n.addr, 4) for n in nodes]
    try:
        for g in gens:
            g.open()
        if cluster:
            time.sleep(1.0)  # the bootnodes join the bus (a one-off at start, not measured)
        half = args.room_size // 2
        keys = [PeerKeys(k * args.peers, args.peers, g.bootnode_key, 2) for k, g in enumerate(gens)]
        cpu0 = [sum(proc_cpu_seconds(n.proc.pid)) for n in nodes]
        bus0 = bus_totals(servers) if cluster else (0, 0)
        pub0 = published(nodes)
        t0 = time.perf_counter()
        for k, (g, key) in enumerate(zip(gens, keys, strict=True)):
            base = k * args.peers
            register_peers(
                g,
                key,
                base,
                args.peers,
                args.room_size,
                {},
                lambda: None,
                600,
                room_of=lambda i, base=base: 1 + (i - base) // half,
            )
        took = time.perf_counter() - t0
        cpu = sum(sum(proc_cpu_seconds(n.proc.pid)) for n in nodes) - sum(cpu0)
        time.sleep(1.0)  # the last joins' bus messages arrive (totals, not a synchronisation)
        bus1 = bus_totals(servers) if cluster else (0, 0)
        pub1 = published(nodes)
        n = 2 * args.peers
        out = {
            "registrations": n,
            "registrations_per_s": round(n / took),
            "bootnode_cpu_us_per_registration": round(cpu / n * 1e6, 1),
        }
        if cluster:
            # what the bootnodes published (joins, the rooms' syncs and their answers, and
            # their ALIVEs meanwhile), and its payload bytes (NATS's average message)
            msgs = (pub1 - pub0) / n
            payload = (bus1[1] - bus0[1]) / max(1, bus1[0] - bus0[0])
            out["messages_published_per_registration"] = round(msgs, 3)
            out["payload_bytes_per_message"] = round(payload, 1)
            out["bytes_published_per_registration"] = round(msgs * payload, 1)
        return out
    finally:
        for g in gens:
            g.close()
        for node in nodes:
            node.stop()


def join_latency(args, cluster: str) -> dict:
    """A member at bootnode B; members join at bootnode A one at a time: from the
    REGISTER that A accepts to B's PEER_JOINED at the member."""
    a, b = (Bootnode(False, 1000, 60.0, extra=["--cluster", cluster]) for _ in range(2))
    try:
        time.sleep(1.0)
        listener, _ = register(b.addr, "listener")  # room "relay-bench"
        listener.settimeout(2.0)
        delays = []
        for k in range(args.joins):
            key = generate_private_key()
            card = wire.encode_card(public_key(key), f"j{k}", [])
            link = BootnodeLink(a.addr, "relay-bench", card, time.monotonic(), static_private=key, relay=False)
            sock = udp_socket()
            sock.settimeout(1.0)
            sent_at = 0.0
            while link.state is not REGISTERED:
                for data in link.outbox:
                    sent_at = time.perf_counter()
                    sock.sendto(data, a.addr)
                link.outbox.clear()
                data, _ = sock.recvfrom(2048)
                link.receive(wire.decode(data), time.monotonic())
            while True:
                data, _ = listener.recvfrom(2048)
                msg = wire.decode(data)
                if isinstance(msg, wire.PeerJoined) and any(e.public_key == public_key(key) for e in msg.peers):
                    delays.append((time.perf_counter() - sent_at) * 1000)
                    break
            sock.close()
        delays.sort()
        return {
            "joins": len(delays),
            "p50_ms": round(statistics.median(delays), 3),
            "p99_ms": round(delays[min(len(delays) - 1, int(0.99 * len(delays)))], 3),
        }
    finally:
        a.stop()
        b.stop()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--peers", type=int, default=5000, help="registrations per bootnode")
    p.add_argument("--room-size", type=int, default=10)
    p.add_argument("--joins", type=int, default=200, help="latency samples")
    p.add_argument("--json", dest="json_path")
    args = p.parse_args(argv)
    why = missing()
    if why is not None:
        print(json.dumps({"skipped": why}))
        return 0
    n1 = NatsServer("n1", monitor=True)
    n2 = NatsServer("n2", routes=[n1.cluster_port], monitor=True)
    try:
        cluster = f"{n1.url},{n2.url}"
        results: dict = {
            "date": time.strftime("%Y-%m-%d"),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        }
        log("two bootnodes without the bus")
        results["alone"] = registrations(args, None, [])
        log("two bootnodes on the bus, rooms spanning both")
        results["cluster"] = registrations(args, cluster, [n1, n2])
        log("cross-bootnode join latency")
        results["join_latency"] = join_latency(args, cluster)
    finally:
        n1.stop()
        n2.stop()
    print(json.dumps(results, indent=2))
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
