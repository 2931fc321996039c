"""Every core of a machine: N bootnode worker processes on one UDP port (--workers).

The parent makes N sockets bound to the same address with SO_REUSEPORT, in order, and
attaches a classic BPF program to the group (SO_ATTACH_REUSEPORT_CBPF) that chooses
the socket, so the worker, by what a datagram carries:

- a REGISTER goes to worker ``room id's first byte mod N``: a room lives on one worker
  whole (its members, announcements, digest and relay bindings), and a client's two
  REGISTERs (without and with the cookie that worker made) meet the same worker;
- a datagram that starts with a token (HEARTBEAT, DISCONNECT, RELAY) goes to the
  worker named by the token's first byte, the *shard* that worker writes into every
  token and relay id it hands out; so heartbeats, rebinds and relayed datagrams reach
  the worker holding their registration, and a relayed datagram's destination (same
  room) is there too;
- anything else (STUN, garbage) is left to the kernel's hash: any worker answers it.

Steering in the kernel keeps the workers independent: no shared memory, no locks and
no bus between them, and the hot path stays as fast as one process's. The parent keeps
every socket open for the life of the group, so that a worker that dies is restarted on
the same socket (same place in the group, same steering); its clients find their tokens
unknown and register again, announced to their rooms coalesced per receive batch.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import replace
from multiprocessing.connection import wait
from typing import TYPE_CHECKING

from gochat.wire.constants import (
    MAGIC,
    T_DISCONNECT,
    T_HEARTBEAT,
    T_REGISTER,
    T_RELAY,
    ROOM_ID_SIZE_bytes,
)

if TYPE_CHECKING:
    from gochat.bootnode.driver import BootnodeConfig

log = logging.getLogger("gochat.bootnode")

SO_ATTACH_REUSEPORT_CBPF = 51  # <asm-generic/socket.h>
RESTART_BACKOFF_s = 1.0  # a worker that died is started again after this long (at most once a second)
ROOM_ID_OFFSET = 24  # REGISTER: header (4), cookie (16), request id (4), then the room id
TOKEN_OFFSET = 4  # HEARTBEAT, DISCONNECT, RELAY: the token right after the header

# classic BPF opcodes
_LD_B_ABS = 0x30  # BPF_LD | BPF_B | BPF_ABS: A = byte at k
_JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_MOD_K = 0x94  # BPF_ALU | BPF_MOD | BPF_K
_RET_A = 0x16  # BPF_RET | BPF_A
_RET_K = 0x06  # BPF_RET | BPF_K


def steering_program(workers: int) -> list[tuple[int, int, int, int]]:
    """The classic BPF program (code, jt, jf, k) that picks a worker by the UDP payload
    (the kernel hands the program the payload at offset 0). A result past the last
    socket makes the kernel fall back to its hash."""
    hash_fallback = 0xFFFFFFFF
    return [
        (_LD_B_ABS, 0, 0, 0),  # 0: A = magic
        (_JEQ_K, 0, 10, MAGIC),  # 1: not gochat -> 12
        (_LD_B_ABS, 0, 0, 2),  # 2: A = type
        (_JEQ_K, 5, 0, T_REGISTER),  # 3: REGISTER -> 9
        (_JEQ_K, 2, 0, T_HEARTBEAT),  # 4: a token -> 7
        (_JEQ_K, 1, 0, T_DISCONNECT),  # 5: a token -> 7
        (_JEQ_K, 0, 5, T_RELAY),  # 6: not a token -> 12
        (_LD_B_ABS, 0, 0, TOKEN_OFFSET),  # 7: A = the token's shard byte
        (_RET_A, 0, 0, 0),  # 8: that worker (past the last: the kernel's hash)
        (_LD_B_ABS, 0, 0, ROOM_ID_OFFSET),  # 9: REGISTER: A = the room id's first byte
        (_MOD_K, 0, 0, workers),  # 10: A %= workers
        (_RET_A, 0, 0, 0),  # 11: that worker
        (_RET_K, 0, 0, hash_fallback),  # 12: the kernel's hash
    ]


def shard_of_room(room_id: bytes, workers: int) -> int:
    """The worker a room lives on (what the program computes for its REGISTERs)."""
    assert len(room_id) == ROOM_ID_SIZE_bytes
    return room_id[0] % workers


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_SockFilter))]


def attach_steering(sock: socket.socket, workers: int) -> None:
    """Attach the steering program to the reuseport group of ``sock``."""
    program = steering_program(workers)
    filters = (_SockFilter * len(program))(*[_SockFilter(*insn) for insn in program])
    fprog = _SockFprog(len(program), filters)
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, bytes(fprog))


def reuseport_sockets(
    listen: tuple[str, int],
    count: int,
    recv_buffer: int,
    make: Callable[[tuple[str, int], int], socket.socket],
    steer: bool = True,
) -> list[socket.socket]:
    """``count`` sockets on one address, in group order (the first picks the port when
    ``listen`` has port 0); the steering program goes on the group once all are in."""
    out: list[socket.socket] = []
    address = listen
    for _ in range(count):
        sock = make(address, recv_buffer)
        out.append(sock)
        address = (listen[0], sock.getsockname()[1])
    if steer and count > 1:
        attach_steering(out[0], count)
    return out


def _set_process_name(name: str) -> None:
    """What ps and /proc/PID/comm show for a worker (prctl PR_SET_NAME), so that an
    operator can tell them apart."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(15, name.encode()[:15], 0, 0, 0)
    except (OSError, AttributeError):
        pass


