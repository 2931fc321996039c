"""Every protocol constant and implementation limit in one place.

Protocol constants are part of the wire contract (docs/PROTOCOL.md); implementation
limits are local choices that a deployment may tune through settings. Units are in
the names: ``_s`` seconds, ``_ms`` milliseconds, ``_bytes`` bytes.
"""

from __future__ import annotations

# --- wire protocol v1 -------------------------------------------------------------
MAGIC = 0x47  # 'G'; the first two bits (01) tell gochat apart from STUN (00)
VERSION = 1
HEADER_SIZE_bytes = 4

TOKEN_SIZE_bytes = 12  # 4-byte slot index + 8-byte random secret
TOKEN_SECRET_SIZE_bytes = 8
COOKIE_SIZE_bytes = 16
ROOM_ID_SIZE_bytes = 16
ROOM_TAG_SIZE_bytes = 8
PUBLIC_KEY_SIZE_bytes = 32
REQUEST_ID_SIZE_bytes = 4

MAX_NAME_bytes = 32
MAX_LOCAL_ENDPOINTS = 4
# Nothing is sent before a path is confirmed larger than this (fits any IPv6 path MTU
# with room for tunnels), so control messages never fragment at the IP layer.
MAX_DATAGRAM_bytes = 1200

HEARTBEAT_SIZE_bytes = HEADER_SIZE_bytes + TOKEN_SIZE_bytes

# Cookie validity: a cookie minted in bucket b is accepted during buckets b and b+1.
COOKIE_BUCKET_s = 60.0

# --- defaults of the seed (GoChat) ------------------------------------------------
DEFAULT_BOOTNODE_UDP_PORT = 9595
DEFAULT_LOCAL_UDP_PORT = 4545
DEFAULT_LISTEN = "0.0.0.0:9595"
DEFAULT_HEARTBEAT_INTERVAL_s = 10.0
DEFAULT_PEER_TIMEOUT_s = 15.0

# --- bootnode implementation limits -----------------------------------------------
DEFAULT_MAX_PEERS = 1_000_000
DEFAULT_MAX_PEERS_PER_ROOM = 1024
# Registrations a single source IP may make per second (token bucket), with a burst.
# A NAT with a few dozen users behind one address stays well inside it.
DEFAULT_REGISTER_RATE_PER_IP = 20.0
DEFAULT_REGISTER_BURST_PER_IP = 40
# Source addresses tracked by the rate limiter before it starts refusing: bounds memory
# under a flood of spoofed sources (they cannot pass the cookie check anyway).
MAX_RATE_LIMITED_SOURCES = 100_000
# SO_RCVBUF: absorbs the bootnode's wake-up latency. The Linux default (~208 KiB,
# about 256 small datagrams) loses packets on a busy loopback even at 40% CPU.
DEFAULT_RECV_BUFFER_bytes = 8 * 1024 * 1024
# recvmmsg/sendmmsg batch size (datagrams per system call).
BATCH_SIZE = 64
# Receive batches handled per readiness callback before yielding to other tasks.
MAX_BATCHES_PER_WAKEUP = 64

# Timing wheel granularity. A power of two in milliseconds so that the 32-bit
# millisecond clock wraps onto the same wheel slot sequence.
WHEEL_TICK_ms = 128

# --- client: bootnode link --------------------------------------------------------
# Answer timeouts of the first registration's tries (backoff); after the last one the
# client gives up with an error (a bootnode that never answered is a setup problem).
REGISTER_TIMEOUTS_s = (1.0, 1.5, 2.5, 3.0)
# Once registered, re-registration retries back off up to this and never give up.
REGISTER_RETRY_MAX_s = 5.0
DISCONNECT_RETRY_s = 0.25
DISCONNECT_WAIT_s = 1.0          # a graceful quit waits at most this for the ack

# --- client: peers ------------------------------------------------------------------
# Punch rounds after a peer is introduced (seconds from the start), then every
# PUNCH_INTERVAL_s until PUNCH_DEADLINE_s, when the peer is reported unreachable.
PUNCH_SCHEDULE_s = (0.0, 0.1, 0.25, 0.5, 1.0)
PUNCH_INTERVAL_s = 1.0
PUNCH_DEADLINE_s = 8.0
HANDSHAKE_RETRY_s = 1.0          # a new initiation when no response came back
HANDSHAKE_DEADLINE_s = 10.0      # after a path is found, a session must be up by then
# A responder that answered this many initiations and never saw the initiator's first
# transport packet concludes that the initiator failed to authenticate it.
HANDSHAKE_UNCONFIRMED_LIMIT = 3
# Keepalive on an idle session: well inside the 30 s that many NATs keep a UDP mapping.
PEER_KEEPALIVE_MAX_s = 10.0
MAX_PEERS_PER_CLIENT = 256       # peers a client tracks at once; more are refused politely
# Handshake initiations accepted per source IP (each costs four X25519 operations):
# a peer retries once a second, so this leaves room for many peers behind one NAT.
HANDSHAKE_INIT_RATE_PER_IP = 20.0
HANDSHAKE_INIT_BURST_PER_IP = 40
HANDSHAKE_INIT_SOURCES = 1024
