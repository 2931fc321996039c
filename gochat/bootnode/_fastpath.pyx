# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Bootnode per-packet work in C: the registration table with its timing wheel, batched
receive (recvmmsg) with heartbeats handled without touching Python, batched send
(sendmmsg). Policy-free: limits, cookies and announcements live in rendezvous.py.

gochat/bootnode/_purepath.py is the pure-Python twin with the same API; keep them in step
(tests/test_fastpath.py runs every case against both).
"""

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int32_t
from libc.stdlib cimport calloc, malloc, realloc, free
from libc.string cimport memcpy, memcmp, memset
from libc.errno cimport errno, EAGAIN, EINTR
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE

import os
import socket as _socket

from gochat.wire.endpoints import endpoint_key, key_endpoint

cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t
    ctypedef unsigned short sa_family_t
    struct sockaddr:
        sa_family_t sa_family
    struct sockaddr_storage:
        sa_family_t ss_family
    struct iovec:
        void *iov_base
        size_t iov_len
    struct msghdr:
        void *msg_name
        socklen_t msg_namelen
        iovec *msg_iov
        size_t msg_iovlen
        void *msg_control
        size_t msg_controllen
        int msg_flags
    struct mmsghdr:
        msghdr msg_hdr
        unsigned int msg_len
    struct timespec:
        pass
    int recvmmsg(int fd, mmsghdr *msgvec, unsigned int vlen, int flags, timespec *timeout)
    int sendmmsg(int fd, mmsghdr *msgvec, unsigned int vlen, int flags)
    int MSG_DONTWAIT
    int AF_INET
    int AF_INET6

cdef extern from "<netinet/in.h>" nogil:
    struct in_addr:
        uint32_t s_addr
    struct sockaddr_in:
        sa_family_t sin_family
        uint16_t sin_port
        in_addr sin_addr
    struct in6_addr:
        uint8_t s6_addr[16]
    struct sockaddr_in6:
        sa_family_t sin6_family
        uint16_t sin6_port
        uint32_t sin6_flowinfo
        in6_addr sin6_addr
        uint32_t sin6_scope_id
    uint16_t htons(uint16_t)
    uint16_t ntohs(uint16_t)

# C enums cannot take their values from Python: these copy gochat/wire/constants.py and
# gochat/constants.py, and CONSTANTS below exposes them so that
# tests/test_wire_constants.py can pin every one to its reference.
cdef enum:
    MAGIC = 0x47               # wire: MAGIC
    VERSION = 1                # wire: VERSION
    HEADER_SIZE = 4            # wire: HEADER_SIZE_bytes
    T_HEARTBEAT = 0x05         # wire: T_HEARTBEAT
    T_HEARTBEAT_ACK = 0x06     # wire: T_HEARTBEAT_ACK
    T_UNKNOWN_TOKEN = 0x07     # wire: T_UNKNOWN_TOKEN
    FLAG_ACK_REQUESTED = 0x01  # wire: FLAG_ACK_REQUESTED
    FLAG_REBIND = 0x02         # wire: FLAG_REBIND
    TOKEN_INDEX_SIZE = 4       # wire: TOKEN_INDEX_SIZE_bytes
    TOKEN_SECRET_SIZE = 8      # wire: TOKEN_SECRET_SIZE_bytes
    TOKEN_SIZE = 12            # wire: TOKEN_SIZE_bytes
    HEARTBEAT_SIZE = 16        # wire: HEARTBEAT_SIZE_bytes
    ROOM_DIGEST_SIZE = 8       # wire: ROOM_DIGEST_SIZE_bytes
    HEARTBEAT_ACK_SIZE = 24    # wire: HEARTBEAT_ACK_SIZE_bytes
    ROOM_ID_SIZE = 16          # wire: ROOM_ID_SIZE_bytes
    ROOM_TAG_SIZE = 8          # wire: ROOM_TAG_SIZE_bytes
    PUBLIC_KEY_SIZE = 32       # wire: PUBLIC_KEY_SIZE_bytes
    BUF_SIZE = 2048            # DATAGRAM_BUFFER_bytes (> MAX_DATAGRAM_bytes: oversize input is still seen whole enough to count)
    CARD_CELL = 64             # INLINE_CARD_bytes: card bytes kept inline per slot; longer cards spill to a dict
    TICK_SHIFT = 7             # WHEEL_TICK_ms == 1 << TICK_SHIFT (128 ms)
    TICK_SPACE_MASK = 0x1FFFFFF  # 2**32 ms >> TICK_SHIFT: tick numbers wrap together with the clock
    BATCH_SIZE = 256           # BATCH_SIZE: the default recvmmsg/sendmmsg batch
    T_RELAY = 0x0E             # wire: T_RELAY
    T_RELAYED = 0x0F           # wire: T_RELAYED
    T_RELAY_REFUSED = 0x10     # wire: T_RELAY_REFUSED
    RELAY_OVERHEAD = 24        # wire: RELAY_OVERHEAD_bytes (header, token, relay id)
    RELAY_ID_SIZE = 8          # wire: RELAY_ID_SIZE_bytes
    FAMILY_RELAY = 0x52        # wire: FAMILY_RELAY
    MAX_DATAGRAM = 1200        # wire: MAX_DATAGRAM_bytes
    # table.relay() outcomes; the positive ones are RELAY_REFUSED reasons (RelayRefuseReason)
    RELAY_FORWARD = 0
    RELAY_UNKNOWN_TOKEN = -1
    RELAY_WRONG_SOURCE = -2
    REFUSE_NOT_BOUND = 1
    REFUSE_NO_SUCH_PEER = 2
    REFUSE_RATE_LIMITED = 3
    REFUSE_BUSY = 4
    REFUSAL_INTERVAL_ms = 1000  # at most one RELAY_REFUSED per registration per second
    MAX_SLOTS = 0xFFFFFF        # a token's slot index is 24 bits: its first byte is the shard
    MAX_REFILL_ms = 1048576     # refills are computed over at most this long
    NONE = -1

cdef uint8_t V4_PREFIX[12]
memset(V4_PREFIX, 0, 10)
V4_PREFIX[10] = 0xff
V4_PREFIX[11] = 0xff

cdef inline uint64_t _key8(const void *card) noexcept:
    """The first 8 bytes of a card's public key, as a word: XORed into the room digest
    (byte for byte, so the digest's bytes do not depend on the machine's byte order)."""
    cdef uint64_t v
    memcpy(&v, card, 8)
    return v


ctypedef struct Slot:
    uint64_t secret      # 0: free
    uint8_t addr[16]     # IPv4 stored IPv4-mapped
    uint16_t port        # host byte order
    uint8_t card_len     # 0 when the card spilled to the dict
    uint8_t expiring     # handed out by expire(), waiting for remove()
    uint32_t last_ms     # last heartbeat, 32-bit millisecond clock (wraps every 49 days)
    int32_t wprev        # timing wheel list
    int32_t wnext
    int32_t room         # index into rooms
    int32_t rprev        # room member list
    int32_t rnext
    uint32_t relay_nonce # the relay binding's nonce (as its 4 bytes lie in memory); 0: not bound
    uint32_t relay_ms    # when its token bucket was last refilled
    uint32_t refused_ms  # when the last RELAY_REFUSED went to it (0: never; 1 for the clock's 0)
    uint64_t relay_tokens  # the bucket, in thousandths of a byte

ctypedef struct Room:
    uint8_t id[ROOM_ID_SIZE]
    uint8_t tag[ROOM_TAG_SIZE]
    int32_t head
    int32_t count        # 0 and head == NONE: free (then head reused as free-list link)
    uint64_t digest      # XOR of the first 8 bytes of every member's public key (HEARTBEAT_ACK)


from gochat.bootnode._purepath import TableFull  # one exception class for both twins

# What this module was compiled with, under the names the pure-Python twin uses too.
CONSTANTS = {
    "MAGIC": MAGIC,
    "VERSION": VERSION,
    "HEADER_SIZE": HEADER_SIZE,
    "T_HEARTBEAT": T_HEARTBEAT,
    "T_HEARTBEAT_ACK": T_HEARTBEAT_ACK,
    "T_UNKNOWN_TOKEN": T_UNKNOWN_TOKEN,
    "FLAG_ACK_REQUESTED": FLAG_ACK_REQUESTED,
    "FLAG_REBIND": FLAG_REBIND,
    "HEARTBEAT_SIZE": HEARTBEAT_SIZE,
    "ROOM_DIGEST_SIZE": ROOM_DIGEST_SIZE,
    "HEARTBEAT_ACK_SIZE": HEARTBEAT_ACK_SIZE,
    "TOKEN_SIZE": TOKEN_SIZE,
    "TOKEN_INDEX_SIZE": TOKEN_INDEX_SIZE,
    "TOKEN_SECRET_SIZE": TOKEN_SECRET_SIZE,
    "ROOM_ID_SIZE": ROOM_ID_SIZE,
    "ROOM_TAG_SIZE": ROOM_TAG_SIZE,
    "PUBLIC_KEY_SIZE": PUBLIC_KEY_SIZE,
    "BUF_SIZE": BUF_SIZE,
    "TICK_SHIFT": TICK_SHIFT,
    "TICK_SPACE_MASK": TICK_SPACE_MASK,
    "BATCH_SIZE": BATCH_SIZE,
    "T_RELAY": T_RELAY,
    "T_RELAYED": T_RELAYED,
    "T_RELAY_REFUSED": T_RELAY_REFUSED,
    "RELAY_OVERHEAD": RELAY_OVERHEAD,
    "FAMILY_RELAY": FAMILY_RELAY,
    "MAX_DATAGRAM": MAX_DATAGRAM,
    "CARD_CELL": CARD_CELL,
    "SLOT_SIZE": sizeof(Slot),
    "ROOM_SIZE": sizeof(Room),
}


cdef inline uint32_t ms_of(double now):
    return <uint32_t>(<uint64_t>(now * 1000.0))


cdef inline uint64_t mix64(uint64_t x):
    x ^= x >> 30
    x *= 0xbf58476d1ce4e5b9ULL
    x ^= x >> 27
    x *= 0x94d049bb133111ebULL
    x ^= x >> 31
    return x


cdef class RegistrationTable:
    """Registrations in fixed-size slots, addressed directly by the token's slot index;
    expiry by a timing wheel whose per-slot lists stay sorted by deadline, so one
    expire() costs O(expired + wheel slots crossed)."""

    cdef Slot *slots
    cdef uint8_t *cards
    cdef dict spill
    cdef readonly int capacity
    cdef int32_t high          # slots ever used (allocation is sequential: RSS follows use)
    cdef int32_t free_head
    cdef int32_t used
    cdef uint32_t timeout_ms
    cdef int32_t *wheel_head
    cdef int32_t *wheel_tail
    cdef uint32_t wheel_mask
    cdef uint32_t cursor       # tick number processed up to (inclusive, partially)
    cdef uint32_t last_ms
    cdef Room *rooms
    cdef int32_t rooms_cap
    cdef int32_t rooms_high
    cdef int32_t rooms_free
    cdef int32_t rooms_used
    cdef int32_t *room_index
    cdef uint32_t room_index_mask
    cdef uint64_t key0, key1
    cdef uint64_t relay_rate, relay_burst, total_rate, total_burst, total_tokens
    cdef uint32_t total_ms
    cdef readonly int shard    # the first byte of every token and relay id (the worker, --workers)

    def __cinit__(self, int capacity, double timeout_s, double now, int shard=0):
        cdef uint32_t ticks, w
        if capacity <= 0 or capacity > MAX_SLOTS:
            raise ValueError("capacity must be between 1 and 2**24-1")
        if not (0 < timeout_s <= 86400):
            raise ValueError("timeout_s must be in (0, 86400]")
        if shard < 0 or shard > 255:
            raise ValueError("shard must be 0..255")
        self.shard = shard
        self.capacity = capacity
        self.slots = <Slot *>calloc(capacity, sizeof(Slot))
        self.cards = <uint8_t *>malloc(<size_t>capacity * CARD_CELL)  # untouched pages cost no RSS
        self.spill = {}
        self.high = 0
        self.free_head = NONE
        self.used = 0
        self.timeout_ms = <uint32_t>(timeout_s * 1000.0)
        ticks = (self.timeout_ms >> TICK_SHIFT) + 2
        w = 64
        while w < ticks:
            w <<= 1
        self.wheel_mask = w - 1
        self.wheel_head = <int32_t *>malloc(w * sizeof(int32_t))
        self.wheel_tail = <int32_t *>malloc(w * sizeof(int32_t))
        self.rooms_cap = 0
        self.rooms = NULL
        self.room_index = NULL
        if self.slots == NULL or self.cards == NULL or self.wheel_head == NULL or self.wheel_tail == NULL:
            raise MemoryError()
        memset(self.wheel_head, 0xff, w * sizeof(int32_t))
        memset(self.wheel_tail, 0xff, w * sizeof(int32_t))
        self.last_ms = ms_of(now)
        self.cursor = self.last_ms >> TICK_SHIFT
        rnd = os.urandom(16)
        memcpy(&self.key0, PyBytes_AS_STRING(rnd), 8)
        memcpy(&self.key1, PyBytes_AS_STRING(rnd) + 8, 8)
        self.rooms_high = 0
        self.rooms_free = NONE
        self.rooms_used = 0
        self._grow_rooms(64)
        self.set_relay_limits(0, 0, 0, 0)

    def set_relay_limits(self, uint64_t rate, uint64_t burst, uint64_t total_rate, uint64_t total_burst):
        """Bytes per second and burst bytes each binding may relay, and all together (a
        rate of 0: no limit). Buckets count thousandths of a byte: a millisecond refills
        ``rate`` of them, exactly, in integers (as the twin does)."""
        if max(rate, burst, total_rate, total_burst) > 0xFFFFFFFF:
            raise ValueError("relay limits must be 0..2**32-1")
        self.relay_rate, self.relay_burst = rate, burst
        self.total_rate, self.total_burst = total_rate, total_burst
        self.total_tokens = total_burst * 1000
        self.total_ms = self.last_ms

    def __dealloc__(self):
        free(self.slots)
        free(self.cards)
        free(self.wheel_head)
        free(self.wheel_tail)
        free(self.rooms)
        free(self.room_index)

    def __len__(self):
        return self.used

    @property
    def room_count(self):
        return self.rooms_used

    # --- rooms: open addressing with a keyed hash, backward-shift deletion ---------

    cdef uint32_t _room_hash(self, const uint8_t *rid) noexcept:
        cdef uint64_t a, b
        memcpy(&a, rid, 8)
        memcpy(&b, rid + 8, 8)
        return <uint32_t>mix64(mix64(a ^ self.key0) ^ b ^ self.key1)

    cdef int _grow_rooms(self, int32_t new_cap) except -1:
        cdef Room *r = <Room *>realloc(self.rooms, new_cap * sizeof(Room))
        if r == NULL:
            raise MemoryError()
        self.rooms = r
        self.rooms_cap = new_cap
        cdef uint32_t size = 1
        while size < <uint32_t>new_cap * 2:
            size <<= 1
        free(self.room_index)
        self.room_index = <int32_t *>malloc(size * sizeof(int32_t))
        if self.room_index == NULL:
            raise MemoryError()
        memset(self.room_index, 0xff, size * sizeof(int32_t))
        self.room_index_mask = size - 1
        cdef int32_t i
        cdef uint32_t h
        for i in range(self.rooms_high):
            if self.rooms[i].count > 0:
                h = self._room_hash(self.rooms[i].id) & self.room_index_mask
                while self.room_index[h] != NONE:
                    h = (h + 1) & self.room_index_mask
                self.room_index[h] = i
        return 0

    cdef int32_t _find_room(self, const uint8_t *rid) noexcept:
        cdef uint32_t h = self._room_hash(rid) & self.room_index_mask
        cdef int32_t r
        while True:
            r = self.room_index[h]
            if r == NONE:
                return NONE
            if memcmp(self.rooms[r].id, rid, ROOM_ID_SIZE) == 0:
                return r
            h = (h + 1) & self.room_index_mask

    cdef int32_t _room_for_add(self, const uint8_t *rid, const uint8_t *tag) except -2:
        cdef int32_t r = self._find_room(rid)
        cdef uint32_t h
        if r != NONE:
            return r
        if self.rooms_free != NONE:
            r = self.rooms_free
            self.rooms_free = self.rooms[r].head
        else:
            if self.rooms_high == self.rooms_cap:
                self._grow_rooms(self.rooms_cap * 2)
            r = self.rooms_high
            self.rooms_high += 1
        memcpy(self.rooms[r].id, rid, ROOM_ID_SIZE)
        memcpy(self.rooms[r].tag, tag, ROOM_TAG_SIZE)
        self.rooms[r].head = NONE
        self.rooms[r].count = 0
        self.rooms[r].digest = 0
        h = self._room_hash(rid) & self.room_index_mask
        while self.room_index[h] != NONE:
            h = (h + 1) & self.room_index_mask
        self.room_index[h] = r
        self.rooms_used += 1
        return r

    cdef void _drop_room(self, int32_t r) noexcept:
        cdef uint32_t mask = self.room_index_mask
        cdef uint32_t i = self._room_hash(self.rooms[r].id) & mask
        cdef uint32_t j, k
        while self.room_index[i] != r:
            i = (i + 1) & mask
        j = i
        while True:  # backward-shift deletion keeps probe chains intact without tombstones
            j = (j + 1) & mask
            if self.room_index[j] == NONE:
                break
            k = self._room_hash(self.rooms[self.room_index[j]].id) & mask
            if (i <= j and (k <= i or k > j)) or (i > j and (k <= i and k > j)):
                self.room_index[i] = self.room_index[j]
                i = j
        self.room_index[i] = NONE
        self.rooms[r].count = 0
        self.rooms[r].head = self.rooms_free
        self.rooms_free = r
        self.rooms_used -= 1

    # --- timing wheel ---------------------------------------------------------------

    cdef inline void _wheel_link(self, int32_t i) noexcept:
        cdef uint32_t w = ((self.slots[i].last_ms + self.timeout_ms) >> TICK_SHIFT) & self.wheel_mask
        cdef int32_t tail = self.wheel_tail[w]
        self.slots[i].wprev = tail
        self.slots[i].wnext = NONE
        if tail == NONE:
            self.wheel_head[w] = i
        else:
            self.slots[tail].wnext = i
        self.wheel_tail[w] = i

    cdef inline void _wheel_unlink(self, int32_t i) noexcept:
        cdef Slot *s = &self.slots[i]
        cdef uint32_t w
        if s.wprev == NONE or s.wnext == NONE:
            w = ((s.last_ms + self.timeout_ms) >> TICK_SHIFT) & self.wheel_mask
            if s.wprev == NONE:
                self.wheel_head[w] = s.wnext
            if s.wnext == NONE:
                self.wheel_tail[w] = s.wprev
        if s.wprev != NONE:
            self.slots[s.wprev].wnext = s.wnext
        if s.wnext != NONE:
            self.slots[s.wnext].wprev = s.wprev

    cdef inline uint32_t _clock(self, double now) noexcept:
        cdef uint32_t t = ms_of(now)
        if <int32_t>(t - self.last_ms) > 0:
            self.last_ms = t
        return self.last_ms   # never runs backwards: keeps every wheel list sorted

    cdef inline void _touch(self, int32_t i, uint32_t now_ms) noexcept:
        cdef Slot *s = &self.slots[i]
        if s.last_ms == now_ms or s.expiring:
            return
        self._wheel_unlink(i)
        s.last_ms = now_ms
        self._wheel_link(i)

    def expire(self, double now):
        """Unlink and return the slots whose deadline (last heartbeat + timeout) is <= now.
        The caller announces them and then calls remove() on each."""
        cdef uint32_t now_ms = self._clock(now)
        cdef uint32_t target = now_ms >> TICK_SHIFT
        cdef uint32_t steps = (target - self.cursor) & TICK_SPACE_MASK
        cdef uint32_t t, w
        cdef int32_t i, nxt
        cdef list out = []
        if steps > self.wheel_mask:
            steps = self.wheel_mask
            self.cursor = (target - steps) & TICK_SPACE_MASK
        for t in range(steps + 1):
            w = (self.cursor + t) & self.wheel_mask
            i = self.wheel_head[w]
            while i != NONE and <int32_t>(now_ms - (self.slots[i].last_ms + self.timeout_ms)) >= 0:
                nxt = self.slots[i].wnext
                self.slots[i].expiring = 1
                out.append(i)
                i = nxt
            self.wheel_head[w] = i
            if i == NONE:
                self.wheel_tail[w] = NONE
            else:
                self.slots[i].wprev = NONE
        self.cursor = target
        return out

    # --- registrations --------------------------------------------------------------

    cdef inline int32_t _index_of(self, const uint8_t *token) noexcept:
        cdef uint32_t idx = (<uint32_t>token[1] << 16) | (<uint32_t>token[2] << 8) | token[3]
        cdef uint64_t secret
        if token[0] != self.shard or idx >= <uint32_t>self.high:
            return NONE
        memcpy(&secret, token + TOKEN_INDEX_SIZE, TOKEN_SECRET_SIZE)
        if secret == 0 or self.slots[idx].secret != secret or self.slots[idx].expiring:
            return NONE
        return <int32_t>idx

    def add(self, bytes room_id, bytes room_tag, bytes secret, bytes card, tuple addr, double now):
        """Create a registration; returns its slot. Raises TableFull when no slot is free."""
        cdef int32_t i, r
        cdef Slot *s
        if len(room_id) != ROOM_ID_SIZE or len(room_tag) != ROOM_TAG_SIZE or len(secret) != TOKEN_SECRET_SIZE:
            raise ValueError("room_id 16, room_tag 8 and secret 8 bytes")
        if len(card) == 0 or len(card) > 255:
            raise ValueError("card must be 1..255 bytes")
        key, port = endpoint_key(addr)
        if self.free_head != NONE:
            i = self.free_head
            self.free_head = self.slots[i].wnext
        elif self.high < self.capacity:
            i = self.high
            self.high += 1
        else:
            raise TableFull(f"registration table full ({self.capacity} registrations)")
        r = self._room_for_add(<const uint8_t *>PyBytes_AS_STRING(room_id), <const uint8_t *>PyBytes_AS_STRING(room_tag))
        s = &self.slots[i]
        memcpy(&s.secret, PyBytes_AS_STRING(secret), TOKEN_SECRET_SIZE)
        if s.secret == 0:
            s.secret = 1
        memcpy(s.addr, PyBytes_AS_STRING(key), 16)
        s.port = port
        s.expiring = 0
        s.relay_nonce = 0
        s.relay_tokens = 0
        s.relay_ms = 0
        s.refused_ms = 0
        if len(card) <= CARD_CELL:
            memcpy(self.cards + <size_t>i * CARD_CELL, PyBytes_AS_STRING(card), len(card))
            s.card_len = len(card)
        else:
            self.spill[i] = card
            s.card_len = 0
        s.last_ms = self._clock(now)
        self._wheel_link(i)
        s.room = r
        s.rprev = NONE
        s.rnext = self.rooms[r].head
        if s.rnext != NONE:
            self.slots[s.rnext].rprev = i
        self.rooms[r].head = i
        self.rooms[r].count += 1
        self.rooms[r].digest ^= _key8(PyBytes_AS_STRING(card))
        self.used += 1
        return i

    cdef int _check(self, int32_t i) except -1:
        if i < 0 or i >= self.high or self.slots[i].secret == 0:
            raise KeyError(f"no registration in slot {i}")
        return 0

    def remove(self, int32_t i):
        """Free a registration (also one handed out by expire())."""
        self._check(i)
        cdef Slot *s = &self.slots[i]
        cdef int32_t r = s.room
        if not s.expiring:
            self._wheel_unlink(i)
        if s.rprev != NONE:
            self.slots[s.rprev].rnext = s.rnext
        else:
            self.rooms[r].head = s.rnext
        if s.rnext != NONE:
            self.slots[s.rnext].rprev = s.rprev
        if s.card_len:
            self.rooms[r].digest ^= _key8(self.cards + <size_t>i * CARD_CELL)
        else:
            self.rooms[r].digest ^= _key8(PyBytes_AS_STRING(<bytes>self.spill[i]))
        self.rooms[r].count -= 1
        if self.rooms[r].count == 0:
            self._drop_room(r)
        if s.card_len == 0:
            self.spill.pop(i, None)
        s.secret = 0
        s.expiring = 0
        s.wnext = self.free_head
        self.free_head = i
        self.used -= 1

    # --- relay ----------------------------------------------------------------------

    def bind_relay(self, int32_t i, bytes nonce, double now):
        """Give registration ``i`` a relay binding named by ``nonce`` (4 bytes, not zero),
        its bucket full."""
        self._check(i)
        cdef uint32_t v = 0
        if len(nonce) == 4:
            memcpy(&v, PyBytes_AS_STRING(nonce), 4)
        if v == 0:
            raise ValueError("a relay nonce is 4 bytes, not all zero")
        cdef Slot *s = &self.slots[i]
        s.relay_nonce = v
        s.relay_tokens = self.relay_burst * 1000
        s.relay_ms = self._clock(now)
        s.refused_ms = 0

    cdef inline void _relay_id(self, int32_t i, uint8_t *out) noexcept:
        out[0] = self.shard
        out[1] = (i >> 16) & 0xff
        out[2] = (i >> 8) & 0xff
        out[3] = i & 0xff
        memcpy(out + 4, &self.slots[i].relay_nonce, 4)

    def relay_id(self, int32_t i):
        """The binding's relay id (slot index and nonce, 8 bytes), or b"" when unbound."""
        self._check(i)
        cdef uint8_t out[RELAY_ID_SIZE]
        if self.slots[i].relay_nonce == 0:
            return b""
        self._relay_id(i, out)
        return PyBytes_FromStringAndSize(<char *>out, RELAY_ID_SIZE)

    cdef inline int _spend(self, uint64_t *tokens, uint32_t *last_ms, uint32_t now_ms, uint64_t rate,
                           uint64_t burst, uint64_t cost, uint32_t *wait) noexcept:
        """A token bucket step: 1 and the bucket spent, or 0, the bucket only refilled
        and ``wait`` the ms until ``cost`` is there."""
        cdef uint32_t elapsed = now_ms - last_ms[0]
        cdef uint64_t t
        if elapsed >= 0x80000000:
            elapsed = 0
        if elapsed > MAX_REFILL_ms:
            elapsed = MAX_REFILL_ms
        t = tokens[0] + <uint64_t>elapsed * rate
        if t > burst * 1000:
            t = burst * 1000
        last_ms[0] = now_ms
        if t >= cost:
            tokens[0] = t - cost
            return 1
        tokens[0] = t
        wait[0] = <uint32_t>((cost - t + rate - 1) // rate) if rate else REFUSAL_INTERVAL_ms
        return 0

    cdef inline int _relay_decision(self, int32_t i, const uint8_t *to, uint64_t cost, uint32_t now_ms,
                                    uint32_t *value) noexcept:
        """What to do with a RELAY from registration ``i`` (its source checked) to the
        relay id ``to``: RELAY_FORWARD with the destination slot in ``value``, or a
        refusal reason with the retry-after ms in ``value``. Spends the buckets."""
        cdef Slot *s = &self.slots[i]
        cdef Slot *d
        cdef uint32_t j = (<uint32_t>to[1] << 16) | (<uint32_t>to[2] << 8) | to[3]
        cdef uint32_t nonce, wait = 0
        cdef uint64_t before
        if s.relay_nonce == 0:
            value[0] = REFUSAL_INTERVAL_ms
            return REFUSE_NOT_BOUND
        memcpy(&nonce, to + 4, 4)
        if to[0] != self.shard or j >= <uint32_t>self.high or <int32_t>j == i:
            value[0] = REFUSAL_INTERVAL_ms
            return REFUSE_NO_SUCH_PEER
        d = &self.slots[j]
        if d.secret == 0 or d.expiring or d.relay_nonce == 0 or d.relay_nonce != nonce or d.room != s.room:
            value[0] = REFUSAL_INTERVAL_ms
            return REFUSE_NO_SUCH_PEER
        before = s.relay_tokens
        if self.relay_rate:
            if not self._spend(&s.relay_tokens, &s.relay_ms, now_ms, self.relay_rate, self.relay_burst, cost, &wait):
                value[0] = wait
                return REFUSE_RATE_LIMITED
        if self.total_rate:
            if not self._spend(&self.total_tokens, &self.total_ms, now_ms, self.total_rate, self.total_burst, cost, &wait):
                if self.relay_rate:
                    s.relay_tokens += cost  # not spent after all
                value[0] = wait
                return REFUSE_BUSY
        value[0] = j
        return RELAY_FORWARD

    cdef inline int _relay_check(self, const uint8_t *token, const uint8_t *to, const uint8_t *addr16, uint16_t port,
                                 uint32_t size, uint32_t now_ms, int32_t *src, uint32_t *value, int *tell) noexcept:
        """table.relay() without Python objects (the fast path's)."""
        cdef int32_t i = self._index_of(token)
        cdef int code
        cdef Slot *s
        tell[0] = 0
        src[0] = i
        if i == NONE:
            return RELAY_UNKNOWN_TOKEN
        s = &self.slots[i]
        if port != s.port or memcmp(addr16, s.addr, 16) != 0:
            return RELAY_WRONG_SOURCE
        code = self._relay_decision(i, to, <uint64_t>size * 1000, now_ms, value)
        if code == RELAY_FORWARD:
            self._touch(i, now_ms)
            return code
        if s.refused_ms == 0 or REFUSAL_INTERVAL_ms <= (now_ms - s.refused_ms) < 0x80000000:
            s.refused_ms = now_ms if now_ms else 1
            tell[0] = 1
        return code

    def relay(self, bytes token, bytes to, tuple addr, int size, double now):
        """Decide a RELAY of ``size`` bytes (the whole datagram) from ``addr``: returns
        (code, sender slot, destination slot or retry-after ms, whether to send a
        RELAY_REFUSED now). Code RELAY_FORWARD spends the buckets and refreshes the
        sender's registration (relayed datagrams keep a binding alive, as heartbeats do)."""
        cdef int32_t src = NONE
        cdef uint32_t value = 0
        cdef int tell = 0, code
        if len(token) != TOKEN_SIZE or len(to) != RELAY_ID_SIZE:
            return (RELAY_UNKNOWN_TOKEN, -1, 0, False)
        key, port = endpoint_key(addr)
        code = self._relay_check(<const uint8_t *>PyBytes_AS_STRING(token), <const uint8_t *>PyBytes_AS_STRING(to),
                                 <const uint8_t *>PyBytes_AS_STRING(key), port, size, self._clock(now),
                                 &src, &value, &tell)
        if code == RELAY_UNKNOWN_TOKEN:
            return (code, -1, 0, False)
        if code == RELAY_WRONG_SOURCE:
            return (code, src, 0, False)
        return (code, src, value, bool(tell))

    def token(self, int32_t i):
        self._check(i)
        cdef uint8_t t[TOKEN_SIZE]
        t[0] = self.shard
        t[1] = (i >> 16) & 0xff
        t[2] = (i >> 8) & 0xff
        t[3] = i & 0xff
        memcpy(t + TOKEN_INDEX_SIZE, &self.slots[i].secret, TOKEN_SECRET_SIZE)
        return PyBytes_FromStringAndSize(<char *>t, TOKEN_SIZE)

    def lookup(self, bytes token):
        """Slot of a live registration token, or -1."""
        if len(token) != TOKEN_SIZE:
            return -1
        return self._index_of(<const uint8_t *>PyBytes_AS_STRING(token))

    def touch(self, bytes token, tuple addr, double now):
        """A heartbeat: 0 unknown token, 1 refreshed, 2 refreshed but from another source
        than the registration's endpoint (which stays: see set_endpoint)."""
        cdef int32_t i = self.lookup(token)
        if i == NONE:
            return 0
        self._touch(i, self._clock(now))
        key, port = endpoint_key(addr)
        cdef Slot *s = &self.slots[i]
        if s.port == port and memcmp(s.addr, PyBytes_AS_STRING(key), 16) == 0:
            return 1
        return 2

    def set_endpoint(self, int32_t i, tuple addr):
        """Move a registration's endpoint (a NAT rebinding, once its new address is proved)."""
        self._check(i)
        key, port = endpoint_key(addr)
        memcpy(self.slots[i].addr, PyBytes_AS_STRING(key), 16)
        self.slots[i].port = port

    def endpoint(self, int32_t i):
        self._check(i)
        return key_endpoint(PyBytes_FromStringAndSize(<char *>self.slots[i].addr, 16), self.slots[i].port)

    def card(self, int32_t i):
        self._check(i)
        if self.slots[i].card_len == 0:
            return self.spill[i]
        return PyBytes_FromStringAndSize(<char *>(self.cards + <size_t>i * CARD_CELL), self.slots[i].card_len)

    def wire_endpoint(self, int32_t i):
        """The registration's public endpoint in wire form (family, address, port)."""
        self._check(i)
        cdef uint8_t out[19]
        cdef Slot *s = &self.slots[i]
        cdef int k
        if memcmp(s.addr, V4_PREFIX, 12) == 0:
            out[0] = 4
            memcpy(out + 1, s.addr + 12, 4)
            k = 5
        else:
            out[0] = 6
            memcpy(out + 1, s.addr, 16)
            k = 17
        out[k] = s.port >> 8
        out[k + 1] = s.port & 0xff
        return PyBytes_FromStringAndSize(<char *>out, k + 2)

    def entry(self, int32_t i):
        """The wire PeerEntry of a registration: its card with the current public endpoint
        put first among the endpoints (see wire.entry_from_card)."""
        self._check(i)
        cdef bytes spilled
        cdef const uint8_t *card
        cdef int n
        if self.slots[i].card_len == 0:
            spilled = self.spill[i]
            card = <const uint8_t *>PyBytes_AS_STRING(spilled)
            n = len(spilled)
        else:
            card = self.cards + <size_t>i * CARD_CELL
            n = self.slots[i].card_len
        cdef uint8_t out[320]
        cdef int name_end = PUBLIC_KEY_SIZE + 1 + card[PUBLIC_KEY_SIZE]
        cdef int k = name_end
        cdef Slot *s = &self.slots[i]
        memcpy(out, card, name_end)
        out[k] = card[name_end] + 1
        k += 1
        if memcmp(s.addr, V4_PREFIX, 12) == 0:
            out[k] = 4
            memcpy(out + k + 1, s.addr + 12, 4)
            k += 5
        else:
            out[k] = 6
            memcpy(out + k + 1, s.addr, 16)
            k += 17
        out[k] = s.port >> 8
        out[k + 1] = s.port & 0xff
        k += 2
        memcpy(out + k, card + name_end + 1, n - name_end - 1)
        k += n - name_end - 1
        if s.relay_nonce != 0:
            out[name_end] += 1
            out[k] = FAMILY_RELAY
            self._relay_id(i, out + k + 1)
            k += 1 + RELAY_ID_SIZE
        return PyBytes_FromStringAndSize(<char *>out, k)

    def room_of(self, int32_t i):
        self._check(i)
        return PyBytes_FromStringAndSize(<char *>self.rooms[self.slots[i].room].id, ROOM_ID_SIZE)

    def room_tag(self, bytes room_id):
        if len(room_id) != ROOM_ID_SIZE:
            return None
        cdef int32_t r = self._find_room(<const uint8_t *>PyBytes_AS_STRING(room_id))
        if r == NONE:
            return None
        return PyBytes_FromStringAndSize(<char *>self.rooms[r].tag, ROOM_TAG_SIZE)

    def room_digest(self, bytes room_id):
        """The room's membership digest (8 bytes), as HEARTBEAT_ACK carries it."""
        cdef uint64_t d = 0
        cdef int32_t r = NONE
        if len(room_id) == ROOM_ID_SIZE:
            r = self._find_room(<const uint8_t *>PyBytes_AS_STRING(room_id))
        if r != NONE:
            d = self.rooms[r].digest
        return PyBytes_FromStringAndSize(<char *>&d, ROOM_DIGEST_SIZE)

    def xor_room_digest(self, bytes room_id, bytes public_key):
        """Fold a member held elsewhere (another bootnode of the cluster) into the room's
        digest, or out again: XOR is its own inverse. False when the room is not here."""
        if len(room_id) != ROOM_ID_SIZE or len(public_key) != PUBLIC_KEY_SIZE:
            return False
        cdef int32_t r = self._find_room(<const uint8_t *>PyBytes_AS_STRING(room_id))
        if r == NONE:
            return False
        self.rooms[r].digest ^= _key8(PyBytes_AS_STRING(public_key))
        return True

    def room_size(self, bytes room_id):
        if len(room_id) != ROOM_ID_SIZE:
            return 0
        cdef int32_t r = self._find_room(<const uint8_t *>PyBytes_AS_STRING(room_id))
        return 0 if r == NONE else self.rooms[r].count

    def room_members(self, bytes room_id):
        """Slots of the room's members, most recent first."""
        cdef list out = []
        if len(room_id) != ROOM_ID_SIZE:
            return out
        cdef int32_t r = self._find_room(<const uint8_t *>PyBytes_AS_STRING(room_id))
        cdef int32_t i = NONE if r == NONE else self.rooms[r].head
        while i != NONE:
            out.append(i)
            i = self.slots[i].rnext
        return out

    def count_source(self, bytes room_id, bytes address16):
        """How many members of the room have an endpoint with this 16-byte address (IPv4
        as IPv4-mapped), whatever their port: the registrations one source holds there."""
        if len(room_id) != ROOM_ID_SIZE or len(address16) != 16:
            return 0
        cdef int32_t r = self._find_room(<const uint8_t *>PyBytes_AS_STRING(room_id))
        cdef int32_t i = NONE if r == NONE else self.rooms[r].head
        cdef const char *a = PyBytes_AS_STRING(address16)
        cdef int n = 0
        while i != NONE:
            if memcmp(self.slots[i].addr, a, 16) == 0:
                n += 1
            i = self.slots[i].rnext
        return n

    def find_in_room(self, bytes room_id, bytes public_key):
        """Slot of the member with this public key (first 32 bytes of its card), or -1."""
        if len(room_id) != ROOM_ID_SIZE or len(public_key) != PUBLIC_KEY_SIZE:
            return -1
        cdef int32_t r = self._find_room(<const uint8_t *>PyBytes_AS_STRING(room_id))
        cdef int32_t i = NONE if r == NONE else self.rooms[r].head
        cdef const char *key = PyBytes_AS_STRING(public_key)
        while i != NONE:
            if self.slots[i].card_len == 0:
                if self.spill[i][:PUBLIC_KEY_SIZE] == public_key:
                    return i
            elif memcmp(self.cards + <size_t>i * CARD_CELL, key, PUBLIC_KEY_SIZE) == 0:
                return i
            i = self.slots[i].rnext
        return -1


# --- batched socket I/O ------------------------------------------------------------------


cdef int fill_sockaddr(int family, const uint8_t *addr16, uint16_t port, sockaddr_storage *out, socklen_t *outlen) noexcept:
    """Build the destination address for a socket of ``family``; 0 if unreachable from it."""
    cdef sockaddr_in *a4
    cdef sockaddr_in6 *a6
    if family == AF_INET6:
        a6 = <sockaddr_in6 *>out
        memset(a6, 0, sizeof(sockaddr_in6))
        a6.sin6_family = AF_INET6
        a6.sin6_port = htons(port)
        memcpy(a6.sin6_addr.s6_addr, addr16, 16)
        outlen[0] = sizeof(sockaddr_in6)
        return 1
    if memcmp(addr16, V4_PREFIX, 12) != 0:
        return 0
    a4 = <sockaddr_in *>out
    memset(a4, 0, sizeof(sockaddr_in))
    a4.sin_family = AF_INET
    a4.sin_port = htons(port)
    memcpy(&a4.sin_addr.s_addr, addr16 + 12, 4)
    outlen[0] = sizeof(sockaddr_in)
    return 1


cdef inline int sockaddr_key(sockaddr_storage *sa, uint8_t *addr16, uint16_t *port) noexcept:
    if sa.ss_family == AF_INET:
        memcpy(addr16, V4_PREFIX, 12)
        memcpy(addr16 + 12, &(<sockaddr_in *>sa).sin_addr.s_addr, 4)
        port[0] = ntohs((<sockaddr_in *>sa).sin_port)
        return 1
    if sa.ss_family == AF_INET6:
        memcpy(addr16, (<sockaddr_in6 *>sa).sin6_addr.s6_addr, 16)
        port[0] = ntohs((<sockaddr_in6 *>sa).sin6_port)
        return 1
    return 0


cdef object sockaddr_tuple(sockaddr_storage *sa):
    if sa.ss_family == AF_INET:
        return (_socket.inet_ntop(AF_INET, PyBytes_FromStringAndSize(<char *>&(<sockaddr_in *>sa).sin_addr.s_addr, 4)),
                ntohs((<sockaddr_in *>sa).sin_port))
    if sa.ss_family == AF_INET6:
        return (_socket.inet_ntop(AF_INET6, PyBytes_FromStringAndSize(<char *>(<sockaddr_in6 *>sa).sin6_addr.s6_addr, 16)),
                ntohs((<sockaddr_in6 *>sa).sin6_port), (<sockaddr_in6 *>sa).sin6_flowinfo, (<sockaddr_in6 *>sa).sin6_scope_id)
    return None


cdef class _Batch:
    """Preallocated mmsghdr vectors for one direction."""
    cdef mmsghdr *msgs
    cdef iovec *iov
    cdef sockaddr_storage *addrs
    cdef char *bufs
    cdef int n
    cdef int bufsize

    def __cinit__(self, int n, int bufsize):
        self.n = n
        self.bufsize = bufsize
        self.msgs = <mmsghdr *>calloc(n, sizeof(mmsghdr))
        self.iov = <iovec *>calloc(n, sizeof(iovec))
        self.addrs = <sockaddr_storage *>calloc(n, sizeof(sockaddr_storage))
        self.bufs = <char *>malloc(<size_t>n * bufsize) if bufsize > 0 else NULL
        if self.msgs == NULL or self.iov == NULL or self.addrs == NULL or (bufsize > 0 and self.bufs == NULL):
            raise MemoryError()
        cdef int i
        for i in range(n):
            self.iov[i].iov_base = self.bufs + <size_t>i * bufsize if bufsize > 0 else NULL
            self.iov[i].iov_len = bufsize
            self.msgs[i].msg_hdr.msg_iov = &self.iov[i]
            self.msgs[i].msg_hdr.msg_iovlen = 1
            self.msgs[i].msg_hdr.msg_name = &self.addrs[i]
            self.msgs[i].msg_hdr.msg_namelen = sizeof(sockaddr_storage)

    def __dealloc__(self):
        free(self.msgs)
        free(self.iov)
        free(self.addrs)
        free(self.bufs)


cdef int flush(int fd, _Batch b, int count, uint64_t *sent, uint64_t *errors) noexcept:
    """sendmmsg ``count`` prepared messages; a datagram the kernel refuses is counted and skipped."""
    cdef int off = 0, r
    while off < count:
        r = sendmmsg(fd, b.msgs + off, count - off, MSG_DONTWAIT)
        if r < 0:
            if errno == EINTR:
                continue
            errors[0] += 1
            off += 1     # skip the one that failed (unreachable family, full buffer, ...)
        else:
            sent[0] += r
            off += r
    return 0


cdef class FastPath:
    """A bootnode socket drained in recvmmsg batches: heartbeats are answered and
    recorded in C; every other datagram is returned to Python as (bytes, address)."""

    cdef int fd
    cdef int family
    cdef object sock
    cdef RegistrationTable table
    cdef _Batch rx
    cdef _Batch tx
    cdef int tx_count
    cdef int batch_size
    cdef readonly bint drained
    cdef readonly int last_received  # datagrams the last process_batch took (0: the socket was empty)
    cdef uint64_t c_received, c_heartbeats, c_acks, c_unknown, c_new_source, c_passed
    cdef uint64_t c_sent, c_send_errors, c_recv_errors, c_batches
    cdef uint64_t c_relayed, c_relayed_bytes, c_relay_unknown, c_relay_wrong_source, c_refusals_sent
    cdef uint64_t c_refused[5]   # by reason (1..4)

    def __cinit__(self, sock, RegistrationTable table, int batch_size=BATCH_SIZE):
        self.sock = sock
        self.fd = sock.fileno()
        self.family = sock.family
        self.table = table
        self.batch_size = batch_size
        self.rx = _Batch(batch_size, BUF_SIZE)
        self.tx = _Batch(batch_size, BUF_SIZE)
        self.drained = True

    @property
    def counters(self):
        return {
            "received": self.c_received,
            "heartbeats": self.c_heartbeats,
            "heartbeat_acks": self.c_acks,
            "unknown_token": self.c_unknown,
            "new_source": self.c_new_source,
            "passed_to_python": self.c_passed,
            "sent": self.c_sent,
            "send_errors": self.c_send_errors,
            "recv_errors": self.c_recv_errors,
            "batches": self.c_batches,
            "relayed": self.c_relayed,
            "relayed_bytes": self.c_relayed_bytes,
            "relay_unknown_token": self.c_relay_unknown,
            "relay_wrong_source": self.c_relay_wrong_source,
            "relay_not_bound": self.c_refused[REFUSE_NOT_BOUND],
            "relay_no_such_peer": self.c_refused[REFUSE_NO_SUCH_PEER],
            "relay_rate_limited": self.c_refused[REFUSE_RATE_LIMITED],
            "relay_busy": self.c_refused[REFUSE_BUSY],
            "relay_refusals_sent": self.c_refusals_sent,
        }

    cdef inline void _tx_flush(self) noexcept:
        if self.tx_count:
            flush(self.fd, self.tx, self.tx_count, &self.c_sent, &self.c_send_errors)
            self.tx_count = 0

    cdef inline int _tx_slot(self) noexcept:
        """Index of the next free entry of the send queue (flushing it when full)."""
        if self.tx_count == self.batch_size:
            self._tx_flush()
        return self.tx_count

    cdef inline void _queue_reply(self, int i, uint8_t msg_type) noexcept:
        """Reply to rx datagram i with a heartbeat-sized message of msg_type (same token)."""
        if self.tx_count == self.batch_size:
            self._tx_flush()
        cdef int k = self.tx_count
        cdef char *out = self.tx.bufs + <size_t>k * BUF_SIZE
        memcpy(out, self.rx.bufs + <size_t>i * BUF_SIZE, HEARTBEAT_SIZE)
        out[2] = msg_type
        out[3] = 0
        self.tx.iov[k].iov_len = HEARTBEAT_SIZE
        memcpy(&self.tx.addrs[k], &self.rx.addrs[i], sizeof(sockaddr_storage))
        self.tx.msgs[k].msg_hdr.msg_namelen = self.rx.msgs[i].msg_hdr.msg_namelen
        self.tx_count = k + 1

    cdef inline void _queue_ack(self, int i, uint64_t digest) noexcept:
        """HEARTBEAT_ACK to rx datagram i: its token, then the room's membership digest."""
        self._queue_reply(i, T_HEARTBEAT_ACK)
        cdef int k = self.tx_count - 1
        cdef char *out = self.tx.bufs + <size_t>k * BUF_SIZE
        memcpy(out + HEARTBEAT_SIZE, &digest, ROOM_DIGEST_SIZE)
        self.tx.iov[k].iov_len = HEARTBEAT_ACK_SIZE

    cdef inline void _relay(self, int i, const uint8_t *p, unsigned int ln, uint32_t now_ms) noexcept:
        """A RELAY: forwarded as RELAYED (the sender's relay id replaces token and
        destination: 12 bytes smaller) to the destination's endpoint, or refused."""
        cdef RegistrationTable t = self.table
        cdef uint8_t key[16]
        cdef uint16_t port = 0
        cdef int32_t src
        cdef uint32_t value = 0
        cdef int tell = 0, code, k
        cdef char *out
        cdef Slot *d
        cdef socklen_t alen
        if not sockaddr_key(&self.rx.addrs[i], key, &port):
            memset(key, 0, 16)
        code = t._relay_check(p + HEADER_SIZE, p + HEADER_SIZE + TOKEN_SIZE, key, port, ln, now_ms, &src, &value, &tell)
        if code == RELAY_FORWARD:
            d = &t.slots[value]
            k = self._tx_slot()
            if not fill_sockaddr(self.family, d.addr, d.port, &self.tx.addrs[k], &alen):
                self.c_send_errors += 1
                return
            out = self.tx.bufs + <size_t>k * BUF_SIZE
            out[0] = MAGIC
            out[1] = VERSION
            out[2] = T_RELAYED
            out[3] = 0
            t._relay_id(src, <uint8_t *>out + HEADER_SIZE)
            memcpy(out + HEADER_SIZE + RELAY_ID_SIZE, p + RELAY_OVERHEAD, ln - RELAY_OVERHEAD)
            self.tx.iov[k].iov_len = ln - TOKEN_SIZE
            self.tx.msgs[k].msg_hdr.msg_namelen = alen
            self.tx_count = k + 1
            self.c_relayed += 1
            self.c_relayed_bytes += ln - TOKEN_SIZE
        elif code == RELAY_UNKNOWN_TOKEN:
            self.c_relay_unknown += 1
            self._queue_reply(i, T_UNKNOWN_TOKEN)
        elif code == RELAY_WRONG_SOURCE:
            self.c_relay_wrong_source += 1
        else:
            self.c_refused[code] += 1
            if tell:
                self.c_refusals_sent += 1
                self._queue_reply(i, T_RELAY_REFUSED)
                out = self.tx.bufs + <size_t>(self.tx_count - 1) * BUF_SIZE
                out[HEADER_SIZE] = <char>code
                out[HEADER_SIZE + 1] = (value >> 24) & 0xff
                out[HEADER_SIZE + 2] = (value >> 16) & 0xff
                out[HEADER_SIZE + 3] = (value >> 8) & 0xff
                out[HEADER_SIZE + 4] = value & 0xff
                memcpy(out + HEADER_SIZE + 5, p + HEADER_SIZE + TOKEN_SIZE, RELAY_ID_SIZE)
                self.tx.iov[self.tx_count - 1].iov_len = HEADER_SIZE + 5 + RELAY_ID_SIZE

    def process_batch(self, double now):
        """One recvmmsg. Heartbeats from their registration's endpoint are handled here;
        returns the other datagrams, heartbeats from another source among them (a NAT
        rebinding or a forgery: the machine answers with a challenge). ``drained`` tells
        whether the socket was emptied."""
        cdef int n, i
        cdef unsigned int ln
        cdef const uint8_t *p
        cdef int32_t idx
        cdef uint8_t key[16]
        cdef uint16_t port
        cdef Slot *s
        cdef RegistrationTable t = self.table
        cdef uint32_t now_ms = t._clock(now)
        cdef list others = []
        for i in range(self.batch_size):
            self.rx.msgs[i].msg_hdr.msg_namelen = sizeof(sockaddr_storage)
        n = recvmmsg(self.fd, self.rx.msgs, self.batch_size, MSG_DONTWAIT, NULL)
        if n < 0:
            if errno != EAGAIN and errno != EINTR:
                self.c_recv_errors += 1
            self.drained = True
            self.last_received = 0
            return others
        self.drained = n < self.batch_size
        self.last_received = n
        self.c_received += n
        self.c_batches += 1
        for i in range(n):
            ln = self.rx.msgs[i].msg_len
            p = <const uint8_t *>(self.rx.bufs + <size_t>i * BUF_SIZE)
            if (ln == HEARTBEAT_SIZE and p[0] == MAGIC and p[1] == VERSION and p[2] == T_HEARTBEAT
                    and not (p[3] & FLAG_REBIND)):
                idx = t._index_of(p + HEADER_SIZE)
                if idx == NONE:
                    self.c_unknown += 1
                    self._queue_reply(i, T_UNKNOWN_TOKEN)
                    continue
                s = &t.slots[idx]
                if not sockaddr_key(&self.rx.addrs[i], key, &port) or port != s.port or memcmp(key, s.addr, 16) != 0:
                    # Not from the registration's endpoint: nothing moves before the new
                    # address answers a challenge; that rare case is the machine's.
                    self.c_new_source += 1
                    self.c_passed += 1
                    others.append((PyBytes_FromStringAndSize(<char *>p, ln), sockaddr_tuple(&self.rx.addrs[i])))
                    continue
                self.c_heartbeats += 1
                t._touch(idx, now_ms)
                if p[3] & FLAG_ACK_REQUESTED:
                    self.c_acks += 1
                    self._queue_ack(i, t.rooms[s.room].digest)
            elif ln > RELAY_OVERHEAD and ln <= MAX_DATAGRAM and p[0] == MAGIC and p[1] == VERSION and p[2] == T_RELAY:
                self._relay(i, p, ln, now_ms)
            else:
                self.c_passed += 1
                others.append((PyBytes_FromStringAndSize(<char *>p, min(ln, <unsigned int>BUF_SIZE)), sockaddr_tuple(&self.rx.addrs[i])))
        self._tx_flush()
        return others

    def send(self, list datagrams):
        """Queue (bytes, endpoint) datagrams; the queue goes out with sendmmsg when it
        fills and on flush(). Returns how many were queued (the others are counted as
        send errors: unreachable from this socket's family, or too long)."""
        cdef int k, queued = 0
        cdef bytes data
        cdef socklen_t alen
        for data, addr in datagrams:
            key, port = endpoint_key(addr)
            k = self._tx_slot()
            if len(data) > BUF_SIZE or not fill_sockaddr(self.family, <const uint8_t *>PyBytes_AS_STRING(key), port, &self.tx.addrs[k], &alen):
                self.c_send_errors += 1
                continue
            memcpy(self.tx.bufs + <size_t>k * BUF_SIZE, PyBytes_AS_STRING(data), len(data))
            self.tx.iov[k].iov_len = len(data)
            self.tx.msgs[k].msg_hdr.msg_namelen = alen
            self.tx_count = k + 1
            queued += 1
        return queued

    def send_to_room(self, bytes room_id, bytes data, int exclude_slot=-1):
        """Queue one datagram for every member of a room (but exclude_slot), straight
        from the table: no Python object per recipient. Returns how many were queued."""
        cdef RegistrationTable t = self.table
        cdef int32_t r, i
        cdef int k, queued = 0
        cdef socklen_t alen
        cdef const char *src = PyBytes_AS_STRING(data)
        cdef size_t n = len(data)
        if len(room_id) != ROOM_ID_SIZE or n > BUF_SIZE:
            return 0
        r = t._find_room(<const uint8_t *>PyBytes_AS_STRING(room_id))
        if r == NONE:
            return 0
        i = t.rooms[r].head
        while i != NONE:
            if i != exclude_slot and not t.slots[i].expiring:
                k = self._tx_slot()
                if fill_sockaddr(self.family, t.slots[i].addr, t.slots[i].port, &self.tx.addrs[k], &alen):
                    memcpy(self.tx.bufs + <size_t>k * BUF_SIZE, src, n)
                    self.tx.iov[k].iov_len = n
                    self.tx.msgs[k].msg_hdr.msg_namelen = alen
                    self.tx_count = k + 1
                    queued += 1
                else:
                    self.c_send_errors += 1
            i = t.slots[i].rnext
        return queued

    def flush(self):
        """Send everything queued (sendmmsg); returns how many datagrams the kernel took."""
        cdef uint64_t before = self.c_sent
        self._tx_flush()
        return self.c_sent - before


def send_records(sock, tuple addr, bytes records, int record_size, int start, int count):
    """sendmmsg ``count`` fixed-size records from ``records`` (wrapping around) to one
    address; for load generators. Returns how many the kernel took."""
    cdef int n_records = len(records) // record_size
    cdef int batch = BATCH_SIZE
    cdef _Batch b = _Batch(batch, 0)
    cdef int fd = sock.fileno()
    cdef socklen_t alen
    cdef uint64_t sent = 0, errors = 0
    cdef int done = 0, k, j
    cdef const char *base = PyBytes_AS_STRING(records)
    if n_records == 0:
        return 0
    key, port = endpoint_key(addr)
    if not fill_sockaddr(sock.family, <const uint8_t *>PyBytes_AS_STRING(key), port, &b.addrs[0], &alen):
        raise OSError("address family mismatch")
    for k in range(batch):
        memcpy(&b.addrs[k], &b.addrs[0], sizeof(sockaddr_storage))
        b.msgs[k].msg_hdr.msg_namelen = alen
        b.iov[k].iov_len = record_size
    j = start % n_records
    while done < count:
        k = 0
        while k < batch and done + k < count:
            b.iov[k].iov_base = <void *>(base + <size_t>j * record_size)
            j += 1
            if j == n_records:
                j = 0
            k += 1
        flush(fd, b, k, &sent, &errors)
        done += k
    return sent


def recv_batch(sock, int max_count=BATCH_SIZE):
    """recvmmsg up to max_count datagrams without waiting: list of (bytes, address)."""
    cdef _Batch b = _Batch(max_count, BUF_SIZE)
    cdef int n, i
    cdef list out = []
    n = recvmmsg(sock.fileno(), b.msgs, max_count, MSG_DONTWAIT, NULL)
    for i in range(n):
        out.append((PyBytes_FromStringAndSize(b.bufs + <size_t>i * BUF_SIZE, min(b.msgs[i].msg_len, <unsigned int>BUF_SIZE)),
                    sockaddr_tuple(&b.addrs[i])))
    return out
