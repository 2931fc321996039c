"""TURN: URLs and REST credentials (accepted by a real coturn), the bootnode's sealed
credentials, the client's TURN candidates (never an address of a member's choosing),
and real processes allocating through a real coturn on loopback."""

from __future__ import annotations

import asyncio
import time

import pytest
from aioice import stun as ice_stun
from aioice.turn import create_turn_endpoint

from gochat.bootnode.cookie import CookieJar
from gochat.bootnode.keys import BootnodeKey
from gochat.bootnode.rendezvous import Limits, Rendezvous, TurnIssuer
from gochat.client.room import RoomClient
from gochat.config import ConfigError, resolve
from gochat.crypto.noise import dh, generate_private_key, public_key, room_psk
from gochat.turn import CREDENTIAL_TTL_s, TurnServer, TurnUrlError, parse_turn_url, rest_credentials
from gochat.wire import control as wire
from gochat.wire.endpoints import turn_endpoint

from .coturn import Coturn, missing
from .procs import Bootnode, Client

needs_coturn = pytest.mark.skipif(missing() is not None, reason=missing() or "")
ROOM = b"R" * 16


# --- settings -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,expected",
    [
        ("turn:turn.example.org", TurnServer("turn.example.org", 3478)),
        ("turn:198.51.100.7:3479", TurnServer("198.51.100.7", 3479)),
        ("turn:[2001:db8::7]:5349?transport=udp", TurnServer("2001:db8::7", 5349)),
    ],
)
def test_turn_urls(text, expected):
    assert parse_turn_url(text) == expected
    assert parse_turn_url(expected.url) == expected


@pytest.mark.parametrize(
    "text", ["turns:turn.example.org", "turn:h?transport=tcp", "http://turn.example.org", "turn:h:0", "turn:h:70000"]
)
def test_unusable_turn_urls_are_refused(text):
    with pytest.raises(TurnUrlError):
        parse_turn_url(text)


def test_turn_settings_are_checked_up_front():
    boot = {"mode": "bootnode", "listen": "127.0.0.1:9595"}
    with pytest.raises(ConfigError, match=r"TURN_SECRET \(environment\) needs the TURN server"):
        resolve(boot, {"TURN_SECRET": "s"}, None)
    with pytest.raises(ConfigError, match="invalid TURN_URL"):
        resolve(boot, {"TURN_URL": "turns:x"}, None)
    client = {"mode": "client", "room": "r", "bootnode": "127.0.0.1:9595"}
    with pytest.raises(ConfigError, match="go together"):
        resolve(client, {"TURN_URL": "turn:127.0.0.1", "TURN_USERNAME": "u"}, None)
    s = resolve(boot, {"TURN_URL": "turn:127.0.0.1:3478", "TURN_SECRET": "s"}, None)
    assert s.turn_url == TurnServer("127.0.0.1", 3478) and s.turn_secret == "s"


def test_rest_credentials_follow_the_scheme():
    username, password = rest_credentials("north", "3ab60c1d", now=1_700_000_000.0, ttl_s=600)
    assert username == "1700000600:3ab60c1d"
    # coturn's documentation computes it as
    # echo -n 1700000600:3ab60c1d | openssl dgst -binary -sha1 -hmac north | openssl base64
    assert password == "/AqmbEsxTyXyzWO8Ayvzy81GwVw="


async def _allocate(server, username, password):
    transport, _ = await asyncio.wait_for(
        create_turn_endpoint(asyncio.DatagramProtocol, server, username, password), 10
    )
    relayed = transport.get_extra_info("sockname")
    transport.close()
    await asyncio.sleep(0)
    return relayed


@needs_coturn
def test_coturn_takes_the_credentials_a_shared_secret_mints_and_nothing_else():
    with Coturn(secret="north") as turn:
        username, password = rest_credentials("north", "3ab60c1d", time.time())
        relayed = asyncio.run(_allocate(turn.addr, username, password))
        assert relayed[0] == "127.0.0.1" and relayed[1] > 0
        _, wrong = rest_credentials("south", "3ab60c1d", time.time())
        with pytest.raises(ice_stun.TransactionFailed):
            asyncio.run(_allocate(turn.addr, username, wrong))
        expired, old = rest_credentials("north", "3ab60c1d", time.time() - 2 * CREDENTIAL_TTL_s)
        with pytest.raises(ice_stun.TransactionFailed):
            asyncio.run(_allocate(turn.addr, expired, old))


