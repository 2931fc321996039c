"""asyncio driver of the bootnode: owns the UDP socket, the clock and the timer.

All protocol decisions are in rendezvous.py; all per-packet work in the fast path.
The socket is drained with ``loop.add_reader`` in recvmmsg batches until it is empty
(bounded per wake-up so timers still run under a flood); after every input the
actions the machine returned are sent at once (sendmmsg), and a single timer is
re-armed at the machine's next tick.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from gochat.bootnode import fastpath as default_fastpath
from gochat.bootnode.bus import ClusterBus
from gochat.bootnode.cluster import ClusterRooms
from gochat.bootnode.keys import BootnodeKey, default_key_path, load_or_create
from gochat.bootnode.rendezvous import Action, Limits, Rendezvous, Send, Table, TurnIssuer
from gochat.bootnode.summary import summarize
from gochat.constants import (
    BATCH_SIZE,
    MAX_BATCHES_PER_WAKEUP,
    DEFAULT_BATCH_WAIT_s,
    DEFAULT_LOG_SUMMARY_INTERVAL_s,
)
from gochat.wire.endpoints import canonical_endpoint, format_endpoint, sockaddr_for

# RELAY_REFUSED reasons decided per datagram (the others are about bindings, at registration).
CLUSTER_RETRY_s = 2.0  # no NATS server answers yet: try again this often
RELAY_PER_PACKET_REFUSALS = ("not_bound", "no_such_peer", "rate_limited", "busy")

log = logging.getLogger("gochat.bootnode")


class FastPathSocket(Protocol):
    """The per-packet socket layer (FastPath of either fast path)."""

    @property
    def drained(self) -> bool: ...
    @property
    def last_received(self) -> int: ...
    @property
    def counters(self) -> dict[str, int]: ...
    def process_batch(self, now: float) -> list[tuple[bytes, Any]]: ...
    def send(self, datagrams: list[Any]) -> int: ...
    def send_to_room(self, room_id: bytes, data: bytes, exclude_slot: int = -1) -> int: ...
    def flush(self) -> int: ...


class FastPathModule(Protocol):
    """A fast-path implementation with the names gochat.bootnode.fastpath exports (tests
    pass either twin)."""

    @property
    def IMPLEMENTATION(self) -> str: ...
    @property
    def RegistrationTable(self) -> Callable[[int, float, float, int], Table]: ...
    @property
    def FastPath(self) -> Callable[[socket.socket, Any, int], FastPathSocket]: ...


@dataclass
class TickStats:
    """Timing of the expiry work, measured by the driver (the machine reads no clock)."""

    ticks: int = 0
    last_tick_ms: float = 0.0
    largest_expired: int = 0  # most registrations expired by one tick
    largest_tick_ms: float = 0.0  # duration of that tick (wheel work only)
    largest_announce_ms: float = 0.0  # announcing and removing them
    last_join_ms: float = 0.0  # handling of the latest register, fan-out included
    last_join_room_size: int = 0


@dataclass
class BootnodeConfig:
    listen: tuple[str, int]
    heartbeat_interval_s: float
    peer_timeout_s: float
    limits: Limits
    recv_buffer_bytes: int
    batch_size: int = BATCH_SIZE
    # The static key: given, or kept in key_file (default: $XDG_DATA_HOME/gochat/bootnode.key,
    # created on first start).
    key: BootnodeKey | None = None
    key_file: Path | None = None
    # The second UDP port that answers STUN for NAT discovery: -1 off, 0 any free port,
    # else that port (the settings' "auto" is the listen port + 1).
    discovery_port: int = -1
    # A TURN server whose REST-API secret we share: clients asking for a relay get
    # time-limited credentials for it.
    turn: TurnIssuer | None = None
    # After a wakeup that found less than one batch, leave the socket alone this long so
    # that the next read gets a fuller batch (as NAPI does): heartbeats can wait a
    # millisecond, and at a paced load the wakeups, not the datagrams, cost the CPU. 0: off.
    batch_wait_s: float = DEFAULT_BATCH_WAIT_s
    # --workers: the socket of this worker in the reuseport group (and of the discovery
    # port's group), made by the parent, and this worker's shard (the first byte of its
    # tokens, by which the kernel steers their datagrams here).
    sock: socket.socket | None = None
    discovery_sock: socket.socket | None = None
    shard: int = 0
    # --cluster: the NATS servers of the bus that joins bootnodes (empty: none).
    cluster: tuple[str, ...] = ()


def _make_socket(listen: tuple[str, int], recv_buffer: int, reuseport: bool = False) -> socket.socket:
    host, port = listen
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE)
    family, _, _, _, sockaddr = infos[0]
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if reuseport:  # one of --workers' group on this address
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # [::] serves IPv4 too
        try:  # root may exceed net.core.rmem_max; others get what the kernel allows
            sock.setsockopt(socket.SOL_SOCKET, 33, recv_buffer)  # SO_RCVBUFFORCE
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, recv_buffer)
        sock.bind(sockaddr)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class Bootnode:
    def __init__(self, config: BootnodeConfig, fastpath: FastPathModule = default_fastpath) -> None:
        self.config = config
        self.fastpath_module = fastpath
        self.key_created: Path | None = None
        key = config.key
        if key is None:
            path = config.key_file or default_key_path()
            key, created = load_or_create(path)
            self.key_created = path if created else None
        self.key = key
        self.sock = config.sock or _make_socket(config.listen, config.recv_buffer_bytes)
        self.address = self.sock.getsockname()
        now = time.monotonic()
        self.table = fastpath.RegistrationTable(config.limits.max_peers, config.peer_timeout_s, now, config.shard)
        self.fast = fastpath.FastPath(self.sock, self.table, config.batch_size)
        self.machine = Rendezvous(
            self.table,
            heartbeat_interval_s=config.heartbeat_interval_s,
            peer_timeout_s=config.peer_timeout_s,
            limits=config.limits,
            key=key,
            turn=config.turn,
            cluster=ClusterRooms(os.urandom(8), config.peer_timeout_s) if config.cluster else None,
        )
        self.bus: ClusterBus | None = None
        if self.machine.cluster is not None:
            self.bus = ClusterBus(list(config.cluster), self.machine.cluster, self._on_bus, self.machine.local_entries)
        self.ticks = TickStats()
        self.internal_errors = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.discovery_sock: socket.socket | None = config.discovery_sock
        self._resume: asyncio.TimerHandle | None = None
        self._batches_this_drain = 0
        if self.discovery_sock is not None:
            self.machine.stun_other = canonical_endpoint(self.discovery_sock.getsockname())
        elif config.sock is None and config.discovery_port >= 0:
            try:
                self.discovery_sock = _make_socket((config.listen[0], config.discovery_port), 1 << 16)
                self.machine.stun_other = canonical_endpoint(self.discovery_sock.getsockname())
            except OSError as exc:
                log.warning(
                    "NAT discovery off: cannot bind UDP port %d (DISCOVERY_PORT): %s",
                    config.discovery_port,
                    exc.strerror or exc,
                )

    # --- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.sock.fileno(), self._on_readable)
        if self.discovery_sock is not None:
            self._loop.add_reader(self.discovery_sock.fileno(), self._on_discovery_readable)
            log.info("NAT discovery: STUN also on udp %s", format_endpoint(self.discovery_sock.getsockname()))
        self._arm_timer()
        # Linux doubles what it is asked for (bookkeeping), up to net.core.rmem_max unless
        # root forced it: report both, so that an operator sees a capped buffer.
        rcvbuf = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        log.info(
            "bootnode listening on udp %s (fast path: %s, receive buffer: asked %d bytes, the kernel gave %d)",
            format_endpoint(self.address),
            self.fastpath_module.IMPLEMENTATION,
            self.config.recv_buffer_bytes,
            rcvbuf,
        )
        if rcvbuf < self.config.recv_buffer_bytes:
            log.warning(
                "the receive buffer is smaller than asked (%d < %d bytes): raise net.core.rmem_max "
                "(sysctl -w net.core.rmem_max=%d) or run with CAP_NET_ADMIN, or bursts may be dropped",
                rcvbuf,
                self.config.recv_buffer_bytes,
                self.config.recv_buffer_bytes,
            )
        if self.fastpath_module.IMPLEMENTATION != "cython" and not os.environ.get("GOCHAT_PURE_PYTHON"):
            log.warning(
                "the compiled fast path is not installed (no C compiler when gochat was installed?): "
                "the pure-Python fallback serves, about 5x slower per heartbeat"
            )
        if self.key_created is not None:
            log.info("created a new bootnode key in %s", self.key_created)
        log.info("bootnode public key %s", self.key.public.hex())
        lim = self.config.limits
        log.info(
            "limits: %d peers, %d per room, %d per source IP in a room, %g registrations/s per source IP "
            "(burst %d); heartbeat interval %gs, peer timeout %gs",
            lim.max_peers,
            lim.max_peers_per_room,
            lim.max_peers_per_source,
            lim.register_rate_per_ip,
            lim.register_burst_per_ip,
            self.config.heartbeat_interval_s,
            self.config.peer_timeout_s,
        )
        if lim.relay:
            log.info(
                "relay: on, %d bytes/s per binding (burst %d), %d bytes/s in all, %d bindings per source IP, %d in all",
                lim.relay_rate,
                lim.relay_burst,
                lim.relay_total_rate,
                lim.relay_bindings_per_ip,
                lim.relay_max_bindings,
            )
        else:
            log.info("relay: off (clients that cannot punch each other cannot talk)")
        if self.config.turn is not None:
            log.info("TURN: clients that ask for a relay get credentials for %s", self.config.turn.url)

    def _on_discovery_readable(self) -> None:
        """The second port: a few STUN requests at a time, answered in Python (rare)."""
        sock = self.discovery_sock
        assert sock is not None
        for _ in range(64):
            try:
                data, addr = sock.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            try:
                for action in self.machine.receive_on_second_port(data, addr, self._now()):
                    if isinstance(action, Send):
                        sock.sendto(action.data, sockaddr_for(sock.family, action.addr))
            except Exception:  # a bug must cost one datagram, never the loop
                self.internal_errors += 1
                log.exception("internal error handling a datagram on the discovery port from %s", addr)

    def close(self) -> None:
        if self._resume is not None:
            self._resume.cancel()
        if self.discovery_sock is not None:
            if self._loop is not None and self.discovery_sock.fileno() != -1:
                self._loop.remove_reader(self.discovery_sock.fileno())
            self.discovery_sock.close()
        if self._loop is not None and self.sock.fileno() != -1:
            self._loop.remove_reader(self.sock.fileno())
        if self._timer is not None:
            self._timer.cancel()
        self.sock.close()

    # --- I/O -------------------------------------------------------------------------------

    def _now(self) -> float:
        return time.monotonic()

    def _on_readable(self) -> None:
        batches = self._drain()
        if batches == 1 and self.config.batch_wait_s > 0 and self._loop is not None:
            # One short batch: wait for more before reading again (the kernel queues them),
            # and go on reading on that timer while datagrams keep coming (no readiness
            # to re-arm per wakeup: that costs two epoll_ctl and a loop turn).
            self._loop.remove_reader(self.sock.fileno())
            self._resume = self._loop.call_later(self.config.batch_wait_s, self._poll)

    def _poll(self) -> None:
        """The batch wait is over: read what gathered. If there was anything, read again
        after another wait; an empty socket goes back to readiness (an idle bootnode
        keeps no timer)."""
        self._resume = None
        if self._loop is None or self.sock.fileno() == -1:
            return
        self._drain()
        if self.fast.last_received == 0 and self._batches_this_drain == 1:
            self._loop.add_reader(self.sock.fileno(), self._on_readable)
        else:
            self._resume = self._loop.call_later(self.config.batch_wait_s, self._poll)

    def _drain(self) -> int:
        """Receive batches until the socket is empty (or MAX_BATCHES_PER_WAKEUP); returns
        how many recvmmsg calls it took."""
        machine, fast = self.machine, self.fast
        batches = 0
        for _ in range(MAX_BATCHES_PER_WAKEUP):
            batches += 1
            now = self._now()
            others = fast.process_batch(now)
            if others:
                t0 = time.perf_counter()
                for data, addr in others:
                    try:
                        self._execute(machine.receive_datagram(data, addr, now))
                    except Exception:  # a bug must cost one datagram, never the receive loop
                        self.internal_errors += 1
                        log.exception("internal error handling a datagram from %s", addr)
                announcements: list[Action] = []
                try:
                    announcements = machine.flush_announcements()
                    self._execute(announcements)
                except Exception:
                    self.internal_errors += 1
                    log.exception("internal error announcing joins")
                fast.flush()  # one sendmmsg for the whole batch's replies and announcements
                if self.bus is not None:
                    self.bus.pump()
                if announcements:  # the batch's registrations and their fan-out, as one figure
                    self.ticks.last_join_ms = (time.perf_counter() - t0) * 1000
                    self.ticks.last_join_room_size = machine.last_join_room_size
            if fast.drained:
                break
        self._batches_this_drain = batches
        return batches

    def _on_bus(self, subject: str, data: bytes) -> None:
        """A message of the cluster bus (another bootnode's members of our rooms)."""
        try:
            self._execute(self.machine.receive_bus(subject, data, self._now()))
        except Exception:  # a bug must cost one message, never the bus
            self.internal_errors += 1
            log.exception("internal error handling a cluster message on %s", subject)
        self.fast.flush()
        if self.bus is not None:
            self.bus.pump()

    def _execute(self, actions: list[Action]) -> None:
        """Queue the actions' datagrams in order; the caller flushes the queue."""
        fast = self.fast
        for action in actions:
            if isinstance(action, Send):
                fast.send([action])
            else:
                fast.send_to_room(action.room_id, action.data, action.exclude_slot)

    def _arm_timer(self) -> None:
        assert self._loop is not None
        now = self._now()
        delay = max(0.0, self.machine.get_timer(now) - now)
        self._timer = self._loop.call_at(self._loop.time() + delay, self._on_timer)

    def _on_timer(self) -> None:
        try:
            now = self._now()
            t0 = time.perf_counter()
            expired = self.machine.collect_expired(now)
            t1 = time.perf_counter()
            self._execute(self.machine.announce_expired(expired))
            if self.bus is not None:
                self._execute(self.machine.expire_nodes(now))
                self.bus.pump()
            self.fast.flush()
            t2 = time.perf_counter()
            ts = self.ticks
            ts.ticks += 1
            ts.last_tick_ms = (t1 - t0) * 1000
            if len(expired) >= ts.largest_expired and expired:
                ts.largest_expired = len(expired)
                ts.largest_tick_ms = (t1 - t0) * 1000
                ts.largest_announce_ms = (t2 - t1) * 1000
        except Exception:
            self.internal_errors += 1
            log.exception("internal error in the expiry timer")
        finally:
            if self.sock.fileno() != -1:
                self._arm_timer()

    # --- observation ----------------------------------------------------------------------

    def snapshot(self) -> dict[str, float]:
        """Every counter in one flat dict (tests, benchmarks and the metrics endpoint)."""
        # dict() copies in one step under the GIL: the metrics thread may call this while
        # the loop is adding counters.
        out: dict[str, float] = {f"fast.{k}": v for k, v in self.fast.counters.items()}
        out.update(dict(self.machine.stats))
        fast = self.fast.counters
        for reason in RELAY_PER_PACKET_REFUSALS:  # the fast path's and the machine's together
            out[f"relay.refused.{reason}"] = fast.get(f"relay_{reason}", 0) + out.get(f"relay.refused.{reason}", 0)
        if self.bus is not None and self.machine.cluster is not None:
            cluster = self.machine.cluster
            out.update(
                cluster_connected=float(self.bus.connected),
                cluster_nodes=len(cluster.nodes),
                cluster_remote_members=sum(len(m) for m in cluster.remote.values()),
                cluster_published=self.bus.published,
                cluster_received=self.bus.received,
            )
        out.update(
            relay_bindings=self.machine.relay_bindings,
            relayed=fast.get("relayed", 0) + out.get("relay.forwarded", 0),
            peers=len(self.table),
            rooms=self.table.room_count,
            internal_errors=self.internal_errors,
            **{f"tick.{k}": v for k, v in self.ticks.__dict__.items()},
        )
        return out


async def _join_bus(bus: ClusterBus) -> None:
    """Connect to the cluster bus, trying again every CLUSTER_RETRY_s while no server of
    the list answers: meanwhile the bootnode serves its own members alone."""
    said = False
    while True:
        try:
            await bus.start()
            return
        except Exception as exc:
            if not said:
                log.warning(
                    "cluster: no NATS server of %s answers (%s): serving our own members alone, trying again",
                    ",".join(bus.servers),
                    exc or type(exc).__name__,
                )
                said = True
            await asyncio.sleep(CLUSTER_RETRY_s)


async def serve(
    config: BootnodeConfig,
    metrics_listen: tuple[str, int] | None = None,
    fastpath: FastPathModule = default_fastpath,
    summary_interval_s: float = DEFAULT_LOG_SUMMARY_INTERVAL_s,
) -> int:
    """Run a bootnode until SIGINT or SIGTERM; returns the exit code. Every
    ``summary_interval_s`` it logs what it did (nothing if it did nothing)."""
    node = Bootnode(config, fastpath)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    node.start()
    bus_task = loop.create_task(_join_bus(node.bus)) if node.bus is not None else None
    last = node.snapshot()
    summary: asyncio.TimerHandle | None = None

    def summarize_activity() -> None:
        nonlocal last, summary
        now = node.snapshot()
        line = summarize(last, now, summary_interval_s)
        if line is not None:
            log.log(logging.WARNING if now["internal_errors"] > last["internal_errors"] else logging.INFO, line)
        last = now
        summary = loop.call_later(summary_interval_s, summarize_activity)

    summary = loop.call_later(summary_interval_s, summarize_activity)
    if metrics_listen is not None:
        from gochat.bootnode.metrics import start_metrics_server

        try:
            bound = start_metrics_server(node, metrics_listen, node.fastpath_module.IMPLEMENTATION)
        except OSError as exc:
            log.error(
                "cannot serve metrics on %s (METRICS_LISTEN): %s", format_endpoint(metrics_listen), exc.strerror or exc
            )
            node.close()
            return 1
        log.info("metrics on http://%s/metrics (health: /healthz)", format_endpoint(bound))
    try:
        await stop.wait()
    finally:
        if summary is not None:
            summary.cancel()
        if bus_task is not None:
            bus_task.cancel()
        if node.bus is not None:
            await node.bus.stop()
        snap = node.snapshot()
        node.close()
        log.info(
            "bootnode stopped: %d peers in %d rooms, %d heartbeats, %d registrations",
            snap["peers"],
            snap["rooms"],
            snap["fast.heartbeats"],
            snap.get("register.accepted", 0),
        )
    return 0
