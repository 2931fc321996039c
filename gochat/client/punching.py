"""Connectivity checks towards one peer (sans-I/O), in the manner of ICE (RFC 8445).

A request carries a random txid, the sender's clock and a MAC only the two peers can
compute; a reply that echoes a txid we sent proves a two-way path, and its source
becomes the path. A valid request from an address that is not a candidate (the peer's
symmetric NAT picked a new port towards us) is adopted as a peer-reflexive candidate
and checked at once.

Nothing here may turn one packet into many towards an address nobody validated:

- requests must be fresh (their clock newer than what the peer sent before, within a
  window), so a captured punch replayed from elsewhere gets nothing;
- only the initiator keeps peer-reflexive candidates (the responder's answers are all
  the initiator needs), at most MAX_REFLEXIVE of them; more are not adopted;
- a peer-reflexive candidate that never answered gets one check per fresh request it
  sent, and the initiator's check to it replaces the answer: what we send to an
  address nobody validated stays within what came from it, datagram for datagram of
  the same size;
- the announced candidates (the bootnode's view, filtered by the room for local
  endpoints that cannot be local) are the only ones a new series starts from.

This module owns the candidates, the outstanding txids and the punch schedule. It
returns datagrams to send and verdicts; the peer machine (peer.py) decides what they
mean for the session. Time is an argument.
"""

from __future__ import annotations

import enum
import ipaddress
from collections import OrderedDict
from collections.abc import Callable, Sequence

from gochat.constants import PUNCH_DEADLINE_s, PUNCH_INTERVAL_s, PUNCH_SCHEDULE_s
from gochat.wire import data as pw
from gochat.wire.control import Endpoint
from gochat.wire.endpoints import is_relay

MAX_TXIDS = 64  # requests awaiting a reply; older ones are forgotten
MAX_REFLEXIVE = 4  # peer-reflexive candidates per peer
FRESHNESS_WINDOW_ms = 10_000  # a request older than the newest one by more is stale
MAX_RECENT = 256  # request clocks remembered inside the window

Datagram = tuple[bytes, Endpoint]
_SHARED_ADDRESS_SPACE = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT (RFC 6598)


def punchable(endpoints: Sequence[Endpoint], own_public: Endpoint | None) -> list[Endpoint]:
    """The candidates of an announced peer: its public endpoint (the bootnode saw it,
    after a cookie round trip), then those of its local endpoints that can be local to
    us: private, loopback, link-local or shared addresses, and only when the peer's
    public address is ours (behind the same NAT). A member cannot make the room punch
    an address of its choosing elsewhere."""
    if not endpoints:
        return []
    public, *local = endpoints
    out = [public]
    if own_public is not None and own_public[0] == public[0]:
        for endpoint in local:
            try:
                ip = ipaddress.ip_address(endpoint[0].split("%", 1)[0])
            except ValueError:
                continue
            if ip.is_private or ip.is_loopback or ip.is_link_local or ip in _SHARED_ADDRESS_SPACE:
                out.append(endpoint)
    return list(dict.fromkeys(out))


class Verdict(enum.Enum):
    """What an incoming PUNCH means."""

    BAD_MAC = "bad_punch_mac"  # not from the peer: dropped
    STALE = "stale_punch"  # a request older than the peer's recent ones, or seen before: dropped
    UNEXPECTED_REPLY = "unexpected_punch_reply"  # a reply to no request of ours: dropped
    PATH_FOUND = "path_found"  # a reply to our request: a two-way path
    REQUEST = "request"  # the peer checks us: answer it


