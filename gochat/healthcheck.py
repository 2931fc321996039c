"""``python -m gochat.healthcheck``: the container's HEALTHCHECK, with nothing but Python.

For a bootnode (``MODE=bootnode``) it sends one HEARTBEAT with an all-zero token to the
bootnode's own address (LISTEN; a wildcard address means loopback) and waits up to 2 s
for the UNKNOWN_TOKEN every live bootnode answers: the receive loop itself is checked,
not only the process, and nothing is registered. Any other mode is healthy while its
process runs. Exit code 0: healthy; 1: not (the reason on stderr).
"""

from __future__ import annotations

import os
import socket
import sys

from gochat.config import parse_host_port
from gochat.constants import DEFAULT_LISTEN
from gochat.wire import control as wire
from gochat.wire.constants import TOKEN_SIZE_bytes

TIMEOUT_s = 2.0


def probe(host: str, port: int, timeout: float = TIMEOUT_s) -> str | None:
    """None if the bootnode at (host, port) answers; otherwise why not."""
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    token = bytes(TOKEN_SIZE_bytes)
    request = wire.encode(wire.TokenMessage(wire.MsgType.HEARTBEAT, token))
    try:
        family, _, _, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.settimeout(timeout)
            sock.connect(sockaddr)
            sock.send(request)
            reply = wire.decode(sock.recv(2048))
    except TimeoutError:
        return f"no answer from the bootnode at {host}:{port} within {timeout:g} s"
    except (OSError, wire.DecodeError) as exc:
        return f"bootnode at {host}:{port}: {exc}"
    if isinstance(reply, wire.TokenMessage) and reply.type is wire.MsgType.UNKNOWN_TOKEN and reply.token == token:
        return None
    return f"unexpected answer from the bootnode at {host}:{port}: {type(reply).__name__}"


def main() -> int:
    if os.environ.get("MODE", "client").strip().lower() != "bootnode":
        return 0
    host, port = parse_host_port(os.environ.get("LISTEN", "").strip() or DEFAULT_LISTEN)
    problem = probe(host, port)
    if problem is not None:
        print(problem, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
