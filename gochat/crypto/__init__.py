"""Cryptography of peer sessions: the Noise IKpsk2 handshake, transport keys with their
anti-replay window, and the long-term identity with the known peers. Client side only
in use, but independent of it: it imports nothing from the rest of gochat but itself."""
