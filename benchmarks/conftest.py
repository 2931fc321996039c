"""Micro-benchmarks run each case against the Cython fast path and the pure-Python twin;
the summary prints the pure/cython ratio of medians measured in this same run."""

from __future__ import annotations

import pytest

from tests.conftest import IMPLS


@pytest.fixture(params=["cython", "pure"])
def impl(request):
    return IMPLS[request.param]()


def pytest_terminal_summary(terminalreporter, config):
    session = getattr(config, "_benchmarksession", None)
    if session is None or not session.benchmarks:
        return
    groups = {}
    for bench in session.benchmarks:
        kind = "cython" if "[cython" in bench.name else "pure" if "[pure" in bench.name else None
        if kind:
            groups.setdefault(bench.group or bench.name.split("[")[0], {})[kind] = bench
    terminalreporter.write_sep("-", "fast path vs pure-Python fallback (medians, this run)")
    for group, pair in sorted(groups.items()):
        if len(pair) == 2:
            c, p = pair["cython"], pair["pure"]
            per = c.extra_info.get("items", 1)
            terminalreporter.write_line(
                f"{group:36} cython {c.stats.median / per * 1e6:9.3f} us   pure {p.stats.median / per * 1e6:9.3f} us"
                f"   ratio {p.stats.median / c.stats.median:6.2f}   (per {c.extra_info.get('unit', 'call')})"
            )
