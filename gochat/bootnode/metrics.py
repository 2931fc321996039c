"""Prometheus exposition of the bootnode's counters (optional, METRICS_LISTEN).

Every series is declared here once, with its type, unit and help text, so that all of
them exist from the first scrape (a counter that appears only after its first event
breaks ``rate()`` and ``absent()``), and so that README's table can be checked against
this catalogue. A custom collector reads the bootnode's counters when scraped: the hot
path pays nothing for metrics. The standard ``process_*`` and ``python_*`` collectors
come from prometheus-client itself. The same HTTP server answers ``/healthz``.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol
from wsgiref.simple_server import WSGIRequestHandler

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import ThreadingWSGIServer, make_server
from prometheus_client.registry import Collector

from gochat import __version__
from gochat.wire.control import DECODE_REASONS, RefuseReason, RelayRefuseReason


@dataclass(frozen=True)
class Series:
    """One exposed series: its name (without ``_total``), type and help, and the
    snapshot key it reads (a function of the snapshot for derived values)."""

    name: str
    kind: str  # "counter" or "gauge"
    help: str
    key: str | Callable[[dict[str, float]], float]


def _ms_to_s(key: str) -> Callable[[dict[str, float]], float]:
    return lambda snap: snap.get(key, 0.0) / 1000.0


SERIES: tuple[Series, ...] = (
    Series("gochat_fast_received", "counter", "Datagrams received by the bootnode.", "fast.received"),
    Series("gochat_fast_batches", "counter", "Receive batches (recvmmsg calls that returned data).", "fast.batches"),
    Series("gochat_fast_heartbeats", "counter", "Heartbeats from their registration's endpoint.", "fast.heartbeats"),
    Series("gochat_fast_heartbeat_acks", "counter", "Heartbeat acknowledgements sent.", "fast.heartbeat_acks"),
    Series(
        "gochat_fast_unknown_token", "counter", "Heartbeats whose token matches no registration.", "fast.unknown_token"
    ),
    Series(
        "gochat_fast_new_source",
        "counter",
        "Heartbeats from an address other than their registration's endpoint (handed to the machine).",
        "fast.new_source",
    ),
    Series(
        "gochat_fast_passed_to_python",
        "counter",
        "Datagrams the fast path handed to the protocol machine.",
        "fast.passed_to_python",
    ),
    Series("gochat_fast_sent", "counter", "Datagrams sent by the bootnode.", "fast.sent"),
    Series("gochat_fast_send_errors", "counter", "Datagrams the kernel refused to send.", "fast.send_errors"),
    Series("gochat_fast_recv_errors", "counter", "Receive calls that failed.", "fast.recv_errors"),
    Series("gochat_register_received", "counter", "REGISTER datagrams handled.", "register.received"),
    Series(
        "gochat_register_cookie_sent",
        "counter",
        "COOKIE replies to a REGISTER without a valid cookie (address validation).",
        "register.cookie_sent",
    ),
    Series("gochat_register_accepted", "counter", "Registrations accepted.", "register.accepted"),
    Series(
        "gochat_register_replaced",
        "counter",
        "Registrations that replaced an earlier one of the same key in the same room.",
        "register.replaced",
    ),
    Series(
        "gochat_register_duplicate",
        "counter",
        "Retried REGISTERs answered again (their reply was lost).",
        "register.duplicate",
    ),
    Series("gochat_heartbeat_slow_path", "counter", "Heartbeats the protocol machine handled.", "heartbeat.slow_path"),
    Series(
        "gochat_heartbeat_unknown", "counter", "Heartbeats the machine found no registration for.", "heartbeat.unknown"
    ),
    Series(
        "gochat_rebind_challenges",
        "counter",
        "REBIND_CHALLENGEs sent to a heartbeat's new source address.",
        "rebind_challenges",
    ),
    Series("gochat_rebinds", "counter", "Registrations moved to a new address that answered a challenge.", "rebinds"),
    Series(
        "gochat_rebind_refused",
        "counter",
        "Answers to a rebind challenge refused (forged, stale, or for another token or address).",
        "rebind_refused",
    ),
    Series(
        "gochat_rebind_rate_limited",
        "counter",
        "Proved moves refused by the per-source-IP limit.",
        "rebind_rate_limited",
    ),
    Series("gochat_disconnected", "counter", "Registrations ended by a DISCONNECT.", "disconnected"),
    Series(
        "gochat_disconnect_unknown",
        "counter",
        "DISCONNECTs for no registration (acknowledged anyway).",
        "disconnect.unknown",
    ),
    Series("gochat_expired", "counter", "Registrations expired after the peer timeout.", "expired"),
    Series("gochat_internal_errors", "counter", "Datagrams whose handling raised (a bug; logged).", "internal_errors"),
    Series(
        "gochat_cluster_connected",
        "gauge",
        "1 while on the cluster bus (--cluster), 0 while serving our own members alone.",
        "cluster_connected",
    ),
    Series("gochat_cluster_nodes", "gauge", "Other bootnodes heard on the cluster bus.", "cluster_nodes"),
    Series(
        "gochat_cluster_remote_members",
        "gauge",
        "Members of our rooms registered at other bootnodes.",
        "cluster_remote_members",
    ),
    Series("gochat_cluster_published", "counter", "Messages published on the cluster bus.", "cluster_published"),
    Series("gochat_cluster_received", "counter", "Messages received from the cluster bus.", "cluster_received"),
    Series("gochat_relay_bindings", "gauge", "Relay bindings held.", "relay_bindings"),
    Series("gochat_relayed", "counter", "Datagrams relayed between two bindings.", "relayed"),
    Series(
        "gochat_relayed_bytes",
        "counter",
        "Bytes of the RELAYED datagrams sent (headers included).",
        "fast.relayed_bytes",
    ),
    Series(
        "gochat_relay_wrong_source",
        "counter",
        "RELAYs dropped for coming from elsewhere than their registration's endpoint.",
        "fast.relay_wrong_source",
    ),
    Series("gochat_peers", "gauge", "Registrations held.", "peers"),
    Series("gochat_rooms", "gauge", "Rooms with at least one registration.", "rooms"),
    Series("gochat_tick_ticks", "counter", "Expiry timer ticks.", "tick.ticks"),
    Series(
        "gochat_tick_last_tick_seconds", "gauge", "Duration of the latest expiry tick.", _ms_to_s("tick.last_tick_ms")
    ),
    Series("gochat_tick_largest_expired", "gauge", "Most registrations expired by one tick.", "tick.largest_expired"),
    Series(
        "gochat_tick_largest_tick_seconds",
        "gauge",
        "Duration of the tick that expired the most registrations (wheel work only).",
        _ms_to_s("tick.largest_tick_ms"),
    ),
    Series(
        "gochat_tick_largest_announce_seconds",
        "gauge",
        "Time that tick spent announcing and removing the expired registrations.",
        _ms_to_s("tick.largest_announce_ms"),
    ),
    Series(
        "gochat_tick_last_join_seconds",
        "gauge",
        "Handling of the latest registration, its announcement to the room included.",
        _ms_to_s("tick.last_join_ms"),
    ),
    Series(
        "gochat_tick_last_join_room_size",
        "gauge",
        "Members the latest registration was announced to.",
        "tick.last_join_room_size",
    ),
)

# Counters with a reason label: every reason is exposed from the start.
MALFORMED_REASONS = DECODE_REASONS
REFUSED_REASONS = tuple(r.name.lower() for r in RefuseReason)
LABELLED: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    ("gochat_malformed", "Datagrams dropped as malformed, by reason.", "malformed", MALFORMED_REASONS),
    ("gochat_refused", "Registrations refused, by reason.", "refused", REFUSED_REASONS),
    ("gochat_unexpected", "Well-formed datagrams of a type a bootnode does not take, by type.", "unexpected", ()),
    (
        "gochat_relay_refused",
        "RELAYs not forwarded, by reason.",
        "relay.refused",
        ("not_bound", "no_such_peer", "rate_limited", "busy"),
    ),
    (
        "gochat_relay_bind_refused",
        "Relay bindings asked for and not made, by reason.",
        "relay.bind_refused",
        tuple(r.name.lower() for r in RelayRefuseReason if r >= RelayRefuseReason.DISABLED),
    ),
    (
        "gochat_stun",
        "STUN messages on the bootnode's port, by outcome.",
        "stun",
        ("binding", "error_420", "second_port", "dropped", "rate_limited"),
    ),
)


class Snapshots(Protocol):
    """What the collector reads: the bootnode's counters (driver.Bootnode.snapshot)."""

    def snapshot(self) -> dict[str, float]: ...


