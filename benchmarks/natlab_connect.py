"""Time from client start to peer_connected in the NAT lab (port-restricted cone NAT on
both sides), and from the bootnode's introduction (peer_joined) to peer_connected.
Needs root for the network namespaces; prints why it skips otherwise."""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from tests.natlab import BOOTNODE, CLIENT_PORT, PORT_RESTRICTED, Lab, missing_requirements
from tests.procs import Bootnode, Client


def one_run(tmp: Path) -> tuple:
    with Lab(PORT_RESTRICTED, PORT_RESTRICTED) as lab:
        boot = Bootnode(listen=BOOTNODE, prefix=lab.prefix(lab.ns["boot"]))
        try:
            t0 = time.monotonic()
            alice = Client(BOOTNODE, "alice", tmp, prefix=lab.prefix(lab.hosts["a"][0]), port=CLIENT_PORT)
            bob = Client(BOOTNODE, "bob", tmp, prefix=lab.prefix(lab.hosts["b"][0]), port=CLIENT_PORT)
            try:
                connected = [c.wait_event("peer_connected", timeout=30) for c in (alice, bob)]
                joined = [c.wait_event("peer_joined", timeout=30) for c in (alice, bob)]
                start = max(c.arrivals[id(e)] for c, e in zip((alice, bob), connected, strict=True)) - t0
                intro = max(
                    c.arrivals[id(e)] - c.arrivals[id(j)]
                    for c, e, j in zip((alice, bob), connected, joined, strict=True)
                )
                return start, intro
            finally:
                alice.stop()
                bob.stop()
        finally:
            boot.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    why = missing_requirements()
    if why:
        print(f"NAT lab connect benchmark skipped: {why}")
        return
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.runs):
            runs.append(one_run(Path(tmp) / str(i)))
    start = statistics.median(r[0] for r in runs) * 1000
    intro = statistics.median(r[1] for r in runs) * 1000
    print(
        f"NAT lab, port-restricted both sides, {args.runs} runs (medians): client start -> peer_connected "
        f"{start:.0f} ms (process start-up included); bootnode introduction -> peer_connected {intro:.1f} ms"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "runs": args.runs,
                    "start_to_connected_ms": round(start, 1),
                    "introduction_to_connected_ms": round(intro, 2),
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
