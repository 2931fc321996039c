"""Noise IK / IKpsk2: the published cacophony vectors, interop with the independent
`noiseprotocol` implementation in both directions, and tampering."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from gochat.crypto.noise import (
    PROTOCOL_IKPSK2,
    HandshakeState,
    NoiseError,
    generate_private_key,
    public_key,
    room_psk,
)

VECTORS = Path(__file__).resolve().parent / "data" / "noise-ik-vectors.json"  # source: data/README.md


def load_vectors():
    return json.loads(VECTORS.read_text())["vectors"]


@pytest.mark.parametrize("vector", load_vectors(), ids=lambda v: v["protocol_name"])
def test_cacophony_vectors(vector):
    h = bytes.fromhex
    psk = h(vector["init_psks"][0]) if vector.get("init_psks") else None
    init = HandshakeState(
        initiator=True,
        static_private=h(vector["init_static"]),
        remote_static=h(vector["init_remote_static"]),
        psk=psk,
        prologue=h(vector["init_prologue"]),
        ephemeral_private=h(vector["init_ephemeral"]),
        protocol_name=vector["protocol_name"],
    )
    resp = HandshakeState(
        initiator=False,
        static_private=h(vector["resp_static"]),
        psk=h(vector["resp_psks"][0]) if vector.get("resp_psks") else None,
        prologue=h(vector["resp_prologue"]),
        ephemeral_private=h(vector["resp_ephemeral"]),
        protocol_name=vector["protocol_name"],
    )
    msgs = vector["messages"]
    assert init.write_message(h(msgs[0]["payload"])) == h(msgs[0]["ciphertext"])
    assert resp.read_message(h(msgs[0]["ciphertext"])) == h(msgs[0]["payload"])
    assert resp.remote_static == public_key(h(vector["init_static"]))
    assert resp.write_message(h(msgs[1]["payload"])) == h(msgs[1]["ciphertext"])
    assert init.read_message(h(msgs[1]["ciphertext"])) == h(msgs[1]["payload"])
    assert init.handshake_hash == resp.handshake_hash == h(vector["handshake_hash"])
    i_send, i_recv = init.split()
    r_send, r_recv = resp.split()
    for k, m in enumerate(msgs[2:]):
        sender, receiver = (i_send, r_recv) if k % 2 == 0 else (r_send, i_recv)
        assert sender.encrypt_with_ad(b"", h(m["payload"])) == h(m["ciphertext"])
        assert receiver.decrypt_with_ad(b"", h(m["ciphertext"])) == h(m["payload"])


def pair(psk_i=b"k" * 32, psk_r=b"k" * 32):
    si, sr = generate_private_key(), generate_private_key()
    i = HandshakeState(initiator=True, static_private=si, remote_static=public_key(sr), psk=psk_i)
    r = HandshakeState(initiator=False, static_private=sr, psk=psk_r)
    return i, r


def test_handshake_and_transport_both_ways():
    i, r = pair()
    assert r.read_message(i.write_message(b"hello")) == b"hello"
    assert i.read_message(r.write_message(b"welcome")) == b"welcome"
    assert i.complete and r.complete
    (i_tx, i_rx), (r_tx, r_rx) = i.split(), r.split()
    assert r_rx.decrypt_with_ad(b"", i_tx.encrypt_with_ad(b"", b"ping")) == b"ping"
    assert i_rx.decrypt_with_ad(b"", r_tx.encrypt_with_ad(b"", b"pong")) == b"pong"


def test_wrong_psk_fails_to_authenticate():
    i, r = pair(psk_r=b"x" * 32)
    r.read_message(i.write_message(b""))  # psk2: the first message does not depend on the psk
    with pytest.raises(NoiseError):
        i.read_message(r.write_message(b""))


def test_flipped_bit_is_rejected():
    i, r = pair()
    msg = bytearray(i.write_message(b"payload"))
    msg[40] ^= 1
    with pytest.raises(NoiseError):
        r.read_message(bytes(msg))


def test_room_psk():
    assert room_psk("lobby", "secret") != room_psk("lobby", None)
    assert room_psk("lobby", "secret") != room_psk("other", "secret")
    assert room_psk("lobby", None) == room_psk("lobby", None) and len(room_psk("lobby", None)) == 32


def _theirs(initiator: bool, static: bytes, remote: bytes | None, psk: bytes):
    """A handshake of the independent `noiseprotocol` implementation (a test dependency)."""
    connection = pytest.importorskip("noise.connection", reason="needs the noiseprotocol package")
    Keypair, NoiseConnection = connection.Keypair, connection.NoiseConnection

    conn = NoiseConnection.from_name(PROTOCOL_IKPSK2.encode())
    conn.set_as_initiator() if initiator else conn.set_as_responder()
    conn.set_keypair_from_private_bytes(Keypair.STATIC, static)
    if remote is not None:
        conn.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, remote)
    conn.set_psks(psk)
    conn.start_handshake()
    return conn


def test_interop_our_initiator_their_responder():
    si, sr, psk = generate_private_key(), generate_private_key(), os.urandom(32)
    ours = HandshakeState(initiator=True, static_private=si, remote_static=public_key(sr), psk=psk)
    theirs = _theirs(False, sr, None, psk)
    assert theirs.read_message(ours.write_message(b"from gochat")) == b"from gochat"
    assert ours.read_message(theirs.write_message(b"from noiseprotocol")) == b"from noiseprotocol"
    tx, rx = ours.split()
    assert theirs.decrypt(tx.encrypt_with_ad(b"", b"transport")) == b"transport"
    assert rx.decrypt_with_ad(b"", theirs.encrypt(b"back")) == b"back"


def test_interop_their_initiator_our_responder():
    si, sr, psk = generate_private_key(), generate_private_key(), os.urandom(32)
    theirs = _theirs(True, si, public_key(sr), psk)
    ours = HandshakeState(initiator=False, static_private=sr, psk=psk)
    assert ours.read_message(theirs.write_message(b"hi")) == b"hi"
    assert ours.remote_static == public_key(si)
    assert theirs.read_message(ours.write_message(b"hello")) == b"hello"
    tx, rx = ours.split()
    assert rx.decrypt_with_ad(b"", theirs.encrypt(b"x")) == b"x"
    assert theirs.decrypt(tx.encrypt_with_ad(b"", b"y")) == b"y"