# --- the bootnode's sealed credentials ---------------------------------------------------


ISSUER = TurnIssuer("turn:198.51.100.7:3478", "north")


def _machine(turn=ISSUER):
    from gochat.bootnode import _purepath

    return Rendezvous(
        _purepath.RegistrationTable(100, 15.0, 0.0),
        heartbeat_interval_s=10.0,
        peer_timeout_s=15.0,
        limits=Limits(1000, 100, 1000.0, 1000),
        cookies=CookieJar(b"k" * 32),
        key=BootnodeKey(b"b" * 32),
        turn=turn,
        unix_time=lambda: 1_700_000_000.0,
    )


def _register(machine, key, relay=True, addr=("198.51.100.1", 4000)):
    register = wire.Register(bytes(16), 7, ROOM, public_key(key), "alice", (), relay=relay)
    (cookie,) = machine.receive_datagram(wire.encode(register), addr, 0.0)
    got = wire.decode(cookie.data)
    proof_key = wire.register_proof_key(dh(key, got.bootnode_key))
    signed = wire.Register(got.cookie, 7, ROOM, public_key(key), "alice", (), relay=relay)
    replies = [
        wire.decode(a.data) for a in machine.receive_datagram(wire.encode_signed_register(signed, proof_key), addr, 0.0)
    ]
    return proof_key, replies


def test_a_relay_registration_gets_credentials_only_it_can_open():
    machine = _machine()
    key = generate_private_key()
    proof_key, replies = _register(machine, key)
    registered, sealed = replies[0], replies[1]
    assert isinstance(registered, wire.Registered) and isinstance(sealed, wire.TurnCredentials)
    grant = wire.open_turn_credentials(wire.turn_credentials_key(proof_key), registered.token, sealed)
    assert grant.url == "turn:198.51.100.7:3478"
    assert grant.expires == 1_700_000_000 + CREDENTIAL_TTL_s
    assert (grant.username, grant.password) == rest_credentials("north", public_key(key)[:8].hex(), 1_700_000_000.0)
    # another member's key, another token, one flipped bit: nothing opens
    other_key, _ = _register(machine, generate_private_key(), addr=("198.51.100.2", 4000))
    for k, token, msg in (
        (wire.turn_credentials_key(other_key), registered.token, sealed),
        (wire.turn_credentials_key(proof_key), bytes(12), sealed),
        (
            wire.turn_credentials_key(proof_key),
            registered.token,
            wire.TurnCredentials(sealed.nonce, bytes([sealed.sealed[0] ^ 1]) + sealed.sealed[1:]),
        ),
    ):
        with pytest.raises(wire.DecodeError):
            wire.open_turn_credentials(k, token, msg)


def test_no_credentials_without_a_relay_request_or_a_turn_server():
    _, replies = _register(_machine(), generate_private_key(), relay=False)
    assert not any(isinstance(r, wire.TurnCredentials) for r in replies)
    _, replies = _register(_machine(turn=None), generate_private_key())
    assert not any(isinstance(r, wire.TurnCredentials) for r in replies)


def _client(key, turn=None):
    room = RoomClient(
        static_private=key,
        name="alice",
        room="lobby",
        psk=room_psk("lobby", None),
        bootnode=("192.0.2.1", 9595),
        now=0.0,
    )
    if turn is not None:
        room.turn = turn
    return room


