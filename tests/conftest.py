"""Fixtures shared by the suite: both fast-path implementations, a bootnode running on
loopback in a thread of its own, and a small synchronous test peer."""

from __future__ import annotations

import asyncio
import os
import threading

import pytest

from gochat.bootnode import _purepath
from gochat.bootnode.driver import Bootnode, BootnodeConfig
from gochat.bootnode.keys import BootnodeKey
from gochat.bootnode.rendezvous import Limits

# `make test-fast` sets GOCHAT_TEST_FAST=1: property tests then try a tenth of their
# examples (the same properties, a quicker edit loop); `make test` tries them all.
FAST = os.environ.get("GOCHAT_TEST_FAST") == "1"


def examples(n: int) -> int:
    """How many examples a property test tries in this run."""
    return max(10, n // 10) if FAST else n


@pytest.fixture(scope="session", autouse=True)
def _data_home(tmp_path_factory):
    """What the code under test keeps by default under $XDG_DATA_HOME (a bootnode's key,
    identities, pins) goes to a directory of the test session, never to the home
    directory of whoever runs the tests; processes the tests start inherit it."""
    path = tmp_path_factory.mktemp("xdg-data")
    previous = os.environ.get("XDG_DATA_HOME")
    os.environ["XDG_DATA_HOME"] = str(path)
    yield path
    if previous is None:
        os.environ.pop("XDG_DATA_HOME", None)
    else:
        os.environ["XDG_DATA_HOME"] = previous


class _Impl:
    """A fast-path module with the attributes fastpath.py exports."""

    def __init__(self, module, name):
        self.RegistrationTable = module.RegistrationTable
        self.FastPath = module.FastPath
        self.TableFull = module.TableFull
        self.send_records = module.send_records
        self.recv_batch = module.recv_batch
        self.IMPLEMENTATION = name


def _cython():
    from gochat.bootnode import _fastpath  # make test builds it; a missing build must fail loudly

    return _Impl(_fastpath, "cython")


IMPLS = {"cython": _cython, "pure": lambda: _Impl(_purepath, "pure-python")}


@pytest.fixture(params=["cython", "pure"])
def impl(request):
    """Run the test against the Cython fast path and against its pure-Python twin."""
    return IMPLS[request.param]()


@pytest.fixture(scope="session")
def both_impls():
    return IMPLS["cython"](), IMPLS["pure"]()


class ThreadedBootnode:
    """A real Bootnode (real UDP socket, real asyncio driver) on its own loop thread."""

    def __init__(self, impl, **overrides):
        limits = Limits(
            max_peers=overrides.pop("max_peers", 10_000),
            max_peers_per_room=overrides.pop("max_peers_per_room", 1024),
            register_rate_per_ip=overrides.pop("register_rate", 100_000.0),
            register_burst_per_ip=overrides.pop("register_burst", 100_000),
            max_peers_per_source=overrides.pop("max_peers_per_source", 16),
        )
        self.config = BootnodeConfig(
            listen=overrides.pop("listen", ("127.0.0.1", 0)),
            heartbeat_interval_s=overrides.pop("heartbeat_interval_s", 1.0),
            peer_timeout_s=overrides.pop("peer_timeout_s", 2.0),
            limits=limits,
            recv_buffer_bytes=4 * 1024 * 1024,
            key=overrides.pop("key", None) or BootnodeKey.generate(),
        )
        assert not overrides, overrides
        self.impl = impl
        self.loop = asyncio.new_event_loop()
        self.node = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        asyncio.set_event_loop(self.loop)
        self.node = Bootnode(self.config, self.impl)
        self.loop.call_soon(self.node.start)
        self.loop.call_soon(self._ready.set)
        self.loop.run_forever()
        self.node.close()

    def __enter__(self):
        self._thread.start()
        assert self._ready.wait(10), "bootnode thread did not start"
        return self

    def __exit__(self, *exc):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    @property
    def address(self):
        return self.node.address[:2]

    def snapshot(self):
        result = {}
        done = threading.Event()

        def take():
            result.update(self.node.snapshot())
            done.set()

        self.loop.call_soon_threadsafe(take)
        assert done.wait(10)
        return result


@pytest.fixture
def bootnode_factory(impl):
    started = []

    def start(**overrides):
        node = ThreadedBootnode(impl, **overrides).__enter__()
        started.append(node)
        return node

    yield start
    for node in started:
        node.__exit__(None, None, None)
