"""Load test of a real bootnode process on loopback, fast path vs pure-Python fallback.

    python -m benchmarks.bootnode_load --peers 100000 --seconds 5 --json out.json

For each implementation it starts `gochat --mode bootnode` on 127.0.0.1, registers
N peers across rooms (cookie exchange and proof of each peer's key included: the
X25519 of each peer's proof key is computed before the clock starts, in parallel, so
the generator's own cryptography does not slow the registrations down), floods heartbeats for S seconds from
several source sockets with a sendmmsg load generator, lets 1% of the peers fall silent
to measure one expiry tick, and times one join announced to a room of 1,000 peers.
Every rate is read from the bootnode's own counters (its metrics endpoint), and CPU
is the bootnode process's own rusage, so the generator's share of the two cores does
not distort the per-heartbeat figure. Traffic goes to 127.0.0.1 only; every phase is
bounded in time.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import multiprocessing
import os
import platform
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from gochat.bootnode import fastpath
from gochat.bootnode.metrics import parse_exposition
from gochat.crypto.noise import dh, public_key
from gochat.wire import control as wire

HB = struct.Struct("!BBBB")
FANOUT_ROOM_SIZE = 1000


def room_id(n: int) -> bytes:
    return n.to_bytes(4, "big") + b"gochat-load-room"[:12]


def scrape(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=10) as r:
        return parse_exposition(r.read().decode())


def log(msg: str) -> None:
    print(f"  {time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


class Bootnode:
    """A real `gochat --mode bootnode` process with its metrics endpoint."""

    def __init__(
        self, pure: bool, peers: int, timeout_s: float, batch_wait: str = "1ms", extra: Sequence[str] = ()
    ) -> None:
        env = {**os.environ, "GOCHAT_PURE_PYTHON": "1" if pure else "0"}
        self._key_dir = tempfile.TemporaryDirectory(prefix="gochat-load-")
        args = [
            sys.executable,
            "-m",
            "gochat",
            "--mode",
            "bootnode",
            "--env-file",
            "",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--max-peers",
            str(peers + FANOUT_ROOM_SIZE + 100),
            "--max-peers-per-room",
            str(FANOUT_ROOM_SIZE + 10),
            "--max-peers-per-source",  # every peer of the load comes from 127.0.0.1
            str(FANOUT_ROOM_SIZE + 10),
            "--register-rate",
            "1e9",
            "--register-burst",
            "1000000000",
            "--peer-timeout",
            f"{timeout_s}s",
            "--heartbeat-interval",
            f"{timeout_s / 3}s",
            "--recv-buffer",
            str(32 * 1024 * 1024),
            "--bootnode-key",
            os.path.join(self._key_dir.name, "bootnode.key"),
            "--batch-wait",
            batch_wait,
            "--discovery-port",
            "off",
            *extra,
        ]
        self.proc = subprocess.Popen(args, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
        self.addr = ("127.0.0.1", int(self._line(r"listening on udp 127\.0\.0\.1:(\d+)")))
        workers = int(extra[list(extra).index("--workers") + 1]) if "--workers" in extra else 1
        # one metrics endpoint per worker: their counters (and CPU, RSS) are summed
        self.metrics_urls = [
            f"http://{self._line(r'metrics on http://([0-9.:]+)/metrics')}/metrics" for _ in range(workers)
        ]

    def _line(self, pattern: str) -> str:
        deadline = time.monotonic() + 30
        rx = re.compile(pattern)
        seen = []
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stderr], [], [], 0.5)
            if ready:
                line = self.proc.stderr.readline()
                if not line:
                    break
                seen.append(line)
                m = rx.search(line)
                if m:
                    return m.group(1)
        self.proc.kill()
        raise RuntimeError(f"bootnode did not start: {''.join(seen)}")

    def metrics(self) -> dict[str, float]:
        total: dict[str, float] = {}
        for url in self.metrics_urls:
            for name, value in scrape(url).items():
                total[name] = total.get(name, 0.0) + value
        return total

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._key_dir.cleanup()


def _private(i: int) -> bytes:
    return hashlib.sha256(b"gochat load peer\0" + i.to_bytes(8, "big")).digest()


def _keys_of(args: tuple[int, int, bytes]) -> tuple[bytes, bytes]:
    first, count, bootnode_key = args
    pubs, proof_keys = bytearray(), bytearray()
    for i in range(first, first + count):
        private = _private(i)
        pubs += public_key(private)
        proof_keys += wire.register_proof_key(dh(private, bootnode_key))
    return bytes(pubs), bytes(proof_keys)


class PeerKeys:
    """Public keys and REGISTER proof keys of peers first..first+count-1, computed once
    (two X25519 per peer) by ``processes`` forked workers, kept in two flat buffers."""

    def __init__(self, first: int, count: int, bootnode_key: bytes, processes: int) -> None:
        self.first = first
        chunk = 5000
        jobs = [(k, min(chunk, first + count - k), bootnode_key) for k in range(first, first + count, chunk)]
        with multiprocessing.get_context("fork").Pool(processes) as pool:
            parts = pool.map(_keys_of, jobs)
        self.pubs = b"".join(p for p, _ in parts)
        self.proof_keys = b"".join(k for _, k in parts)

    def public(self, i: int) -> bytes:
        k = (i - self.first) * 32
        return self.pubs[k : k + 32]

    def proof_key(self, i: int) -> bytes:
        k = (i - self.first) * 32
        return self.proof_keys[k : k + 32]


@dataclass
class Generator:
    """Source sockets and the per-socket heartbeat records of the peers they own."""

    bootnode: tuple
    n_sockets: int
    socks: list[socket.socket] = field(default_factory=list)
    cookies: list[bytes] = field(default_factory=list)
    bootnode_key: bytes = b""  # the bootnode's static key, from its COOKIE

    def open(self) -> None:
        for _ in range(self.n_sockets):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                s.setsockopt(socket.SOL_SOCKET, 33, 16 * 1024 * 1024)  # SO_RCVBUFFORCE (root)
            except OSError:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024 * 1024)
            s.bind(("127.0.0.1", 0))
            s.setblocking(False)
            self.socks.append(s)
        for s in self.socks:  # one cookie per source address
            probe = wire.encode(wire.Register(bytes(16), 0, room_id(0), bytes(32), "probe"))
            cookie = None
            for _ in range(20):
                s.sendto(probe, self.bootnode)
                select.select([s], [], [], 0.5)
                for data, _ in fastpath.recv_batch(s, 64):
                    if data[2] == wire.MsgType.COOKIE:
                        cookie = data[8:24]
                        self.bootnode_key = data[24:56]
                if cookie:
                    break
            if cookie is None:
                raise RuntimeError("no cookie from the bootnode")
            self.cookies.append(cookie)

    def close(self) -> None:
        for s in self.socks:
            s.close()

    def drain(self, on_registered) -> int:
        """Read everything queued; REGISTERED replies go to on_registered(request_id, token).
        A COOKIE reply (ours expire after 60-120 s) renews the socket's cookie, as a
        client does; the register it answered is sent again after its retry delay."""
        n = 0
        for k, s in enumerate(self.socks):
            while True:
                batch = fastpath.recv_batch(s, 64)
                for data, _ in batch:
                    n += 1
                    if data[2] == 0x03:
                        on_registered(int.from_bytes(data[4:8], "big"), data[8:20])
                    elif data[2] == 0x02:
                        self.cookies[k] = data[8:24]
                if len(batch) < 64:
                    break
        return n


def wait_until_idle(node: Bootnode, gen: Generator) -> None:
    """Until the bootnode has drained its socket (its receive counter stops moving)."""
    previous = -1.0
    for _ in range(200):
        gen.drain(lambda i, t: None)
        received = node.metrics()["gochat_fast_received_total"]
        if received == previous:
            return
        previous = received
        time.sleep(0.2)


def register_peers(
    gen: Generator,
    keys: PeerKeys,
    first: int,
    count: int,
    room_size: int,
    tokens: dict[int, bytes],
    keepalive,
    deadline_s: float,
    fixed_room: int | None = None,
    room_of: Callable[[int], int] | None = None,
) -> float:
    """Register peers first..first+count-1 (peer i on socket i % K); returns seconds taken."""
    pending: dict[int, float] = {}
    todo = list(range(first, first + count))
    todo.reverse()
    window = 4096
    start = time.perf_counter()
    hard_deadline = start + deadline_s
    last_scan = start

    def on_registered(i: int, token: bytes) -> None:
        if i in pending:
            del pending[i]
            tokens[i] = token

    def send(i: int) -> None:
        k = i % len(gen.socks)
        if room_of is not None:
            rid = room_id(room_of(i))
        else:
            rid = room_id(fixed_room if fixed_room is not None else 1 + i // room_size)
        local = b"\x01\x04\x0a" + (i & 0xFFFFFF).to_bytes(3, "big") + b"\x11\xc1"  # 1 local endpoint
        name = f"p{i}".encode()
        msg = (
            HB.pack(0x47, 1, 0x01, 0)
            + gen.cookies[k]
            + i.to_bytes(4, "big")
            + rid
            + keys.public(i)
            + bytes([len(name)])
            + name
            + local
        )
        with contextlib.suppress(BlockingIOError):
            gen.socks[k].sendto(msg + wire.register_proof(keys.proof_key(i), msg), gen.bootnode)
        pending[i] = time.perf_counter()

    while todo or pending:
        now = time.perf_counter()
        if now > hard_deadline:
            raise RuntimeError(f"registration did not finish: {len(todo) + len(pending)} left")
        while todo and len(pending) < window:
            send(todo.pop())
        got = gen.drain(on_registered)
        if not got:
            select.select(gen.socks, [], [], 0.005)
        now = time.perf_counter()
        if now - last_scan > 0.25:
            last_scan = now
            for i, sent_at in list(pending.items()):
                if now - sent_at > 1.0:  # lost (a full buffer somewhere) or cookie renewed
                    send(i)
        keepalive()
    return time.perf_counter() - start


class Heartbeats:
    """Heartbeat records per socket, sent with sendmmsg (send_records)."""

    def __init__(self, gen: Generator, tokens: dict[int, bytes], peers: list[int]) -> None:
        self.gen = gen
        per: list[list[bytes]] = [[] for _ in gen.socks]
        for i in peers:
            per[i % len(gen.socks)].append(HB.pack(0x47, 1, 0x05, 0) + tokens[i])
        self.records = [b"".join(r) for r in per]
        self.counts = [len(r) for r in per]
        self.pos = [0] * len(gen.socks)

    def send(self, n_per_socket: int) -> int:
        sent = 0
        for k, s in enumerate(self.gen.socks):
            if self.counts[k]:
                sent += fastpath.send_records(s, self.gen.bootnode, self.records[k], 16, self.pos[k], n_per_socket)
                self.pos[k] = (self.pos[k] + n_per_socket) % self.counts[k]
        return sent

    def flood(self, seconds: float, generators: int) -> int:
        """Send as fast as possible for ``seconds`` from ``generators`` forked processes
        (sockets split between them); returns datagrams the kernel accepted."""
        ctx = multiprocessing.get_context("fork")
        counters = [ctx.Value("q", 0) for _ in range(generators)]

        def child(c: int) -> None:
            mine = [k for k in range(len(self.gen.socks)) if k % generators == c and self.counts[k]]
            sent, pos = 0, {k: self.pos[k] for k in mine}
            end = time.perf_counter() + seconds
            while time.perf_counter() < end:
                for k in mine:
                    sent += fastpath.send_records(
                        self.gen.socks[k], self.gen.bootnode, self.records[k], 16, pos[k], 4096
                    )
                    pos[k] = (pos[k] + 4096) % self.counts[k]
            counters[c].value = sent

        procs = [ctx.Process(target=child, args=(c,)) for c in range(generators)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(seconds + 30)
        return sum(v.value for v in counters)

    def paced(self, seconds: float, rate: float) -> int:
        """Offer ``rate`` heartbeats per second, evenly, in 1 ms steps, for ``seconds``
        (from this process: a paced load needs no second core); returns those sent."""
        socks = [k for k in range(len(self.gen.socks)) if self.counts[k]]
        per_step = max(1, round(rate / 1000 / len(socks)))
        sent, step = 0, 0.001
        start = next_at = time.perf_counter()
        while (now := time.perf_counter()) < start + seconds:
            if now < next_at:
                time.sleep(min(next_at - now, 0.0005))
                continue
            for k in socks:
                sent += fastpath.send_records(
                    self.gen.socks[k], self.gen.bootnode, self.records[k], 16, self.pos[k], per_step
                )
                self.pos[k] = (self.pos[k] + per_step) % self.counts[k]
            next_at += step
        return sent

    def sweep(self) -> None:
        """Every peer once."""
        for k, s in enumerate(self.gen.socks):
            if self.counts[k]:
                fastpath.send_records(s, self.gen.bootnode, self.records[k], 16, 0, self.counts[k])


def run_one(pure: bool, args) -> dict[str, float]:
    label = "pure" if pure else "fast"
    # The fallback registers and heartbeats several times slower: its peer timeout must
    # cover the whole registration phase, or peers expire before the flood starts.
    timeout = max(args.timeout, args.peers / 5000) if pure else args.timeout
    log(
        f"[{label}] starting bootnode ({'pure-Python fallback' if pure else 'Cython fast path'}, "
        f"peer timeout {timeout:g}s)"
    )
    node = Bootnode(pure, args.peers, timeout)
    gen = Generator(node.addr, args.sockets)
    try:
        time.sleep(0.5)  # let the process settle before the RSS baseline
        m0 = node.metrics()
        gen.open()
        tokens: dict[int, bytes] = {}
        n_main = args.peers
        last_sweep = [time.perf_counter()]

        def keepalive() -> None:
            # Peers registered early must not expire while the rest register.
            if time.perf_counter() - last_sweep[0] > timeout / 3 and tokens:
                Heartbeats(gen, tokens, list(tokens)).sweep()
                last_sweep[0] = time.perf_counter()

        base = 10_000_000  # the peers of the fan-out room
        t_keys = time.perf_counter()
        keys = PeerKeys(0, n_main, gen.bootnode_key, args.generators)
        fanout_keys = PeerKeys(base, FANOUT_ROOM_SIZE + 1, gen.bootnode_key, args.generators)
        log(f"[{label}] proof keys of {n_main} peers computed in {time.perf_counter() - t_keys:.1f}s")
        log(f"[{label}] registering {n_main} peers in rooms of {args.room_size}")
        t_reg = register_peers(gen, keys, 0, n_main, args.room_size, tokens, keepalive, deadline_s=600)
        m1 = node.metrics()
        accepted = m1["gochat_register_accepted_total"] - m0.get("gochat_register_accepted_total", 0)
        registrations_per_s = accepted / t_reg
        reg_cpu_us = (m1["process_cpu_seconds_total"] - m0["process_cpu_seconds_total"]) / accepted * 1e6
        bytes_per_peer = (m1["process_resident_memory_bytes"] - m0["process_resident_memory_bytes"]) / n_main
        log(
            f"[{label}] {accepted:.0f} registrations in {t_reg:.1f}s ({reg_cpu_us:.1f} us bootnode CPU each); "
            f"RSS +{bytes_per_peer:.0f} B/peer"
        )

        expiring = list(range(n_main - max(1, n_main // 100), n_main))
        keep = list(range(0, n_main - len(expiring)))
        hb_keep = Heartbeats(gen, tokens, keep)
        hb_expiring = Heartbeats(gen, tokens, expiring)
        hb_expiring.sweep()  # everyone fresh before the measured window

        log(
            f"[{label}] heartbeat flood for {args.seconds}s from {len(gen.socks)} sockets, "
            f"{args.generators} generator processes"
        )
        m2 = node.metrics()
        t0 = time.perf_counter()
        sent = 0
        sent = hb_keep.flood(args.seconds, args.generators)
        elapsed = time.perf_counter() - t0
        m3 = node.metrics()
        hbs = m3["gochat_fast_heartbeats_total"] - m2["gochat_fast_heartbeats_total"]
        cpu = m3["process_cpu_seconds_total"] - m2["process_cpu_seconds_total"]
        unknown = m3["gochat_fast_unknown_token_total"] - m2["gochat_fast_unknown_token_total"]
        batches = m3["gochat_fast_batches_total"] - m2["gochat_fast_batches_total"]
        log(
            f"[{label}] sent {sent}, bootnode processed {hbs:.0f} ({hbs / elapsed:,.0f}/s, "
            f"{cpu / max(hbs, 1) * 1e6:.2f} us CPU each, {unknown:.0f} unknown, "
            f"{hbs / max(batches, 1):.1f} datagrams per receive batch)"
        )

        log(f"[{label}] letting {len(expiring)} peers (1%) fall silent; others keep heartbeating")
        # Their last heartbeats, close together and just after a wheel-tick boundary of
        # their deadline (the bootnode's clock is this machine's CLOCK_MONOTONIC, in ms,
        # ticks of 128 ms), so that one tick finds them all due.
        timeout_ms = int(timeout * 1000)
        wait_until_idle(node, gen)  # no backlog between our clock and the bootnode's
        while (int(time.monotonic() * 1000) + timeout_ms) % 128 > 8:
            time.sleep(0.001)
        hb_expiring.sweep()
        expired0 = m3.get("gochat_expired_total", 0)
        deadline = time.perf_counter() + timeout + 30
        while time.perf_counter() < deadline:
            hb_keep.send(256)
            gen.drain(lambda i, t: None)
            if time.perf_counter() - t0 > 0.5:
                m4 = node.metrics()
                if m4.get("gochat_expired_total", 0) - expired0 >= len(expiring):
                    break
                t0 = time.perf_counter()
        m4 = node.metrics()
        expired = m4.get("gochat_expired_total", 0) - expired0
        log(
            f"[{label}] {expired:.0f} expired; largest tick expired {m4['gochat_tick_largest_expired']:.0f} "
            f"in {m4['gochat_tick_largest_tick_seconds'] * 1000:.3f} ms "
            f"(announcing them: {m4['gochat_tick_largest_announce_seconds'] * 1000:.1f} ms)"
        )

        log(f"[{label}] fan-out: building a room of {FANOUT_ROOM_SIZE} peers")
        register_peers(
            gen, fanout_keys, base, FANOUT_ROOM_SIZE, FANOUT_ROOM_SIZE, tokens, lambda: None, 120, fixed_room=0
        )
        Heartbeats(gen, tokens, list(range(base, base + FANOUT_ROOM_SIZE))).sweep()  # none expired meanwhile
        wait_until_idle(node, gen)  # so that the measured join is alone in its batch
        register_peers(
            gen, fanout_keys, base + FANOUT_ROOM_SIZE, 1, FANOUT_ROOM_SIZE, tokens, lambda: None, 30, fixed_room=0
        )
        m5 = node.metrics()
        fanout_ms = m5["gochat_tick_last_join_seconds"] * 1000
        log(f"[{label}] join announced to a room of {m5['gochat_tick_last_join_room_size']:.0f} in {fanout_ms:.2f} ms")
        return {
            "implementation": "pure-python" if pure else "cython",
            "peers": n_main,
            "peer_timeout_s": timeout,
            "heartbeats_per_s": hbs / elapsed,
            "heartbeats_sent": sent,
            "heartbeats_processed": hbs,
            "datagrams_per_batch": hbs / max(batches, 1),
            "cpu_us_per_heartbeat": cpu / max(hbs, 1) * 1e6,
            "bytes_per_peer": bytes_per_peer,
            "expire_tick_ms": m4["gochat_tick_largest_tick_seconds"] * 1000,
            "expire_tick_expired": m4["gochat_tick_largest_expired"],
            "expire_announce_ms": m4["gochat_tick_largest_announce_seconds"] * 1000,
            "registrations_per_s": registrations_per_s,
            "registration_cpu_us": reg_cpu_us,
            "registrations_per_cpu_s": 1e6 / reg_cpu_us,
            "fanout_1000_ms": fanout_ms,
            "fanout_room_size": m5["gochat_tick_last_join_room_size"],
        }
    finally:
        gen.close()
        node.stop()


def run_flood(args, workers: int) -> dict[str, float]:
    """The fast path with ``workers`` processes on one port: the heartbeat flood alone
    (heartbeats per second, and CPU per heartbeat summed over the workers)."""
    label = f"{workers} worker{'s' if workers > 1 else ''}"
    node = Bootnode(False, args.peers, args.timeout, extra=["--workers", str(workers)])
    gen = Generator(node.addr, args.sockets)
    try:
        gen.open()
        tokens: dict[int, bytes] = {}
        keys = PeerKeys(0, args.peers, gen.bootnode_key, args.generators)
        log(f"[{label}] registering {args.peers} peers in rooms of {args.room_size}")
        register_peers(gen, keys, 0, args.peers, args.room_size, tokens, lambda: None, deadline_s=600)
        hb = Heartbeats(gen, tokens, list(tokens))
        hb.sweep()
        wait_until_idle(node, gen)
        m0 = node.metrics()
        t0 = time.perf_counter()
        sent = hb.flood(args.seconds, args.generators)
        elapsed = time.perf_counter() - t0
        m1 = node.metrics()
        hbs = m1["gochat_fast_heartbeats_total"] - m0["gochat_fast_heartbeats_total"]
        cpu = m1["process_cpu_seconds_total"] - m0["process_cpu_seconds_total"]
        log(f"[{label}] sent {sent}, processed {hbs / elapsed:,.0f}/s, {cpu / max(hbs, 1) * 1e6:.2f} us CPU each")
        return {
            "workers": workers,
            "heartbeats_per_s": hbs / elapsed,
            "cpu_us_per_heartbeat": cpu / max(hbs, 1) * 1e6,
            "bootnode_cpu_s_per_s": cpu / elapsed,
            "heartbeats_sent": sent,
        }
    finally:
        gen.close()
        node.stop()


def run_paced(args, batch_wait: str) -> dict[str, float]:
    """The fast path under a paced load: ``args.rate`` heartbeats/s offered evenly (not a
    flood), so the bootnode wakes for a few datagrams at a time unless it lets them gather
    (``batch_wait``). Returns its CPU per heartbeat and datagrams per receive batch."""
    label = f"paced, batch wait {batch_wait}"
    node = Bootnode(False, args.peers, args.timeout, batch_wait=batch_wait)
    gen = Generator(node.addr, args.sockets)
    try:
        gen.open()
        tokens: dict[int, bytes] = {}
        last_sweep = [time.perf_counter()]

        def keepalive() -> None:
            if time.perf_counter() - last_sweep[0] > args.timeout / 3 and tokens:
                Heartbeats(gen, tokens, list(tokens)).sweep()
                last_sweep[0] = time.perf_counter()

        keys = PeerKeys(0, args.peers, gen.bootnode_key, args.generators)
        register_peers(gen, keys, 0, args.peers, args.room_size, tokens, keepalive, deadline_s=600)
        hb = Heartbeats(gen, tokens, list(tokens))
        hb.sweep()
        wait_until_idle(node, gen)
        m0 = node.metrics()
        t0 = time.perf_counter()
        sent = hb.paced(args.seconds, args.rate)
        elapsed = time.perf_counter() - t0
        time.sleep(0.2)
        m1 = node.metrics()
        hbs = m1["gochat_fast_heartbeats_total"] - m0["gochat_fast_heartbeats_total"]
        cpu = m1["process_cpu_seconds_total"] - m0["process_cpu_seconds_total"]
        batches = m1["gochat_fast_batches_total"] - m0["gochat_fast_batches_total"]
        result = {
            "offered_per_s": sent / elapsed,
            "heartbeats_per_s": hbs / elapsed,
            "cpu_us_per_heartbeat": cpu / max(hbs, 1) * 1e6,
            "datagrams_per_batch": hbs / max(batches, 1),
        }
        log(
            f"[{label}] offered {result['offered_per_s']:,.0f}/s, processed {result['heartbeats_per_s']:,.0f}/s, "
            f"{result['cpu_us_per_heartbeat']:.2f} us CPU each, {result['datagrams_per_batch']:.1f} per batch"
        )
        return result
    finally:
        gen.close()
        node.stop()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--peers", type=int, default=100_000)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--json", dest="json_path")
    p.add_argument("--room-size", type=int, default=10)
    p.add_argument("--sockets", type=int, default=4, help="source sockets of the generator")
    p.add_argument(
        "--generators",
        type=int,
        default=2,
        help="load generator processes: enough to saturate the bootnode, so its CPU per "
        "heartbeat is the per-packet cost and not wake-up overhead",
    )
    p.add_argument("--timeout", type=float, default=15.0, help="PEER_TIMEOUT of the bootnode under test")
    p.add_argument("--only", choices=["fast", "pure"], help="run one implementation")
    p.add_argument(
        "--rate",
        type=float,
        help="paced mode: offer this many heartbeats per second evenly (fast path, batch wait off and on)",
    )
    p.add_argument(
        "--workers-compare",
        action="store_true",
        help="the heartbeat flood with 1 and 2 worker processes (--workers) in one run",
    )
    args = p.parse_args(argv)
    if args.peers < 100 or args.seconds <= 0 or args.seconds > 600:
        p.error("--peers >= 100 and 0 < --seconds <= 600")
    if args.workers_compare:
        compared: dict = {f"{w}_workers": run_flood(args, w) for w in (1, 2)}
        compared["scaling"] = compared["2_workers"]["heartbeats_per_s"] / compared["1_workers"]["heartbeats_per_s"]
        compared["machine"] = f"{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cores"
        compared["date"] = time.strftime("%Y-%m-%d")
        print(json.dumps(compared, indent=2))
        if args.json_path:
            with open(args.json_path, "w") as f:
                json.dump(compared, f, indent=2)
        return 0

    if args.rate:
        paced = {wait: run_paced(args, wait) for wait in ("0", "1ms")}
        paced["machine"] = f"{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cores"
        paced["date"] = time.strftime("%Y-%m-%d")
        print(json.dumps(paced, indent=2))
        if args.json_path:
            with open(args.json_path, "w") as f:
                json.dump(paced, f, indent=2)
        return 0
    results = {}
    for name in ("fast", "pure"):
        if args.only in (None, name):
            results[name] = run_one(name == "pure", args)
    if "fast" in results and "pure" in results:
        results["ratio"] = results["pure"]["cpu_us_per_heartbeat"] / results["fast"]["cpu_us_per_heartbeat"]
    results["machine"] = f"{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    results["date"] = time.strftime("%Y-%m-%d")
    print_table(results)
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(results, f, indent=2)
    return 0


def print_table(results: dict) -> None:
    rows = [
        ("heartbeats_per_s", "heartbeats processed /s", "{:,.0f}"),
        ("cpu_us_per_heartbeat", "bootnode CPU per heartbeat (us)", "{:.3f}"),
        ("bytes_per_peer", "RSS per registered peer (bytes)", "{:,.0f}"),
        ("expire_tick_ms", "expiry tick, ~1% expiring (ms)", "{:.3f}"),
        ("expire_tick_expired", "  peers expired in that tick", "{:,.0f}"),
        ("expire_announce_ms", "  announcing them (ms)", "{:.1f}"),
        ("registrations_per_s", "registrations /s (wall clock)", "{:,.0f}"),
        ("registrations_per_cpu_s", "registrations per bootnode CPU second", "{:,.0f}"),
        ("fanout_1000_ms", "join announced to 1,000 peers (ms)", "{:.2f}"),
    ]
    cols = [k for k in ("fast", "pure") if k in results]
    peers = results[cols[0]]["peers"]
    print(f"\nbootnode load test: {peers:,} peers, {results['date']}, {results['machine']}")
    print(f"{'':38}" + "".join(f"{c:>16}" for c in cols))
    for key, label, fmt in rows:
        print(f"{label:38}" + "".join(f"{fmt.format(results[c][key]):>16}" for c in cols))
    if "ratio" in results:
        print(f"{'ratio pure/fast, CPU per heartbeat':38}{results['ratio']:>16.2f}")


if __name__ == "__main__":
    sys.exit(main())
