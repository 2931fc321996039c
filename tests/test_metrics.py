"""The bootnode's Prometheus endpoint as an operator meets it: every series from the
first scrape with a real help text and type, the standard process collector, build
info, /healthz, a busy port named as such, and README's table held to the catalogue."""

from __future__ import annotations

import re
import socket
import urllib.request
from pathlib import Path

import pytest

from gochat.bootnode.metrics import LABELLED, SERIES, exposed_names, parse_exposition

from .procs import Bootnode

pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parent.parent / "README.md"


def _scrape(address: str, path: str = "/metrics") -> tuple[int, str]:
    with urllib.request.urlopen(f"http://{address}{path}", timeout=5) as r:
        return r.status, r.read().decode()


@pytest.fixture
def bootnode():
    node = Bootnode(extra=["--metrics-listen", "127.0.0.1:0"])
    yield node
    node.stop()


def test_every_series_is_there_from_the_first_scrape_typed_and_explained(bootnode):
    address = re.search(r"metrics on http://(\S+)/metrics", bootnode.wait_for_line("metrics on http")).group(1)
    status, text = _scrape(address)
    assert status == 200
    values = parse_exposition(text)
    helps = dict(re.findall(r"^# HELP (\S+) (.*)$", text, re.M))
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))
    for series in SERIES:  # before any event: present, at 0 (the gauges of an idle bootnode too)
        exposed = series.name + ("_total" if series.kind == "counter" else "")
        assert exposed in values, exposed
        assert types[exposed] == series.kind
        assert helps[exposed] == series.help and "." not in helps[exposed].split()[0]  # not an internal key
        assert not series.name.endswith("_ms")
    for name, _, _, reasons in LABELLED:
        for reason in reasons:
            assert values[f'{name}_total{{reason="{reason}"}}'] == 0
    assert values['gochat_refused_total{reason="source_full"}'] == 0
    assert re.search(r'^gochat_build_info\{fastpath="(cython|pure-python)",version="[\d.]+"\} 1\.0$', text, re.M)
    assert values["process_resident_memory_bytes"] > 0 and "process_cpu_seconds_total" in values
    assert values["gochat_peers"] == 0


def test_healthz_answers_while_the_bootnode_runs(bootnode):
    address = re.search(r"metrics on http://(\S+)/metrics", bootnode.wait_for_line("metrics on http")).group(1)
    assert _scrape(address, "/healthz") == (200, "ok\n")


def test_a_busy_metrics_port_is_named_as_such():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        node = Bootnode(extra=["--metrics-listen", f"127.0.0.1:{port}"])
        line = node.wait_for_line("cannot serve metrics")
        assert f"127.0.0.1:{port} (METRICS_LISTEN)" in line
        assert node.proc.wait(10) == 1


def test_readme_lists_every_metric_and_nothing_else():
    section = README.read_text().split("## Metrics", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^\| `(gochat_\w+?)(?:_total)?(?:\{[^}]*\})?` \|", section, re.M))
    assert listed == set(exposed_names())
