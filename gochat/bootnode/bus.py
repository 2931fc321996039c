"""The cluster bus (--cluster nats://HOST:PORT[,...]): a bootnode's rooms that span
bootnodes, through NATS (nats-py), in the bootnode's asyncio loop.

It publishes what the machine's ClusterRooms queued (joins and leaves of our members,
sync requests, one ALIVE a node every ALIVE_INTERVAL_s), subscribes to the subjects of
the rooms we have members in, and hands what arrives to the machine, whose actions
(announcements to our members) go out like any others. The client library reconnects
on its own, to any server of the list (a NATS server that dies with others left changes
nothing); while no server answers, the bootnode serves its own members alone, says so
in its log and in ``gochat_cluster_connected``, and tells the others everything again
once connected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import nats
from nats.aio.client import Client as NATS

from gochat.bootnode.cluster import NODES_SUBJECT, ALIVE_INTERVAL_s, ClusterRooms, room_subject

log = logging.getLogger("gochat.bootnode")


class ClusterBus:
    def __init__(
        self,
        servers: list[str],
        cluster: ClusterRooms,
        on_message: Callable[[str, bytes], None],
        local_entries: Callable[[bytes], list[bytes]],
    ) -> None:
        self.servers = servers
        self.cluster = cluster
        self._on_message = on_message
        self._local_entries = local_entries
        self.nc: NATS | None = None
        self.connected = False
        self._subs: dict[bytes, Any] = {}
        self._alive_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.published = 0
        self.received = 0

    async def start(self) -> None:
        self.nc = await nats.connect(
            servers=self.servers,
            name=f"gochat-bootnode-{self.cluster.node_id.hex()}",
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            connect_timeout=2,
            disconnected_cb=self._disconnected,
            reconnected_cb=self._reconnected,
            error_cb=self._error,
        )
        self.connected = True
        await self.nc.subscribe(NODES_SUBJECT, cb=self._message)
        log.info("cluster: on the bus at %s as node %s", self.nc.connected_url, self.cluster.node_id.hex())
        self._alive_task = asyncio.get_running_loop().create_task(self._alive())
        self.pump()

    async def _alive(self) -> None:
        while True:
            if self.nc is not None and self.connected:
                subject, data = self.cluster.alive()
                await self._publish(subject, data)
            await asyncio.sleep(ALIVE_INTERVAL_s)

    async def _publish(self, subject: str, data: bytes) -> None:
        try:
            assert self.nc is not None
            await self.nc.publish(subject, data)
            self.published += 1
        except Exception as exc:  # the bus is down: the machine's state stays right, resent at reconnection
            log.debug("cluster: publish to %s failed: %r", subject, exc)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def pump(self) -> None:
        """Publish what the machine queued and follow its rooms (after every input)."""
        cluster = self.cluster
        if self.nc is None:
            return
        for room_id in list(cluster.subscribe):
            cluster.subscribe.discard(room_id)
            if room_id not in self._subs:
                self._subs[room_id] = None
                self._spawn(self._subscribe(room_id))
        for room_id in list(cluster.unsubscribe):
            cluster.unsubscribe.discard(room_id)
            sub = self._subs.pop(room_id, None)
            if sub is not None:
                self._spawn(sub.unsubscribe())
        if cluster.outbox:  # one task for the whole batch's messages, in order
            batch, cluster.outbox = cluster.outbox, []
            self._spawn(self._publish_all(batch))

    async def _publish_all(self, batch: list[tuple[str, bytes]]) -> None:
        for subject, data in batch:
            await self._publish(subject, data)

    async def _subscribe(self, room_id: bytes) -> None:
        assert self.nc is not None
        sub = await self.nc.subscribe(room_subject(room_id), cb=self._message)
        if room_id in self._subs:
            self._subs[room_id] = sub
        else:  # the room closed meanwhile
            await sub.unsubscribe()

    async def _message(self, msg: Any) -> None:
        self.received += 1
        self._on_message(msg.subject, msg.data)

    async def _disconnected(self) -> None:
        if self.connected:
            self.connected = False
            log.warning("cluster: lost the bus; serving our own members alone until it is back")

    async def _reconnected(self) -> None:
        self.connected = True
        log.info("cluster: back on the bus at %s", self.nc.connected_url if self.nc else "?")
        self.cluster.reconnected(self._local_entries)
        self.pump()

    async def _error(self, exc: Exception) -> None:
        log.debug("cluster: %r", exc)

    async def stop(self) -> None:
        if self._alive_task is not None:
            self._alive_task.cancel()
        if self.nc is not None and self.nc.is_connected:
            subject, data = self.cluster.bye()
            try:
                await self.nc.publish(subject, data)
                await self.nc.flush(timeout=1)
            except Exception:  # a bye that cannot be said is a silence that times out
                pass
        if self.nc is not None:
            with contextlib.suppress(Exception):  # closing a connection that is already gone
                await self.nc.close()
