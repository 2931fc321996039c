"""A transparent user-space UDP relay that delays and reorders datagrams (the kernel
here has no netem). Run inside a router namespace whose nft rules divert the traffic
to it with TPROXY; it forwards every datagram to its original destination, from its
original source, after a delay plus random jitter (jitter larger than the gap between
datagrams reorders them). Ordinary UDP sockets with IP_TRANSPARENT: virtual links hand
packets over with unfinished checksums, which raw-frame relays would get wrong.

usage: python udp_relay.py PORT DELAY_MS JITTER_MS SECONDS
"""

from __future__ import annotations

import heapq
import random
import selectors
import socket
import struct
import sys
import time

IP_TRANSPARENT = 19
IP_RECVORIGDSTADDR = 20


def _transparent_socket(bind) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
    s.setsockopt(socket.SOL_IP, IP_RECVORIGDSTADDR, 1)
    s.bind(bind)
    s.setblocking(False)
    return s


def main() -> None:
    port, delay_ms, jitter_ms, seconds = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
    rng = random.Random(1)
    sel = selectors.DefaultSelector()
    sel.register(_transparent_socket(("0.0.0.0", port)), selectors.EVENT_READ)
    senders: dict = {}
    queue: list = []
    seq = 0
    print("relay ready", flush=True)
    end = time.monotonic() + seconds
    received = forwarded = 0
    next_report = time.monotonic() + 1.0
    while time.monotonic() < end:
        if time.monotonic() >= next_report:
            print(
                f"relay t={time.monotonic():.1f} received={received} forwarded={forwarded} queued={len(queue)} "
                f"sockets={len(senders)}",
                file=sys.stderr,
                flush=True,
            )
            next_report += 1.0
        timeout = max(0.0, queue[0][0] - time.monotonic()) if queue else 0.2
        for key, _ in sel.select(min(timeout, 0.2)):
            try:
                data, anc, _, src = key.fileobj.recvmsg(65535, 256)
            except BlockingIOError:
                continue
            dst = None
            for level, kind, value in anc:
                if level == socket.SOL_IP and kind == IP_RECVORIGDSTADDR:
                    port_be, addr = struct.unpack_from("!2xH4s", value)
                    dst = (socket.inet_ntoa(addr), port_be)
            if dst is None:
                continue
            due = time.monotonic() + (delay_ms + rng.random() * jitter_ms) / 1000.0
            heapq.heappush(queue, (due, seq, src, dst, data))
            received += 1
            seq += 1
        now = time.monotonic()
        while queue and queue[0][0] <= now:
            _, _, src, dst, data = heapq.heappop(queue)
            sender = senders.get(src)
            if sender is None:
                sender = senders[src] = _transparent_socket(src)
                sel.register(sender, selectors.EVENT_READ)  # replies to src may be delivered to it
            try:
                sender.sendto(data, dst)
                forwarded += 1
            except OSError as exc:
                print(f"relay: send {src} -> {dst} failed: {exc}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