class Punching:
    """The candidates of one peer and the checks towards them."""

    def __init__(
        self, punch_key: bytes, own_key: bytes, random_bytes: Callable[[int], bytes], endpoints: Sequence[Endpoint]
    ) -> None:
        self._key = punch_key
        self._own_key = own_key
        self._random = random_bytes
        self._txids: OrderedDict[bytes, None] = OrderedDict()
        self.announced: list[Endpoint] = []
        # peer-reflexive candidate -> checks it may still get (None: it answered, no limit)
        self._reflexive: OrderedDict[Endpoint, int | None] = OrderedDict()
        self.set_endpoints(endpoints)
        self.started = 0.0
        self.next_round = 0.0
        self._round = 0
        self._last_time_ms = 0  # the clock of our last request (strictly increasing)
        self._newest_ms: int | None = None  # the peer's newest fresh request
        self._recent: set[int] = set()  # the peer's request clocks inside the window
        self.relay_open = False  # the peer checked us through the relay in this series

    @property
    def candidates(self) -> list[Endpoint]:
        """Announced candidates first, then peer-reflexive ones."""
        return self.announced + [c for c in self._reflexive if c not in self.announced]

    def set_endpoints(self, endpoints: Sequence[Endpoint]) -> None:
        """The bootnode's view (public endpoint first, then local ones that can be local).
        Peer-reflexive candidates found earlier are kept."""
        self.announced = list(dict.fromkeys(endpoints))

    def is_announced(self, endpoint: Endpoint) -> bool:
        return endpoint in self.announced

    def add_candidate(self, endpoint: Endpoint) -> None:
        """``endpoint`` answered us before (the last path of a session): a validated
        candidate, checked without a budget."""
        if endpoint not in self.announced:
            self._reflexive.pop(endpoint, None)
            self._reflexive[endpoint] = None
            while len(self._reflexive) > MAX_REFLEXIVE:
                self._reflexive.popitem(last=False)

    def is_validated(self, endpoint: Endpoint) -> bool:
        """Announced by the bootnode (which validated the public one), or it answered."""
        return endpoint in self.announced or (endpoint in self._reflexive and self._reflexive[endpoint] is None)

    def on_request(self, source: Endpoint, adopt: bool) -> bool:
        """A fresh request came from ``source``. An unvalidated source is adopted as a
        peer-reflexive candidate (if ``adopt`` and there is room) and may get one more
        check for it. True when ``source`` is validated."""
        if self.is_validated(source):
            return True
        if source in self._reflexive:
            self._reflexive[source] = (self._reflexive[source] or 0) + 1
        elif adopt and len(self._reflexive) < MAX_REFLEXIVE:
            self._reflexive[source] = 1
        return False

    def _may_check(self, endpoint: Endpoint) -> bool:
        """Spend one check of ``endpoint``'s budget, if it has one left."""
        if endpoint not in self._reflexive or endpoint in self.announced:
            return True
        credit = self._reflexive[endpoint]
        if credit is None:
            return True
        if credit <= 0:
            return False
        self._reflexive[endpoint] = credit - 1
        return True

    def connected(self) -> None:
        """A session is up: replies to the checks that found it are no longer news."""
        self._txids.clear()

    # --- schedule -----------------------------------------------------------------------

    def start(self, now: float) -> None:
        """Begin a new series of rounds: at PUNCH_SCHEDULE_s from now, then every
        PUNCH_INTERVAL_s, until the deadline. The peer may have restarted (with a clock
        that went back): the freshness window starts over too."""
        self.started = now
        self.next_round = now
        self._round = 0
        self._newest_ms = None
        self._recent.clear()
        self.relay_open = False

    @property
    def deadline(self) -> float:
        return self.started + PUNCH_DEADLINE_s

    def direct_candidates(self) -> list[Endpoint]:
        """Every candidate but the relay: where a relayed session probes for a direct path."""
        return [c for c in self.candidates if not is_relay(c)]

    def run_round(self, now: float, relay_delay: float = 0.0) -> list[Datagram]:
        """A request to every candidate that may get one; the schedule moves on. The
        relay candidate is checked from ``relay_delay`` into the series (direct paths
        are found first when they exist), or as soon as the peer checked us through it."""
        relay_due = self.relay_open or now >= self.started + relay_delay
        out = [
            self.request(endpoint, now)
            for endpoint in self.candidates
            if (relay_due or not is_relay(endpoint)) and self._may_check(endpoint)
        ]
        self._round += 1
        if self._round < len(PUNCH_SCHEDULE_s):
            self.next_round = self.started + PUNCH_SCHEDULE_s[self._round]
        else:
            self.next_round = now + PUNCH_INTERVAL_s
        return out

    # --- checks -------------------------------------------------------------------------

    def _next_time_ms(self, now: float) -> int:
        self._last_time_ms = max(int(now * 1000), self._last_time_ms + 1)
        return self._last_time_ms

    def request(self, endpoint: Endpoint, now: float) -> Datagram:
        """A check towards ``endpoint`` with a fresh txid."""
        txid = self._random(pw.TXID_SIZE_bytes)
        self._txids[txid] = None
        while len(self._txids) > MAX_TXIDS:
            self._txids.popitem(last=False)
        return pw.encode_punch(self._key, self._own_key, txid, self._next_time_ms(now)), endpoint

    def triggered_check(self, endpoint: Endpoint, now: float) -> list[Datagram]:
        """A check at once towards a candidate that just sent a request, if it may get one."""
        return [self.request(endpoint, now)] if self._may_check(endpoint) else []

    def check(self, punch: pw.Punch, source: Endpoint) -> Verdict:
        """Authenticate an incoming PUNCH and say what it is (a reply's txid is used up)."""
        if not pw.verify_punch(self._key, punch):
            return Verdict.BAD_MAC
        if not punch.reply:
            return Verdict.REQUEST if self._fresh(punch.time_ms) else Verdict.STALE
        if punch.txid not in self._txids:
            return Verdict.UNEXPECTED_REPLY
        del self._txids[punch.txid]
        if source in self._reflexive:
            self._reflexive[source] = None  # it answered: a validated address
        return Verdict.PATH_FOUND

    def _fresh(self, time_ms: int) -> bool:
        """Newer than the peer's newest request less the window, and not seen before."""
        newest = self._newest_ms
        if newest is not None and (time_ms <= newest - FRESHNESS_WINDOW_ms or time_ms in self._recent):
            return False
        if newest is None or time_ms > newest:
            self._newest_ms = newest = time_ms
            self._recent = {t for t in self._recent if t > newest - FRESHNESS_WINDOW_ms}
        self._recent.add(time_ms)
        while len(self._recent) > MAX_RECENT:
            self._recent.discard(min(self._recent))
        return True

    def answer(self, punch: pw.Punch, source: Endpoint, now: float) -> Datagram:
        """The reply to a request, to the address it came from (the same size)."""
        reply = pw.encode_punch(self._key, self._own_key, punch.txid, self._next_time_ms(now), reply=True)
        return reply, source
