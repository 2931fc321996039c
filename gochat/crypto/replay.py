"""Anti-replay sliding window over 64-bit message counters (RFC 6479).

A ring of 64-bit blocks: moving the window forward clears whole blocks instead of
shifting a bitmap, so every check is O(1). Check a counter only after the packet has
authenticated, or an attacker could advance the window with forged counters. A fresh
window accepts any counter from 0.
"""

from __future__ import annotations

BLOCK_BITS = 64
_BIT_MASK = BLOCK_BITS - 1


class ReplayWindow:
    __slots__ = ("_last", "_mask", "_ring", "window_size")

    def __init__(self, blocks: int = 32) -> None:
        if blocks < 2 or blocks & (blocks - 1):
            raise ValueError("blocks must be a power of two >= 2")
        self._ring = [0] * blocks
        self._mask = blocks - 1
        self._last = 0
        # One block is always being refilled, so the guaranteed window is one block less.
        self.window_size = (blocks - 1) * BLOCK_BITS

    @property
    def highest(self) -> int:
        """The highest counter accepted so far (0 when none)."""
        return self._last

    def is_stale(self, counter: int) -> bool:
        """Older than the window: can never be accepted any more."""
        return self._last - counter > self.window_size

    def accept(self, counter: int, limit: int = 2**64) -> bool:
        """True (and remember it) if ``counter`` is new and inside the window."""
        if counter < 0 or counter >= limit:
            return False
        block = counter >> 6
        if counter > self._last:
            current = self._last >> 6
            diff = min(block - current, len(self._ring))
            for i in range(current + 1, current + diff + 1):
                self._ring[i & self._mask] = 0
            self._last = counter
        elif self._last - counter > self.window_size:
            return False
        index = block & self._mask
        bit = 1 << (counter & _BIT_MASK)
        old = self._ring[index]
        if old & bit:
            return False
        self._ring[index] = old | bit
        return True
