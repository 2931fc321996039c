"""Does our NAT keep one public port for every destination? (sans-I/O)

In the manner of RFC 5780's mapping test, without RFC 3489's classification: ask the
bootnode's main port for our reflexive address (STUN Binding); its answer names a second
port (OTHER-ADDRESS); ask that one too. The same public endpoint both times means the
NAT maps endpoint-independently, and hole punching works with every kind of NAT but
the strictest; a different one means it maps per destination (a "symmetric" NAT), and
peers behind port-restricted or symmetric NATs cannot reach us directly. Told once.
"""

from __future__ import annotations

from collections.abc import Callable

from gochat.wire import stun
from gochat.wire.control import Endpoint
from gochat.wire.endpoints import canonical_endpoint

TRIES = 3  # requests per port before giving up (quietly: nothing is known then)
INTERVAL_s = 0.5


class NatDiscovery:
    def __init__(self, bootnode: Endpoint, random_bytes: Callable[[int], bytes], now: float) -> None:
        self.bootnode = bootnode
        self._random = random_bytes
        self.outbox: list[tuple[bytes, Endpoint]] = []
        self.target: Endpoint | None = bootnode  # who we ask now; None when done
        self._txid = random_bytes(12)
        self._tries = 0
        self._next = now
        self.first: Endpoint | None = None  # our endpoint as the main port saw it
        self.independent: bool | None = None  # the answer, once known

    def get_timer(self) -> float | None:
        return self._next if self.target is not None else None

    def handle_timer(self, now: float) -> None:
        if self.target is None or now < self._next:
            return
        if self._tries >= TRIES:
            self.target = None  # no answer: the bootnode has no discovery port, or loss
            return
        self._tries += 1
        self._next = now + INTERVAL_s
        ask = self.first is None  # the main port: name your second one
        self.outbox.append((stun.binding_request(self._txid, ask_other_port=ask), self.target))

    def on_datagram(self, data: bytes, source: Endpoint, now: float) -> bool:
        """A STUN answer from the port we asked; True when it was ours to take."""
        if self.target is None or source != self.target:
            return False
        parsed = stun.parse_binding_success(data, self._txid)
        if parsed is None:
            return True
        mapped, other_port = parsed
        mapped = canonical_endpoint(mapped)
        if self.first is None:
            self.first = mapped
            if other_port is None or other_port == self.bootnode[1]:
                self.target = None  # the bootnode names no second port: nothing to compare
                return True
            self.target = (self.bootnode[0], other_port)
            self._txid, self._tries, self._next = self._random(12), 0, now
            self.handle_timer(now)
            return True
        self.independent = mapped == self.first
        self.target = None
        return True
