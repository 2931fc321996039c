"""Defaults and implementation limits in one place.

These are local choices that a deployment may tune through settings; the constants of
the wire contract (docs/PROTOCOL.md) are in gochat/wire/constants.py. Units are in the
names: ``_s`` seconds, ``_ms`` milliseconds, ``_bytes`` bytes.
"""

from __future__ import annotations

# --- defaults of the seed (GoChat) ------------------------------------------------
DEFAULT_BOOTNODE_UDP_PORT = 9595
DEFAULT_LOCAL_UDP_PORT = 4545
DEFAULT_LISTEN = "0.0.0.0:9595"
DEFAULT_HEARTBEAT_INTERVAL_s = 10.0
DEFAULT_PEER_TIMEOUT_s = 15.0

# --- bootnode implementation limits -----------------------------------------------
DEFAULT_MAX_PEERS = 1_000_000
DEFAULT_MAX_PEERS_PER_ROOM = 1024
# Registrations one source IP may hold in one room: a NAT with a household or an office
# behind it fits; one address cannot fill a room with throwaway keys.
DEFAULT_MAX_PEERS_PER_SOURCE = 16
# Registrations a single source IP may make per second (token bucket), with a burst.
# A NAT with a few dozen users behind one address stays well inside it.
DEFAULT_REGISTER_RATE_PER_IP = 20.0
DEFAULT_REGISTER_BURST_PER_IP = 40
# Source addresses tracked by the rate limiter before it starts refusing: bounds memory
# under a flood of spoofed sources (they cannot pass the cookie check anyway).
STUN_RATE_PER_IP = 10.0  # STUN Binding answers per second per source IP (their replies are larger)
STUN_BURST_PER_IP = 20
MAX_RATE_LIMITED_SOURCES = 100_000
# SO_RCVBUF: absorbs the bootnode's wake-up latency. The Linux default (~208 KiB,
# about 256 small datagrams) loses packets on a busy loopback even at 40% CPU.
DEFAULT_LOG_SUMMARY_INTERVAL_s = 60.0  # the bootnode logs what it did this often (if anything)
DEFAULT_RECV_BUFFER_bytes = 8 * 1024 * 1024
# recvmmsg/sendmmsg batch size (datagrams per system call): a millisecond's batch wait at
# 150,000 datagrams a second gathers about 150, read in one call.
BATCH_SIZE = 256
# Bytes the fast path reserves per datagram of a batch: more than MAX_DATAGRAM_bytes, so
# oversized input is still seen whole enough to be counted.
DATAGRAM_BUFFER_bytes = 2048
# Card bytes the compiled table keeps inline per slot; longer cards spill to a dict. A
# typical card (key, short name, one IPv4 endpoint) is about 50 bytes.
INLINE_CARD_bytes = 64
# Receive batches handled per readiness callback before yielding to other tasks.
MAX_BATCHES_PER_WAKEUP = 64
DEFAULT_BATCH_WAIT_s = 0.001  # after a short batch, let datagrams gather this long (BATCH_WAIT)

# Relay (the bootnode forwards peers' encrypted datagrams when they cannot punch). A chat
# needs little: 64 KiB/s per binding with a 256 KiB burst carries a 64 KiB message at
# once; 100 Mbit/s in all keeps a small server's uplink for its other work.
DEFAULT_RELAY_RATE_bytes = 64 * 1024
DEFAULT_RELAY_BURST_bytes = 256 * 1024
DEFAULT_RELAY_TOTAL_RATE_bytes = 12_500_000
DEFAULT_RELAY_BINDINGS_PER_IP = 32  # a NAT with an office behind it fits
DEFAULT_RELAY_MAX_BINDINGS = 100_000

# Timing wheel granularity. A power of two in milliseconds so that the 32-bit
# millisecond clock wraps onto the same wheel slot sequence.
WHEEL_TICK_ms = 128

# --- client: bootnode link --------------------------------------------------------
# Answer timeouts of the first registration's first tries (backoff); then it tries every
# REGISTER_RETRY_MAX_s until DEFAULT_REGISTER_TIMEOUT_s (setting REGISTER_TIMEOUT) have
# passed without an answer: a lossy path must not end the client, a bootnode that never
# answers is a setup problem the user hears about as it happens.
REGISTER_TIMEOUTS_s = (1.0, 1.5, 2.5, 3.0)
DEFAULT_REGISTER_TIMEOUT_s = 60.0
# Retries back off up to this (once registered they never give up).
REGISTER_RETRY_MAX_s = 5.0
DISCONNECT_RETRY_s = 0.25
# A client answers at most one REBIND_CHALLENGE per this interval (a real rebinding needs one).
REBIND_ANSWER_INTERVAL_s = 1.0
DISCONNECT_WAIT_s = 1.0  # a graceful quit waits at most this for the ack

# --- client: peers ------------------------------------------------------------------
# Punch rounds after a peer is introduced (seconds from the start), then every
# PUNCH_INTERVAL_s until PUNCH_DEADLINE_s, when the peer is reported unreachable.
PUNCH_SCHEDULE_s = (0.0, 0.1, 0.25, 0.5, 1.0)
PUNCH_INTERVAL_s = 1.0
PUNCH_DEADLINE_s = 8.0
HANDSHAKE_RETRY_s = 1.0  # a new initiation when no response came back
HANDSHAKE_DEADLINE_s = 10.0  # after a path is found, a session must be up by then
# An unreachable or failed peer is looked for again after PEER_RETRY_s, doubling after
# each failure in a row up to PEER_RETRY_MAX_s, for as long as it is in the room.
PEER_RETRY_s = 4.0  # soon: a handshake that timed out under loss deserves another try
PEER_RETRY_MAX_s = 60.0
# A responder that answered this many initiations and never saw the initiator's first
# transport packet concludes that the initiator failed to authenticate it (a different
# passphrase). Not 3: at 20% loss each way, 3 unconfirmed rounds in a row happen to
# honest pairs about once in twenty handshakes; 6 about once in five hundred.
HANDSHAKE_UNCONFIRMED_LIMIT = 6
# An initiator that got this many responses failing to authenticate concludes the same
# (loss cannot make a response fail to authenticate).
HANDSHAKE_AUTH_FAILURE_LIMIT = 3
# A HEARTBEAT whose ACK did not come within max(1 s, 3 RTT) is sent again, at most this
# many times per heartbeat interval: at 20% loss each way, one heartbeat per interval
# left a 15 s peer timeout without any answer often enough to call the bootnode lost.
HEARTBEAT_RETRIES = 2
HEARTBEAT_ACK_WAIT_MIN_s = 1.0
# Keepalive on an idle session: well inside the 30 s that many NATs keep a UDP mapping.
PEER_KEEPALIVE_MAX_s = 10.0
MAX_PEERS_PER_CLIENT = 256  # peers a client tracks at once; more are refused politely
# Handshake initiations accepted per source IP (each costs four X25519 operations):
# a peer retries once a second, so this leaves room for many peers behind one NAT.
HANDSHAKE_INIT_RATE_PER_IP = 20.0
HANDSHAKE_INIT_BURST_PER_IP = 40
HANDSHAKE_INIT_SOURCES = 1024
# Initiations from a connected peer's own path (rekeys: one every 2 minutes, retried
# once a second) have a bucket per peer, apart from strangers sharing its IP.
HANDSHAKE_INIT_PATH_RATE = 2.0
HANDSHAKE_INIT_PATH_BURST = 5
