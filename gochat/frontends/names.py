"""Telling peers apart: by key, never by display name alone.

Anyone may call themselves anything (and without --name, many are called ``user``), so
the front ends key every peer by its fingerprint and show a name with the first group
of its fingerprint whenever the name alone would be ambiguous: ``bob (3ab6)`` and
``bob (6cd5)``, or a peer that took our own name. Commands that name a peer accept the
name, the name with its group, or the start of a fingerprint.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import TypeVar

from gochat.crypto.identity import short_fingerprint

GROUP_LEN = 4  # one group of a fingerprint: enough to tell a few namesakes apart


def group(fingerprint: str) -> str:
    return fingerprint[:GROUP_LEN]


def label(name: str, fingerprint: str, names_in_room: Iterable[str], own_name: str | None = None) -> str:
    """``name``, or ``name (3ab6)`` if another peer in the room (or we) use that name.
    ``names_in_room`` holds one entry per peer present, this one included."""
    count = sum(1 for n in names_in_room if n == name)
    return f"{name} ({group(fingerprint)})" if count > 1 or name == own_name else name


P = TypeVar("P")


def find(query: str, peers: Sequence[tuple[str, str, P]]) -> list[P]:
    """The peers ``query`` names, from (name, fingerprint, peer) triples: ``bob``,
    ``bob (3ab6)``, or a fingerprint's start (at least 4 hex digits, spaces ignored)."""
    query = query.strip()
    m = re.fullmatch(r"(.+?) \(([0-9a-f ]+)\)", query)
    if m:
        name, start = m.group(1), m.group(2).replace(" ", "")
        return [p for n, fp, p in peers if n == name and fp.replace(" ", "").startswith(start)]
    exact = [p for n, _, p in peers if n == query]
    if exact:
        return exact
    hex_query = query.replace(" ", "").lower()
    if len(hex_query) >= GROUP_LEN and re.fullmatch(r"[0-9a-f]+", hex_query):
        return [p for _, fp, p in peers if fp.replace(" ", "").startswith(hex_query)]
    return []


def ambiguity(query: str, peers: Sequence[tuple[str, str]]) -> str:
    """What to type instead of an ambiguous ``query``: the candidates' labels."""
    options = " or ".join(f"/verify {name} ({group(fp)})" for name, fp in peers)
    return (
        f"{len(peers)} peers are called {query!r}: {options} (fingerprints: "
        + ", ".join(short_fingerprint(fp) for _, fp in peers)
        + ")"
    )
