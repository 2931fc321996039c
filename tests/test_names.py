"""Naming peers in commands when names clash: by name, by name and fingerprint group, or
by the start of a fingerprint."""

from __future__ import annotations

from gochat.frontends.names import ambiguity, find, label

BOB1, BOB2, ANN = "1234 5678 9abc", "6cd5 0000 1111", "aaaa bbbb cccc"
PEERS = [("bob", BOB1, "bob1"), ("bob", BOB2, "bob2"), ("ann", ANN, "ann")]


def test_a_name_alone_finds_every_peer_that_uses_it():
    assert find("bob", PEERS) == ["bob1", "bob2"]
    assert find("ann", PEERS) == ["ann"]
    assert find("nobody", PEERS) == []


def test_a_name_with_its_group_or_a_fingerprint_start_finds_one():
    assert find("bob (6cd5)", PEERS) == ["bob2"]
    assert find("bob (1234 56)", PEERS) == ["bob1"]
    assert find("6cd50000", PEERS) == ["bob2"]
    assert find("6cd", PEERS) == []  # too short to mean a fingerprint
    assert find("ann (1234)", PEERS) == []


def test_labels_show_the_group_only_when_needed():
    assert label("bob", BOB1, ["bob", "bob", "ann"]) == "bob (1234)"
    assert label("ann", ANN, ["bob", "bob", "ann"]) == "ann"
    assert label("me", ANN, ["me"], own_name="me") == "me (aaaa)"


def test_an_ambiguous_name_says_what_to_type():
    text = ambiguity("bob", [("bob", BOB1), ("bob", BOB2)])
    assert "/verify bob (1234)" in text and "/verify bob (6cd5)" in text
