"""Prometheus exposition of the bootnode's counters (optional, METRICS_LISTEN).

A custom collector reads the counters when scraped, so the hot path pays nothing for
metrics. Names: gochat_<counter>, with reasons as labels where a counter has them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

_GAUGES = {"peers", "rooms", "cpu_seconds", "rss_bytes"}


def _name(key: str) -> str:
    return "gochat_" + re.sub(r"[^a-zA-Z0-9_]", "_", key)


class Snapshots(Protocol):
    """What the collector reads: the bootnode's counters (driver.Bootnode.snapshot)."""

    def snapshot(self) -> dict[str, float]: ...


class BootnodeCollector(Collector):
    def __init__(self, node: Snapshots) -> None:
        self.node = node

    def collect(self) -> Iterator[Metric]:
        snap = self.node.snapshot()
        labelled: dict[str, list[tuple[str, float]]] = {}
        for key, value in sorted(snap.items()):
            family, _, reason = key.partition(".")
            if family in ("malformed", "refused", "unexpected"):
                labelled.setdefault(family, []).append((reason, value))
            elif key in _GAUGES or key.startswith("tick."):
                yield GaugeMetricFamily(_name(key), f"bootnode {key}", value=value)
            else:
                yield CounterMetricFamily(_name(key), f"bootnode {key}", value=value)
        for family in ("malformed", "refused", "unexpected"):
            c = CounterMetricFamily(_name(family), f"datagrams {family}, by reason", labels=["reason"])
            for reason, value in labelled.get(family, []):
                c.add_metric([reason], value)
            yield c


def start_metrics_server(node: Snapshots, listen: tuple[str, int]) -> tuple[str, int]:
    registry = CollectorRegistry()
    registry.register(BootnodeCollector(node))
    server, _thread = start_http_server(listen[1], addr=listen[0], registry=registry)
    host, port = server.server_address[:2]
    return str(host), port


def parse_exposition(text: str) -> dict:
    """{'name{labels}': value} from the text format (for tests and benchmarks)."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out
