"""Bugs found in review, each pinned by the test that proved it."""

from __future__ import annotations

from typing import Any

import anyio
import numpy as np
import pytest

import asyncembed
from asyncembed import Batching, Embedder, Limits
from asyncembed.testing import (
    FakeClock,
    LocalServer,
    MockTransport,
    expected_vector,
    json_response,
    wait_until,
)

pytestmark = pytest.mark.anyio
DIMS = 8
MODEL = "test/review"


async def test_a_caller_joining_a_just_abandoned_request_gets_its_vector() -> None:
    gate, entered = anyio.Event(), anyio.Event()
    calls = 0

    async def handler(request: dict[str, Any]) -> asyncembed.RawResponse:
        nonlocal calls
        calls += 1
        if calls == 1:  # the first request hangs until it is cancelled
            entered.set()
            await gate.wait()
        return transport.answer(request)

    transport = MockTransport(handler, dimensions=DIMS)
    async with Embedder(MODEL, transport=transport, batching=Batching(max_wait=0)) as embedder:
        scope = anyio.CancelScope()
        got: list[np.ndarray] = []

        async def first() -> None:
            with scope:
                await embedder.embed("x")

        async def second() -> None:
            got.append(await embedder.embed("x"))

        async with anyio.create_task_group() as tg:
            tg.start_soon(first)
            await entered.wait()
            scope.cancel()  # the only caller leaves: its request is cancelled
            tg.start_soon(second)  # and a new caller of the same text arrives at once
            await wait_until(lambda: bool(got), timeout=3)
        np.testing.assert_array_equal(got[0], expected_vector(MODEL, "x", DIMS))


async def test_a_caller_without_timeout_does_not_inherit_anothers_deadline() -> None:
    calls = 0

    def handler(request: dict[str, Any]) -> asyncembed.RawResponse:
        nonlocal calls
        calls += 1
        if calls == 1:
            body = {"error": {"code": 503, "message": "busy"}}
            return json_response(body, status=503, headers={"Retry-After": "5"})
        return transport.answer(request)

    transport = MockTransport(handler, dimensions=DIMS)
    async with Embedder(
        MODEL, transport=transport, clock=FakeClock(), batching=Batching(max_wait=0.001)
    ) as embedder:
        results: dict[str, object] = {}

        async def call(name: str, timeout: float | None) -> None:
            try:
                results[name] = await embedder.embed("x", timeout=timeout)
            except Exception as exc:
                results[name] = exc

        async with anyio.create_task_group() as tg:
            tg.start_soon(call, "a", 1.0)
            await anyio.lowlevel.checkpoint()
            tg.start_soon(call, "b", None)  # joins "a"'s text, with no deadline
        assert isinstance(results["b"], np.ndarray), results["b"]


async def test_stream_stops_at_close_and_no_session_is_reopened() -> None:
    async with LocalServer(dimensions=DIMS, latency=0.01) as server:
        embedder = Embedder(
            MODEL,
            base_url=server.base_url,
            batching=Batching(max_size=2),
            limits=Limits(max_concurrency=1),
        )
        starts: list[int] = []
        async with embedder:
            blocks = embedder.stream([f"t{i}" for i in range(20)], window=2)
            with pytest.raises(asyncembed.EmbedderClosedError):
                try:
                    async for start, _ in blocks:
                        starts.append(start)
                        if len(starts) == 1:
                            await embedder.aclose()
                finally:
                    await blocks.aclose()
        assert len(starts) < 10  # it did not carry on to the end
        assert "state=CLOSED" in repr(embedder) and embedder.stats.active == 0


async def test_embed_many_in_progress_is_waited_for_by_aclose() -> None:
    async with LocalServer(dimensions=DIMS, latency=0.02) as server:
        embedder = Embedder(
            MODEL,
            base_url=server.base_url,
            batching=Batching(max_size=1),
            limits=Limits(max_concurrency=1),
        )
        result: list[object] = []
        async with embedder:

            async def bulk() -> None:
                result.append(await embedder.embed_many([f"t{i}" for i in range(6)]))

            async with anyio.create_task_group() as tg:
                tg.start_soon(bulk)
                await wait_until(lambda: server.stats.requests >= 1)
                await embedder.aclose()  # waits for the call to finish
        assert isinstance(result[0], np.ndarray) and result[0].shape == (6, DIMS)
        assert "state=CLOSED" in repr(embedder) and embedder.stats.active == 0


