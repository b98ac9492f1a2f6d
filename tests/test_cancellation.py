"""A cancelled caller never hurts the others, and leaves nothing behind."""

from __future__ import annotations

import random

import anyio
import anyio.lowlevel
import numpy as np
import pytest

import asyncembed
from asyncembed import Batching, Embedder, Limits
from asyncembed.testing import LocalServer, expected_vector, wait_until

pytestmark = pytest.mark.anyio

DIMS = 8
MODEL = "test/cancel"


def assert_nothing_left(embedder: Embedder) -> None:
    stats = embedder.stats
    assert stats.queued == 0 and stats.in_flight == 0
    assert stats.pending == 0  # no text queued or in flight
    assert stats.waiting == 0  # nobody queued for a slot
    assert stats.active == 0  # no background task left


async def test_random_cancellation_of_half_the_callers() -> None:
    rng = random.Random(3)
    async with LocalServer(dimensions=DIMS, latency=0.002) as server:
        async with Embedder(
            MODEL,
            base_url=server.base_url,
            batching=Batching(max_size=20, max_wait=0.001),
            limits=Limits(max_concurrency=4),
        ) as embedder:
            results: dict[int, np.ndarray] = {}
            cancelled: set[int] = set()

            async def caller(i: int, scope: anyio.CancelScope) -> None:
                with scope:
                    results[i] = await embedder.embed(f"text {i}")
                if scope.cancelled_caught:
                    cancelled.add(i)

            scopes = [anyio.CancelScope() for _ in range(400)]
            victims = set(rng.sample(range(400), 200))
            async with anyio.create_task_group() as tg:
                for i in range(400):
                    tg.start_soon(caller, i, scopes[i])
                # Cancel the victims at different stages: queued, sent, in flight.
                for step, i in enumerate(sorted(victims, key=lambda _: rng.random())):
                    scopes[i].cancel()
                    if step % 25 == 0:
                        await anyio.lowlevel.checkpoint()
            assert cancelled <= victims
            assert len(cancelled) >= 100  # most were cancelled before they finished
            for i in set(range(400)) - cancelled:
                np.testing.assert_array_equal(results[i], expected_vector(MODEL, f"text {i}", DIMS))
            await wait_until(lambda: not embedder.stats.active)
            assert_nothing_left(embedder)


async def test_caller_cancelled_before_sending_leaves_the_batch() -> None:
    async with LocalServer(dimensions=DIMS) as server:
        async with Embedder(
            MODEL, base_url=server.base_url, batching=Batching(max_wait=60.0)
        ) as embedder:
            scope = anyio.CancelScope()
            kept: list[np.ndarray] = []

            async def leaver() -> None:
                with scope:
                    await embedder.embed("leaves")

            async def stayer() -> None:
                kept.append(await embedder.embed("stays"))

            async with anyio.create_task_group() as tg:
                tg.start_soon(leaver)
                tg.start_soon(stayer)
                await anyio.lowlevel.checkpoint()
                scope.cancel()
                await anyio.lowlevel.checkpoint()
                embedder.flush()
            assert server.requests[0].inputs == ["stays"]
            assert len(kept) == 1
        assert_nothing_left(embedder)


async def test_everyone_leaving_an_in_flight_request_stops_it() -> None:
    async with LocalServer(dimensions=DIMS, latency=30.0) as server:
        async with Embedder(MODEL, base_url=server.base_url) as embedder:
            with anyio.move_on_after(0.05):
                await embedder.embed("never mind")
            # The request is cancelled, not awaited for 30 s.
            await wait_until(lambda: not embedder.stats.active)
            assert_nothing_left(embedder)
            # The Embedder still works for the next caller.
            server.latency = 0.0
            vector = await embedder.embed("next")
            np.testing.assert_array_equal(vector, expected_vector(MODEL, "next", DIMS))


async def test_a_duplicate_caller_keeps_the_shared_request_alive() -> None:
    async with LocalServer(dimensions=DIMS, latency=0.02) as server:
        async with Embedder(MODEL, base_url=server.base_url) as embedder:
            scope = anyio.CancelScope()
            kept: list[np.ndarray] = []

            async def leaver() -> None:
                with scope:
                    await embedder.embed("shared")

            async def stayer() -> None:
                kept.append(await embedder.embed("shared"))

            async with anyio.create_task_group() as tg:
                tg.start_soon(leaver)
                tg.start_soon(stayer)
                # Until both wait on the one in-flight request.
                await wait_until(lambda: server.stats.in_flight > 0)
                scope.cancel()
            assert len(kept) == 1 and server.requests_count == 1


async def test_leaving_on_an_error_cancels_in_flight_work_at_once() -> None:
    async with LocalServer(dimensions=DIMS, latency=30.0) as server:
        errors: list[BaseException] = []
        embedder = Embedder(MODEL, base_url=server.base_url)

        async def caller() -> None:
            try:
                await embedder.embed("in flight")
            except asyncembed.EmbedderClosedError as exc:
                errors.append(exc)

        with anyio.fail_after(5):  # the 30 s request is not waited for
            async with anyio.create_task_group() as tg:
                with pytest.raises(KeyError):
                    async with embedder:
                        tg.start_soon(caller)
                        await wait_until(lambda: server.stats.in_flight > 0)
                        raise KeyError("the app failed")
        assert len(errors) == 1  # the caller was told, not left hanging
        assert "state=CLOSED" in repr(embedder)
