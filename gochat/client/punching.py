"""Connectivity checks towards one peer (sans-I/O), in the manner of ICE (RFC 8445).

A request carries a random txid and a MAC only the two peers can compute; a reply that
echoes a txid we sent proves a two-way path, and its source becomes the path. A valid
request from an address that is not a candidate (the peer's symmetric NAT picked a new
port towards us) is adopted as a peer-reflexive candidate and checked at once.

This module owns the candidates, the outstanding txids and the punch schedule. It
returns datagrams to send and verdicts; the peer machine (peer.py) decides what they
mean for the session. Time is an argument.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from collections.abc import Callable, Sequence

from gochat.constants import PUNCH_DEADLINE_s, PUNCH_INTERVAL_s, PUNCH_SCHEDULE_s
from gochat.wire import data as pw
from gochat.wire.control import Endpoint

MAX_TXIDS = 64  # requests awaiting a reply; older ones are forgotten

Datagram = tuple[bytes, Endpoint]


class Verdict(enum.Enum):
    """What an incoming PUNCH means."""

    BAD_MAC = "bad_punch_mac"  # not from the peer: dropped
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
        self.candidates: list[Endpoint] = []
        self.set_endpoints(endpoints)
        self.started = 0.0
        self.next_round = 0.0
        self._round = 0

    def set_endpoints(self, endpoints: Sequence[Endpoint]) -> None:
        """The bootnode's view: public endpoint first, then local ones. Peer-reflexive
        candidates found earlier are kept behind them."""
        fresh = list(dict.fromkeys(endpoints))
        self.candidates = fresh + [c for c in self.candidates if c not in fresh]

    def add_candidate(self, endpoint: Endpoint) -> bool:
        """Adopt ``endpoint`` (peer-reflexive, or the last path); False if already known."""
        if endpoint in self.candidates:
            return False
        self.candidates.append(endpoint)
        return True

    # --- schedule -----------------------------------------------------------------------

    def start(self, now: float) -> None:
        """Begin a new series of rounds: at PUNCH_SCHEDULE_s from now, then every
        PUNCH_INTERVAL_s, until the deadline."""
        self.started = now
        self.next_round = now
        self._round = 0

    @property
    def deadline(self) -> float:
        return self.started + PUNCH_DEADLINE_s

    def run_round(self, now: float) -> list[Datagram]:
        """A request to every candidate; the schedule moves to the next round."""
        out = [self.request(endpoint) for endpoint in self.candidates]
        self._round += 1
        if self._round < len(PUNCH_SCHEDULE_s):
            self.next_round = self.started + PUNCH_SCHEDULE_s[self._round]
        else:
            self.next_round = now + PUNCH_INTERVAL_s
        return out

    # --- checks -------------------------------------------------------------------------

    def request(self, endpoint: Endpoint) -> Datagram:
        """A check towards ``endpoint`` with a fresh txid."""
        txid = self._random(pw.TXID_SIZE_bytes)
        self._txids[txid] = None
        while len(self._txids) > MAX_TXIDS:
            self._txids.popitem(last=False)
        return pw.encode_punch(self._key, self._own_key, txid), endpoint

    def check(self, punch: pw.Punch) -> Verdict:
        """Authenticate an incoming PUNCH and say what it is (a reply's txid is used up)."""
        if not pw.verify_punch(self._key, punch):
            return Verdict.BAD_MAC
        if not punch.reply:
            return Verdict.REQUEST
        if punch.txid not in self._txids:
            return Verdict.UNEXPECTED_REPLY
        del self._txids[punch.txid]
        return Verdict.PATH_FOUND

    def answer(self, punch: pw.Punch, source: Endpoint) -> Datagram:
        """The reply to a request, to the address it came from."""
        return pw.encode_punch(self._key, self._own_key, punch.txid, reply=True), source