async def test_callers_of_the_same_text_get_their_own_arrays() -> None:
    async with Embedder(MODEL, transport=MockTransport(dimensions=DIMS)) as embedder:
        out: list[np.ndarray] = []

        async def handler() -> None:
            out.append(await embedder.embed("same query"))

        async with anyio.create_task_group() as tg:
            tg.start_soon(handler)
            tg.start_soon(handler)
        a, b = out
        a *= 2.0  # one caller scales its own vector in place
        np.testing.assert_array_equal(b, expected_vector(MODEL, "same query", DIMS))


@pytest.mark.parametrize("encoding", ["base64", "float"])
async def test_results_are_always_writable(encoding: asyncembed._types.EncodingFormat) -> None:
    transport = MockTransport(dimensions=DIMS)
    async with Embedder(MODEL, transport=transport, encoding_format=encoding) as embedder:
        matrix = await embedder.embed_many(["a", "b", "c"])
        matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
        created = await embedder.create(["d"])
        created.vectors[0] *= 2
        vector = await embedder.embed("e")
        vector *= 2


async def test_a_400_about_the_whole_request_is_not_bisected_to_the_end() -> None:
    def handler(request: dict[str, Any]) -> asyncembed.RawResponse:
        body = {"error": {"code": 400, "message": "dimensions not supported"}}
        return json_response(body, status=400)

    transport = MockTransport(handler, dimensions=DIMS)
    async with Embedder(MODEL, transport=transport, batching=Batching(max_size=64)) as embedder:
        with pytest.raises(asyncembed.BadRequestError, match="dimensions not supported"):
            await embedder.embed_many([f"t{i}" for i in range(64)])
    # The batch, its halves, then its first, middle and last inputs alone (none known good).
    assert len(transport.requests) == 6
    assert [len(r["input"]) for r in transport.requests] == [64, 32, 32, 1, 1, 1]


async def test_a_request_wide_400_after_a_success_is_shown_by_a_known_good_input() -> None:
    failing = False

    def handler(request: dict[str, Any]) -> asyncembed.RawResponse:
        if not failing:
            return transport.answer(request)
        return json_response({"error": {"code": 400, "message": "model is gone"}}, status=400)

    transport = MockTransport(handler, dimensions=DIMS)
    async with Embedder(MODEL, transport=transport, batching=Batching(max_size=64)) as embedder:
        await embedder.embed("known good")
        failing = True
        with pytest.raises(asyncembed.BadRequestError, match="model is gone"):
            await embedder.embed_many([f"t{i}" for i in range(64)])
    assert [r["input"] for r in transport.requests[-1:]] == [["known good"]]
    assert len(transport.requests) == 1 + 4  # the batch, its halves, the known good input


async def test_two_bad_inputs_with_the_same_message_are_still_isolated() -> None:
    def handler(request: dict[str, Any]) -> asyncembed.RawResponse:
        if {"bad-1", "bad-2"} & set(request["input"]):
            return json_response({"error": {"code": 400, "message": "invalid"}}, status=400)
        return transport.answer(request)

    transport = MockTransport(handler, dimensions=DIMS)
    texts = [f"t{i}" for i in range(16)]
    texts[2], texts[13] = "bad-1", "bad-2"  # one in each half
    async with Embedder(MODEL, transport=transport, batching=Batching(max_size=16)) as embedder:
        results: dict[int, object] = {}

        async def call(i: int) -> None:
            try:
                results[i] = await embedder.embed(texts[i])
            except asyncembed.BadRequestError as exc:
                results[i] = exc

        async with anyio.create_task_group() as tg:
            for i in range(16):
                tg.start_soon(call, i)
    failed = sorted(i for i, r in results.items() if isinstance(r, Exception))
    assert failed == [2, 13]
