"""Every event a client reports, as small frozen values (after h11's ``_events.py``).

The client's machines emit them, the driver adds what needs local files (trust of a
peer's key), and the front ends consume them: the terminal UI draws them, line mode
prints ``to_json()`` (the schema README.md documents, one JSON object per line), and
the tests dispatch on their types. No front end re-derives protocol state.

Each class names its line-mode ``kind``; its fields, in order, are the JSON fields
(``sender`` is written ``from``, which Python reserves). Optional fields that are
None or False are left out of the JSON, as the README's table says.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, is_dataclass
from typing import Any, ClassVar

_JSON_NAMES = {"sender": "from"}
_OMITTED_WHEN_UNSET = frozenset({"fatal"})


@dataclass(frozen=True, slots=True)
class Event:
    """Base of every event; ``kind`` is its line-mode name."""

    kind: ClassVar[str] = ""

    def to_json(self) -> dict[str, Any]:
        """The line-mode JSON object: ``{"event": kind, field: value, ...}``."""
        out: dict[str, Any] = {"event": self.kind}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in _OMITTED_WHEN_UNSET and not value:
                continue
            out[_JSON_NAMES.get(f.name, f.name)] = _plain(value)
        return out


def _plain(value: Any) -> Any:
    if is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


# --- the client itself ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Started(Event):
    """The socket is bound. Fields: name, room, fingerprint, port."""

    kind: ClassVar[str] = "started"
    name: str
    room: str
    fingerprint: str
    port: int


@dataclass(frozen=True, slots=True)
class Error(Event):
    """Something the user should know. ``fatal``: the client cannot go on."""

    kind: ClassVar[str] = "error"
    message: str
    fatal: bool = False


@dataclass(frozen=True, slots=True)
class Notice(Event):
    """A line for the user that is neither an error nor protocol news (/help, leaving)."""

    kind: ClassVar[str] = "notice"
    message: str


# --- the bootnode link -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Registered(Event):
    """Registered with the bootnode. ``again``: a re-registration.
    Fields: room, name, public_endpoint (IP:PORT as the bootnode saw it), fingerprint, again."""

    kind: ClassVar[str] = "registered"
    room: str
    name: str
    public_endpoint: str
    fingerprint: str
    again: bool


@dataclass(frozen=True, slots=True)
class BootnodeUnanswered(Event):
    """The first registration is not answered yet: ``tries`` sent over ``waited_s``; the
    client keeps trying until ``give_up_s`` (REGISTER_TIMEOUT), then stops."""

    kind: ClassVar[str] = "bootnode_unanswered"
    bootnode: str
    tries: int
    waited_s: float
    give_up_s: float


@dataclass(frozen=True, slots=True)
class BootnodeLost(Event):
    """No answer from the bootnode for a peer timeout; chats go on."""

    kind: ClassVar[str] = "bootnode_lost"


@dataclass(frozen=True, slots=True)
class BootnodeRestored(Event):
    """The bootnode answers again."""

    kind: ClassVar[str] = "bootnode_restored"


@dataclass(frozen=True, slots=True)
class BootnodeReregistering(Event):
    """The bootnode forgot our registration (it restarted): registering again."""

    kind: ClassVar[str] = "bootnode_reregistering"
    reason: str


@dataclass(frozen=True, slots=True)
class NatMapping(Event):
    """What the client learned of its NAT at start (once): ``independent`` when it keeps
    one public port for every destination (hole punching likely works), False when it
    maps per destination (a symmetric NAT)."""

    kind: ClassVar[str] = "nat_mapping"
    independent: bool
    message: str


# --- peers -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PeerJoined(Event):
    """The bootnode introduced a peer. ``public_key`` is hex; ``trust`` (new, known,
    verified, changed) is set by the driver from the known-peers file."""

    kind: ClassVar[str] = "peer_joined"
    name: str
    fingerprint: str
    public_key: str
    trust: str | None = None


@dataclass(frozen=True, slots=True)
class KeyChanged(Event):
    """A known name showed up with a different key: loud, it may be someone else."""

    kind: ClassVar[str] = "key_changed"
    name: str
    fingerprint: str
    previous_fingerprint: str
    message: str


@dataclass(frozen=True, slots=True)
class NameClash(Event):
    """A peer uses a name that another peer here (``other_fingerprint``), or we, use too:
    not a key change, two parties. Front ends show both with their fingerprints."""

    kind: ClassVar[str] = "name_clash"
    name: str
    fingerprint: str
    other_fingerprint: str
    message: str


@dataclass(frozen=True, slots=True)
class PeerConnected(Event):
    """An authenticated session with the peer is up. ``path``: direct or relay (the
    bootnode's relay, or TURN)."""

    kind: ClassVar[str] = "peer_connected"
    name: str
    fingerprint: str
    path: str
    endpoint: str


@dataclass(frozen=True, slots=True)
class PathChanged(Event):
    """A connected peer's authenticated packets now come from elsewhere (NAT rebinding,
    restart, a move between the relay and a direct path)."""

    kind: ClassVar[str] = "path_changed"
    name: str
    fingerprint: str
    path: str
    endpoint: str
    previous_endpoint: str


@dataclass(frozen=True, slots=True)
class MessageReceived(Event):
    """A chat message from a peer (``from`` in JSON). ``style``: ``say``; ``action``
    (/me: shown as "* bob waves"); ``private`` (/msg: sent to us alone)."""

    kind: ClassVar[str] = "message"
    sender: str
    fingerprint: str
    text: str
    style: str = "say"


@dataclass(frozen=True, slots=True)
class Undelivered(Event):
    """A message that did not reach some peers, once per message and cause: ``to`` and
    ``fingerprints`` name them. ``reason``: timeout (not acknowledged within 30 s: the
    peer may still have it, so "not confirmed"), peer_gone, failed or unreachable (the
    peer went away, or never had a session, before it got it: "not delivered")."""

    kind: ClassVar[str] = "undelivered"
    to: tuple[str, ...]
    fingerprints: tuple[str, ...]
    text: str
    reason: str


@dataclass(frozen=True, slots=True)
class PeerNamed(Event):
    """A peer's authenticated handshake gave it another name than the one announced
    (or shown) so far: ``name`` is the name it proved, ``announced`` the earlier one."""

    kind: ClassVar[str] = "peer_named"
    name: str
    fingerprint: str
    public_key: str
    announced: str


@dataclass(frozen=True, slots=True)
class PeerRenamed(Event):
    """A peer proved a new name in a new handshake (it used /nick): ``previous`` is the
    name it had proved before."""

    kind: ClassVar[str] = "peer_renamed"
    name: str
    fingerprint: str
    previous: str


@dataclass(frozen=True, slots=True)
class PeerLeft(Event):
    """A peer left. ``reason``: quit, disconnected or timed_out."""

    kind: ClassVar[str] = "peer_left"
    name: str
    fingerprint: str
    reason: str


@dataclass(frozen=True, slots=True)
class PeerUnreachable(Event):
    """No direct path to the peer within the punch deadline."""

    kind: ClassVar[str] = "peer_unreachable"
    name: str
    fingerprint: str
    message: str


@dataclass(frozen=True, slots=True)
class HandshakeFailed(Event):
    """A path, but no authenticated session (a different room passphrase, say)."""

    kind: ClassVar[str] = "handshake_failed"
    name: str
    fingerprint: str
    reason: str


# --- answers to commands -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BootnodeStatus:
    """Part of PeersStatus: the link's state (registering, connected, lost, ...)."""

    state: str
    bootnode: str
    rtt_ms: float | None


@dataclass(frozen=True, slots=True)
class PeerStatus:
    """Part of PeersStatus: one peer's state, path and delivery figures."""

    name: str
    fingerprint: str
    state: str
    path: str | None
    endpoint: str | None
    rtt_ms: float | None
    unacknowledged: int
    retransmissions: int


@dataclass(frozen=True, slots=True)
class PeersStatus(Event):
    """Answer to /peers: the bootnode link, every peer, and the dropped-datagram counters."""

    kind: ClassVar[str] = "peers"
    bootnode: BootnodeStatus
    peers: tuple[PeerStatus, ...]
    dropped: dict[str, int]


@dataclass(frozen=True, slots=True)
class Verified(Event):
    """Answer to /verify NAME: the safety number to compare out of band. ``confirmed``:
    the user said it matched (/verify NAME confirm), so NAME's key is now marked verified
    in the known peers; until then nothing is marked."""

    kind: ClassVar[str] = "verified"
    name: str
    fingerprint: str
    safety_number: str
    confirmed: bool


LINE_MODE_EVENTS: tuple[type, ...] = (
    Started,
    Registered,
    PeerJoined,
    PeerNamed,
    PeerRenamed,
    KeyChanged,
    NameClash,
    PeerConnected,
    PathChanged,
    MessageReceived,
    Undelivered,
    PeerLeft,
    PeerUnreachable,
    HandshakeFailed,
    BootnodeUnanswered,
    BootnodeLost,
    BootnodeRestored,
    BootnodeReregistering,
    NatMapping,
    PeersStatus,
    Verified,
    Notice,
    Error,
)
"""Every event line mode can print (BootnodeStatus and PeerStatus only appear inside PeersStatus)."""
