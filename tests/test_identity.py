"""Identity files (created 0600, reused, refused when exposed or damaged) and trust on
first use of peers' keys."""

from __future__ import annotations

import stat

import pytest

from gochat.crypto.identity import IdentityError, KnownPeers, data_dir, fingerprint, load_or_create, safety_number
from gochat.crypto.noise import generate_private_key, public_key


def test_created_once_with_owner_only_permissions(tmp_path):
    path = tmp_path / "data" / "gochat" / "identity.key"
    first = load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    again = load_or_create(path)
    assert again.public_key == first.public_key == public_key(first.private_key)
    assert len(first.fingerprint.split()) == 8


def test_exposed_or_damaged_identity_is_refused(tmp_path):
    path = tmp_path / "identity.key"
    load_or_create(path)
    path.chmod(0o644)
    with pytest.raises(IdentityError, match="chmod 600"):
        load_or_create(path)
    path.chmod(0o600)
    path.write_text("something else\n")
    with pytest.raises(IdentityError, match="not a gochat identity"):
        load_or_create(path)


def test_data_dir_follows_xdg():
    assert str(data_dir({"XDG_DATA_HOME": "/x/data"})) == "/x/data/gochat"
    assert str(data_dir({"HOME": "/home/u"})) == "/home/u/.local/share/gochat"


def test_trust_on_first_use_and_key_change(tmp_path):
    path = tmp_path / "known_peers.json"
    alice, mallory = public_key(generate_private_key()), public_key(generate_private_key())
    known = KnownPeers(path)
    assert known.remember("alice", alice) == "new"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    reopened = KnownPeers(path)
    assert reopened.remember("alice", alice) == "known"
    assert reopened.remember("alice", mallory) == "changed"
    assert KnownPeers(path).check("alice", alice) == "known"  # the change was not recorded
    reopened.verify("alice", mallory)
    assert KnownPeers(path).check("alice", mallory) == "known" and KnownPeers(path).get("alice")["verified"]
    path.write_text("{broken")
    with pytest.raises(IdentityError, match="damaged"):
        KnownPeers(path)


def test_safety_number_is_symmetric_and_key_bound():
    a, b, c = (public_key(generate_private_key()) for _ in range(3))
    assert safety_number(a, b) == safety_number(b, a)
    assert safety_number(a, b) != safety_number(a, c)
    assert len(safety_number(a, b).replace(" ", "")) == 30
    assert fingerprint(a) != fingerprint(b)
