"""What the bootnode did lately, in one log line.

At info level a bootnode would otherwise say nothing between start and stop: an operator
could not tell a quiet night from a flood of refusals. Every interval the driver hands
two snapshots of its counters to ``summarize``, which names what changed (registrations,
expiries, refusals and malformed datagrams by reason, unknown tokens, rebinds, internal
errors) and says nothing when nothing did. One line per interval, whatever the flood.
"""

from __future__ import annotations

from collections.abc import Mapping


def _delta(before: Mapping[str, float], after: Mapping[str, float], key: str) -> int:
    return int(after.get(key, 0) - before.get(key, 0))


def _by_reason(before: Mapping[str, float], after: Mapping[str, float], prefix: str) -> str:
    """'40 (rate_limited 38, source_full 2)' for the keys under ``prefix``, or ''."""
    parts = []
    for key in sorted(after):
        if key.startswith(prefix):
            n = _delta(before, after, key)
            if n:
                parts.append((key[len(prefix) :], n))
    if not parts:
        return ""
    total = sum(n for _, n in parts)
    return f"{total:,} (" + ", ".join(f"{reason} {n:,}" for reason, n in parts) + ")"


def summarize(before: Mapping[str, float], after: Mapping[str, float], seconds: float) -> str | None:
    """One line of what changed between two snapshots, or None if nothing worth saying."""
    events = [
        (_delta(before, after, "register.accepted"), "registered"),
        (_delta(before, after, "register.replaced"), "re-registered"),
        (_delta(before, after, "expired"), "expired"),
        (_delta(before, after, "disconnected"), "disconnected"),
        (_delta(before, after, "rebinds"), "moved to a new address"),
        (_delta(before, after, "register.cookie_sent"), "cookies sent"),
        (
            _delta(before, after, "fast.unknown_token") + _delta(before, after, "heartbeat.unknown"),
            "heartbeats with an unknown token",
        ),
        (_delta(before, after, "rebind_refused"), "rebind answers refused"),
        (_delta(before, after, "rebind_rate_limited"), "moves rate-limited"),
        (_delta(before, after, "internal_errors"), "internal errors (see the errors logged)"),
    ]
    parts = [f"{n:,} {what}" for n, what in events if n]
    refused = _by_reason(before, after, "refused.")
    if refused:
        parts.append(f"refused {refused}")
    malformed = _by_reason(before, after, "malformed.")
    if malformed:
        parts.append(f"malformed datagrams dropped {malformed}")
    if not parts:
        return None
    now = f"now {int(after.get('peers', 0)):,} peers in {int(after.get('rooms', 0)):,} rooms"
    return f"last {seconds:g}s: " + ", ".join(parts) + f"; {now}"
