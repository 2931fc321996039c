"""End-to-end message latency between two real client processes on loopback.

What a user sees: a line written to alice's stdin until bob prints the message event
(both pipes included), measured by this process with one clock. Messages are spaced
so that the figure is latency, not queueing. Prints p50/p99 and optionally JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from tests.procs import Bootnode, Client


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--gap-ms", type=float, default=10.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        boot = Bootnode()
        alice = Client(boot.address, "alice", Path(tmp))
        bob = Client(boot.address, "bob", Path(tmp))
        try:
            alice.wait_event("peer_connected", name="bob")
            bob.wait_event("peer_connected", name="alice")
            sent = {}
            for i in range(args.messages):
                text = f"m{i}"
                sent[text] = time.monotonic()
                alice.say(text)
                time.sleep(args.gap_ms / 1000)  # pacing the load, not synchronisation
            last = f"m{args.messages - 1}"
            bob.wait_for(lambda e: e.get("text") == last, timeout=60)
            lat = sorted((bob.arrivals[id(e)] - sent[e["text"]]) * 1000 for e in bob.kinds("message"))
        finally:
            for c in (alice, bob):
                c.stop()
            boot.stop()
    result = {
        "messages": len(lat),
        "p50_ms": round(statistics.median(lat), 3),
        "p99_ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))], 3),
        "max_ms": round(lat[-1], 3),
    }
    print(
        f"end-to-end latency over loopback, {result['messages']} messages: "
        f"p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, max {result['max_ms']} ms"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
