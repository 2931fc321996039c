"""Wire protocol v1 constants: the values docs/PROTOCOL.md specifies, in one place.

Everything here is part of the wire contract: changing a value changes the protocol.
Implementation limits and defaults (which a deployment may tune) are in
gochat/constants.py. The compiled fast path (gochat/bootnode/_fastpath.pyx) cannot
import these values into its C enums; it exposes what it was compiled with, and
tests/test_wire_constants.py pins each of those to the values here.
Units are in the names: ``_s`` seconds, ``_bytes`` bytes.
"""

from __future__ import annotations

# --- framing ----------------------------------------------------------------------
MAGIC = 0x47  # 'G'; the first two bits (01) tell gochat apart from STUN (00)
VERSION = 1
HEADER_SIZE_bytes = 4  # magic, version, type, flags

# --- field sizes ------------------------------------------------------------------
TOKEN_SIZE_bytes = 12  # 4-byte slot index + 8-byte random secret
TOKEN_INDEX_SIZE_bytes = 4
TOKEN_SECRET_SIZE_bytes = 8
COOKIE_SIZE_bytes = 16
ROOM_ID_SIZE_bytes = 16
ROOM_TAG_SIZE_bytes = 8
PUBLIC_KEY_SIZE_bytes = 32
REQUEST_ID_SIZE_bytes = 4
# REGISTER ends with a proof of possession of the static key (HMAC-SHA256 truncated).
PROOF_SIZE_bytes = 16
# REBIND_CHALLENGE carries a MAC that a client echoes from its new address (HMAC-SHA256 truncated).
CHALLENGE_SIZE_bytes = 12

MAX_NAME_bytes = 32
MAX_LOCAL_ENDPOINTS = 4
# Nothing is sent before a path is confirmed larger than this (fits any IPv6 path MTU
# with room for tunnels), so control messages never fragment at the IP layer.
MAX_DATAGRAM_bytes = 1200

HEARTBEAT_SIZE_bytes = HEADER_SIZE_bytes + TOKEN_SIZE_bytes
# HEARTBEAT_ACK: the token, then the room's membership digest (XOR of the first 8 bytes
# of every member's public key), so that a client can tell that it missed an announcement.
ROOM_DIGEST_SIZE_bytes = 8
HEARTBEAT_ACK_SIZE_bytes = HEARTBEAT_SIZE_bytes + ROOM_DIGEST_SIZE_bytes
# A HEARTBEAT with FLAG_REBIND: the token, then the challenge it answers.
REBIND_HEARTBEAT_SIZE_bytes = HEARTBEAT_SIZE_bytes + CHALLENGE_SIZE_bytes
# The answer to a heartbeat from a new source: no larger than the heartbeat.
REBIND_CHALLENGE_SIZE_bytes = HEADER_SIZE_bytes + CHALLENGE_SIZE_bytes

# The proof key of a REGISTER: SHA-256(label || X25519(client static, bootnode static)).
REGISTER_PROOF_LABEL = b"gochat register v1\0"

# Cookie validity: a cookie minted in bucket b is accepted during buckets b and b+1.
COOKIE_BUCKET_s = 60.0

# --- bootnode control plane: message types (header byte 2) ------------------------
T_REGISTER = 0x01
T_COOKIE = 0x02
T_REGISTERED = 0x03
T_REFUSED = 0x04
T_HEARTBEAT = 0x05
T_HEARTBEAT_ACK = 0x06
T_UNKNOWN_TOKEN = 0x07
T_DISCONNECT = 0x08
T_DISCONNECT_ACK = 0x09
T_PEER_LIST = 0x0A
T_PEER_JOINED = 0x0B
T_PEER_LEFT = 0x0C
T_REBIND_CHALLENGE = 0x0D
T_RELAY = 0x0E  # client -> bootnode: an opaque peer datagram for another member's binding
T_RELAYED = 0x0F  # bootnode -> client: a relayed peer datagram and whose binding sent it
T_RELAY_REFUSED = 0x10  # bootnode -> client: a RELAY that was not forwarded, and why
T_TURN_CREDENTIALS = 0x11  # bootnode -> client: a TURN server and time-limited credentials, sealed

# --- flags (header byte 3) --------------------------------------------------------
FLAG_ACK_REQUESTED = 0x01  # HEARTBEAT: the sender wants a HEARTBEAT_ACK
FLAG_REBIND = 0x02  # HEARTBEAT: the token is followed by the challenge of a REBIND_CHALLENGE
FLAG_RELAY = 0x01  # REGISTER: the client asks for a relay binding with its registration
FLAG_RELAY_BOUND = 0x01  # REGISTERED: the endpoint is followed by the binding (id, rate, burst)
FLAG_RELAY_REFUSED = 0x02  # REGISTERED: the endpoint is followed by why no binding was made
FLAG_TURN_OFFERED = 0x04  # REGISTERED: a TURN_CREDENTIALS follows it (ask again if it does not come)

# TURN_CREDENTIALS are sealed (AES-256-GCM) under SHA-256(label || the REGISTER's proof key).
TURN_CREDENTIALS_LABEL = b"gochat turn credentials v1\0"
TURN_NONCE_SIZE_bytes = 12

# --- relay ----------------------------------------------------------------------------
# A relay id names a binding: the registration's slot index (4) and a random nonce (4,
# never zero) that a new binding of the slot replaces.
RELAY_ID_SIZE_bytes = 8
RELAY_NONCE_SIZE_bytes = 4
# RELAY: header, the sender's token, the destination's relay id, then the payload.
RELAY_OVERHEAD_bytes = HEADER_SIZE_bytes + TOKEN_SIZE_bytes + RELAY_ID_SIZE_bytes
# RELAYED: header, the sender's relay id, then the payload: 12 bytes less than the RELAY.
RELAYED_OVERHEAD_bytes = HEADER_SIZE_bytes + RELAY_ID_SIZE_bytes
# RELAY_REFUSED: header, reason (1), retry after (4, ms), the relay id it is about (8).
RELAY_REFUSED_SIZE_bytes = HEADER_SIZE_bytes + 1 + 4 + RELAY_ID_SIZE_bytes
# The endpoint family of a binding in a peer entry: 'R', then the relay id.
FAMILY_RELAY = 0x52
# The endpoint family of a TURN relayed address in a card (and so in its entry): 'T',
# then an endpoint (family 4 or 6, address, port).
FAMILY_TURN = 0x54