def test_credentials_that_overtake_their_registered_are_opened_after_it():
    machine = _machine()
    key = generate_private_key()
    client = _client(key)
    bootnode = ("192.0.2.1", 9595)
    for _ in range(3):  # register, cookie, register with proof
        replies = []
        for data, dest in client.outbox:
            if dest == bootnode and data[0] == wire.MAGIC:
                replies += [a.data for a in machine.receive_datagram(data, ("198.51.100.1", 4000), 0.0)]
        client.outbox.clear()
        # UDP reorders: the sealed credentials arrive before the REGISTERED they follow
        replies.sort(key=lambda r: r[2] != wire.MsgType.TURN_CREDENTIALS)
        for data in replies:
            client.receive_datagram(data, bootnode, 0.0)
    assert client.link.turn_grant is not None and client.link.turn_grant.url == "turn:198.51.100.7:3478"


def test_a_members_turn_address_is_used_only_on_our_own_turn_server():
    """A member may announce any address as its TURN relayed address: we reach it only
    through our own allocation, and only on the same TURN server, which relays nothing
    to an address we gave it no permission for. An address elsewhere is never sent to."""
    client = _client(generate_private_key(), turn=("203.0.113.9", 50000))
    same = wire.PeerEntry(
        public_key(generate_private_key()),
        "bob",
        (("198.51.100.2", 4545),),
        relay=bytes(8),
        turn=("203.0.113.9", 50001),
    )
    victim = wire.PeerEntry(
        public_key(generate_private_key()), "eve", (("198.51.100.3", 4545),), turn=("192.0.2.99", 53)
    )
    assert turn_endpoint(("203.0.113.9", 50001)) in client._candidates(same)
    assert not [c for c in client._candidates(same) if c[0] == "relay"]  # TURN instead of the bootnode's relay
    assert all(c[1] != 53 for c in client._candidates(victim))
    assert not any("192.0.2.99" in c[0] for c in client._candidates(victim))
    alone = _client(generate_private_key())  # no TURN of our own: no TURN candidates at all
    assert [c for c in alone._candidates(same) if c[0].startswith("turn/")] == []
    assert [c[0] for c in alone._candidates(same)] == ["198.51.100.2", "relay"]  # the bootnode's relay then


# --- real processes, real coturn on loopback ------------------------------------------------


@needs_coturn
def test_clients_allocate_with_credentials_from_the_bootnode_and_announce_their_relayed_address(tmp_path):
    with Coturn(secret="north") as turn:
        boot = Bootnode(extra=["--turn-url", f"turn:127.0.0.1:{turn.port}", "--turn-secret", "north"])
        alice = Client(boot.address, "alice", tmp_path)
        bob = Client(boot.address, "bob", tmp_path)
        try:
            for c in (alice, bob):
                note = c.wait_for(lambda e: "relaying through TURN" in e.get("message", ""), what="a TURN allocation")
                assert "127.0.0.1:" in note["message"]
            alice.wait_event("peer_connected", name="bob")
            alice.say("over the direct path")  # loopback punches: TURN stays unused, as it should
            bob.wait_for(lambda e: e.get("text") == "over the direct path", what="alice's message")
            assert bob.wait_event("peer_connected", name="alice")["path"] == "direct"
        finally:
            for c in (alice, bob):
                c.kill()
            boot.stop()


def test_lost_credentials_are_asked_for_again():
    """UDP loses the TURN_CREDENTIALS: its REGISTERED said they follow, so the client
    sends the same REGISTER again after a second and gets them with the retry's reply."""
    machine = _machine()
    client = _client(generate_private_key())
    bootnode = ("192.0.2.1", 9595)
    lost = []

    def exchange(now):
        for data, dest in client.outbox:
            if dest == bootnode and data[0] == wire.MAGIC:
                for action in machine.receive_datagram(data, ("198.51.100.1", 4000), now):
                    if action.data[2] == wire.MsgType.TURN_CREDENTIALS and not lost:
                        lost.append(action.data)  # the first one never arrives
                        continue
                    client.receive_datagram(action.data, bootnode, now)
        client.outbox.clear()

    for _ in range(3):
        exchange(0.0)
    assert lost and client.link.turn_grant is None and client.link.state.value == "registered"
    assert client.get_timer() <= 1.0
    client.handle_timer(1.0)
    exchange(1.0)
    assert client.link.turn_grant is not None
    assert machine.stats["register.duplicate"] == 1 and machine.stats["turn.credentials_sent"] == 2