class BootnodeCollector(Collector):
    def __init__(self, node: Snapshots, fastpath: str) -> None:
        self.node = node
        self.fastpath = fastpath

    def collect(self) -> Iterator[Metric]:
        snap = self.node.snapshot()
        info = GaugeMetricFamily(
            "gochat_build_info",
            "The running gochat: version and fast-path implementation.",
            labels=["version", "fastpath"],
        )
        info.add_metric([__version__, self.fastpath], 1.0)
        yield info
        for series in SERIES:
            value = series.key(snap) if callable(series.key) else float(snap.get(series.key, 0.0))
            family = CounterMetricFamily if series.kind == "counter" else GaugeMetricFamily
            yield family(series.name, series.help, value=value)
        for name, help_text, prefix, known in LABELLED:
            counts = {k.partition(".")[2]: v for k, v in snap.items() if k.startswith(prefix + ".")}
            c = CounterMetricFamily(name, help_text, labels=["reason"])
            for reason in sorted(set(known) | set(counts)):
                c.add_metric([reason], counts.get(reason, 0.0))
            yield c


def exposed_names() -> list[str]:
    """Every metric family this module exposes (README's table is held to it)."""
    return ["gochat_build_info"] + [s.name for s in SERIES] + [name for name, *_ in LABELLED]


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # scrapes are not news
        pass


def _app(metrics_app: Callable[..., Iterable[bytes]]) -> Callable[..., Iterable[bytes]]:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == "/healthz":
            start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"ok\n"]
        return metrics_app(environ, start_response)

    return app


def start_metrics_server(node: Snapshots, listen: tuple[str, int], fastpath: str = "") -> tuple[str, int]:
    """Serve /metrics and /healthz on ``listen`` from a daemon thread; returns the bound
    address. Raises OSError (naming nothing: the caller says which setting) if it cannot bind."""
    registry = CollectorRegistry()
    registry.register(BootnodeCollector(node, fastpath))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)

    class Server(ThreadingWSGIServer):
        address_family = socket.AF_INET6 if ":" in listen[0] else socket.AF_INET

    server = make_server(listen[0], listen[1], _app(make_wsgi_app(registry)), Server, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    host, port = server.server_address[:2]
    return str(host), int(port)


def parse_exposition(text: str) -> dict:
    """{'name{labels}': value} from the text format (for tests and benchmarks)."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out
