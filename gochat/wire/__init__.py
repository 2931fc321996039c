"""The wire protocol v1 (docs/PROTOCOL.md): constants, endpoint encodings, and the codecs
of the bootnode control plane and the peer data plane. No I/O and no state: both sides
of the protocol import it, and it imports neither."""
