"""The anti-replay window: table-driven edges, then a property test against a set."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gochat.crypto.replay import ReplayWindow

from .conftest import examples


def test_window_is_at_least_1024():
    assert ReplayWindow().window_size >= 1024


def test_edges():
    w = ReplayWindow(blocks=32)
    size = w.window_size  # 1984
    assert w.accept(0) and not w.accept(0)
    assert w.accept(1) and w.accept(3) and w.accept(2) and not w.accept(2)
    assert w.accept(size + 10)
    assert w.accept(10) and not w.accept(10)  # inside the window, first time: fine
    assert not w.accept(9)  # 9 < (size+10) - size: too old
    assert w.accept(size + 9)  # out of order, still inside
    assert w.accept(10_000_000)  # a jump clears the ring
    assert not w.accept(10_000_000 - size - 1)
    assert w.accept(10_000_000 - size)
    assert not w.accept(2**64) and not w.accept(-1)


@given(st.lists(st.integers(0, 5000), max_size=300))
@settings(max_examples=examples(300))
def test_matches_a_reference_set(counters):
    w = ReplayWindow(blocks=32)
    seen, highest = set(), -1
    for c in counters:
        expected = c not in seen and (highest < 0 or highest - c <= w.window_size)
        assert w.accept(c) == expected, c
        if expected:
            seen.add(c)
            highest = max(highest, c)
