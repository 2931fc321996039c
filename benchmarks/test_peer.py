"""Peer crypto micro-benchmarks: the Noise IKpsk2 handshake, and transport
encryption + decryption of one chat-sized message on an established session."""

from __future__ import annotations

from gochat.crypto.noise import HandshakeState, generate_private_key, public_key, room_psk
from gochat.crypto.transport import TransportKeys
from gochat.wire import data as pw

PSK = room_psk("lobby", None)


def test_handshake(benchmark):
    a, b = generate_private_key(), generate_private_key()
    b_pub = public_key(b)

    def handshake():
        init = HandshakeState(initiator=True, static_private=a, remote_static=b_pub, psk=PSK)
        resp = HandshakeState(initiator=False, static_private=b, psk=PSK)
        resp.read_message(init.write_message(b"\0" * 16))
        init.read_message(resp.write_message(b"\0" * 8))
        return init.split(), resp.split()

    benchmark.extra_info.update(unit="handshake (both sides)")
    benchmark(handshake)


def test_encrypt_decrypt(benchmark):
    k1, k2 = b"\x01" * 32, b"\x02" * 32
    sender, receiver = TransportKeys(k1, k2, 0.0), TransportKeys(k2, k1, 0.0)
    frame = b"\x01" + bytes(16) + b"a chat message of some eighty bytes, which is what people type"

    def roundtrip():
        counter, ct = sender.encrypt(frame, pw.transport_ad(7, sender.send_counter), 1.0)
        return receiver.decrypt(counter, ct, pw.transport_ad(7, counter), 1.0)

    benchmark.extra_info.update(unit="message encrypted + decrypted")
    assert roundtrip() == frame
    benchmark(roundtrip)


def _peer_with_queued_messages(n: int):
    """Alice's Peer for bob, connected, with ``n`` messages sent and unacknowledged (the
    path went dark): every message in flight, each with its own deadlines."""
    from tests.simnet import SimWorld

    w = SimWorld()
    w.start_bootnode()
    a = w.add_client("alice", "198.51.100.10")
    b = w.add_client("bob", "198.51.100.20")
    w.run_until(lambda: any(p.state.value == "connected" for p in a.peers.values()), limit=5)
    w.filter = lambda src, dst, data: not pw.is_peer_datagram(data)
    peer = a.peers[b.public_key]
    for i in range(n):
        peer.send_message(f"message {i}", w.now + i * 0.001, ref=i)
    assert peer.sender.unacknowledged == n
    return peer


def test_get_timer_150_queued(benchmark):
    """What a room asks a peer after everything that touched it: its next deadline."""
    peer = _peer_with_queued_messages(150)
    benchmark.extra_info.update(unit="Peer.get_timer() with 150 messages in flight")
    assert peer.get_timer() is not None
    benchmark(peer.get_timer)
