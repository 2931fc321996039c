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