class _WorkerPrefix(logging.Filter):
    """Every line a worker logs says which worker it is."""

    def __init__(self, shard: int) -> None:
        super().__init__()
        self.prefix = f"worker {shard}: "

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(self.prefix):
            record.msg = self.prefix + str(record.msg)
        return True


def _worker_main(
    config: BootnodeConfig,
    shard: int,
    sockets: tuple[socket.socket, socket.socket | None],
    metrics_listen: tuple[str, int] | None,
    summary_interval_s: float,
) -> None:
    """A worker process: the ordinary bootnode on its socket of the group."""
    import asyncio

    from gochat.bootnode.driver import serve

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops the group
    _set_process_name(f"gochat-w{shard}")
    prefix = _WorkerPrefix(shard)
    for logger in (logging.getLogger(), logging.getLogger("gochat")):
        for handler in logger.handlers:
            handler.addFilter(prefix)
    main, discovery = sockets
    worker_config = replace(config, sock=main, discovery_sock=discovery, shard=shard)
    asyncio.run(serve(worker_config, metrics_listen, summary_interval_s=summary_interval_s))


def run_workers(
    config: BootnodeConfig, count: int, metrics_listen: tuple[str, int] | None, summary_interval_s: float
) -> int:
    """Start ``count`` workers and keep them running until SIGTERM or SIGINT."""
    from gochat.bootnode.driver import _make_socket

    mains = reuseport_sockets(config.listen, count, config.recv_buffer_bytes, _reuseport(_make_socket))
    port = mains[0].getsockname()[1]
    discovery: list[socket.socket | None] = [None] * count
    if config.discovery_port >= 0:  # a group too, without steering: any worker answers STUN
        where = (config.listen[0], config.discovery_port)
        discovery = list(reuseport_sockets(where, count, 1 << 20, _reuseport(_make_socket), steer=False))
    ctx = multiprocessing.get_context("fork")
    procs: dict[int, multiprocessing.process.BaseProcess] = {}
    stopping = False

    def start(shard: int) -> None:
        metrics = None
        if metrics_listen is not None:  # worker i on the given port + i (any free port for 0)
            metrics = (metrics_listen[0], metrics_listen[1] + shard if metrics_listen[1] else 0)
        proc = ctx.Process(
            target=_worker_main,
            args=(config, shard, (mains[shard], discovery[shard]), metrics, summary_interval_s),
            name=f"gochat-worker-{shard}",
            daemon=False,
        )
        proc.start()
        procs[shard] = proc

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info(
        "bootnode listening on udp %s:%d with %d workers (SO_REUSEPORT, steered by room and token)",
        config.listen[0],
        port,
        count,
    )
    for shard in range(count):
        start(shard)
    restarts = 0
    while not stopping:
        ready = wait([p.sentinel for p in procs.values()], timeout=0.5)
        for shard, proc in list(procs.items()):
            if proc.sentinel in ready and not stopping:
                proc.join()
                restarts += 1
                log.warning("worker %d exited with %s: restarting it on the same socket", shard, proc.exitcode)
                time.sleep(RESTART_BACKOFF_s)  # a worker that dies at once must not spin the parent
                start(shard)
    for proc in procs.values():
        if proc.is_alive() and proc.pid is not None:
            os.kill(proc.pid, signal.SIGTERM)
    for proc in procs.values():
        proc.join(10)
        if proc.is_alive():
            proc.kill()
    return 0


def _reuseport(
    make: Callable[[tuple[str, int], int], socket.socket],
) -> Callable[[tuple[str, int], int], socket.socket]:
    def make_shared(listen: tuple[str, int], recv_buffer: int) -> socket.socket:
        return make(listen, recv_buffer, reuseport=True)  # type: ignore[call-arg]

    return make_shared
