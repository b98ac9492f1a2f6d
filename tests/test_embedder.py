"""The Embedder against the real local server: coalescing, order, limits, lifecycle."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.lowlevel
import numpy as np
import pytest

import asyncembed
from asyncembed import Batching, Embedder, Limits
from asyncembed.testing import FakeClock, LocalServer, expected_vector, wait_until

DIMS = 16
MODEL = "test/embed-small"

pytestmark = pytest.mark.anyio


@contextlib.asynccontextmanager
async def setup(
    *, server_kw: dict[str, Any] | None = None, **kw: Any
) -> AsyncIterator[tuple[LocalServer, Embedder]]:
    async with LocalServer(dimensions=DIMS, **(server_kw or {})) as server:
        async with Embedder(MODEL, base_url=server.base_url, **kw) as embedder:
            yield server, embedder


def want(text: str) -> np.ndarray:
    return expected_vector(MODEL, text, DIMS)


async def test_thousand_concurrent_calls_make_ten_requests_with_the_right_vectors() -> None:
    async with setup(batching=Batching(max_size=100, max_wait=10.0)) as (server, embedder):
        texts = [f"sentence number {i}" for i in range(1000)]
        results: dict[int, np.ndarray] = {}

        async def call(i: int) -> None:
            results[i] = await embedder.embed(texts[i])

        async with anyio.create_task_group() as tg:
            for i in range(1000):
                tg.start_soon(call, i)
        assert server.requests_count == 10
        assert [r.n_inputs for r in server.requests] == [100] * 10
        for i, text in enumerate(texts):
            assert results[i].dtype == np.float32 and results[i].shape == (DIMS,)
            np.testing.assert_array_equal(results[i], want(text))
        stats = embedder.stats
        assert stats.requests == 10 and stats.inputs == 1000 and stats.max_batch_size == 100
        assert stats.mean_batch_size == 100 and stats.queued == 0 and stats.in_flight == 0


async def test_lone_call_is_flushed_by_the_batch_window() -> None:
    clock = FakeClock()
    batching = Batching(max_wait=0.25, flush_when_idle=False)
    async with setup(batching=batching, clock=clock) as (server, embedder):
        vector = await embedder.embed("alone")
        np.testing.assert_array_equal(vector, want("alone"))
        assert clock.sleeps == [0.25]  # the window, and nothing else
        assert server.requests_count == 1


async def test_max_tokens_splits_batches_by_text_size() -> None:
    batching = Batching(max_size=100, max_tokens=100, max_wait=10.0, chars_per_token=4.0)
    async with setup(batching=batching) as (server, embedder):
        texts = ["x" * 160 + str(i) for i in range(6)]  # ~41 estimated tokens each
        results = [None] * 6

        async def call(i: int) -> None:
            results[i] = await embedder.embed(texts[i])  # type: ignore[call-overload]

        async with anyio.create_task_group() as tg:
            for i in range(6):
                tg.start_soon(call, i)
            await anyio.lowlevel.checkpoint()
            await embedder.aclose()  # flush the tail
        assert [r.n_inputs for r in server.requests] == [2, 2, 2]


async def test_duplicate_texts_waiting_together_are_sent_once() -> None:
    async with setup(batching=Batching(max_wait=10.0, max_size=50)) as (server, embedder):
        got: list[np.ndarray] = []

        async def call(text: str) -> None:
            got.append(await embedder.embed(text))

        async with anyio.create_task_group() as tg:
            for i in range(50):
                tg.start_soon(call, f"t{i % 5}")
            await anyio.lowlevel.checkpoint()
            embedder.flush()
        assert server.inputs_count == 5
        assert embedder.stats.deduplicated == 45
        assert len(got) == 50


async def test_peak_concurrency_never_exceeds_the_limit() -> None:
    limits = Limits(max_concurrency=3)
    kw = {"latency": 0.01}
    async with setup(server_kw=kw, limits=limits, batching=Batching(max_size=5)) as (
        server,
        embedder,
    ):
        matrix = await embedder.embed_many([f"text {i}" for i in range(100)])
        assert matrix.shape == (100, DIMS)
        assert server.requests_count == 20
        assert server.max_concurrent == 3


async def test_embed_many_keeps_input_order_and_sends_repeats_once() -> None:
    async with setup(batching=Batching(max_size=7)) as (server, embedder):
        texts = [f"doc {i % 40}" for i in range(100)]
        matrix = await embedder.embed_many(texts)
        assert matrix.dtype == np.float32 and matrix.shape == (100, DIMS)
        for row, text in zip(matrix, texts, strict=True):
            np.testing.assert_array_equal(row, want(text))
        assert server.inputs_count == 40


async def test_embed_many_accepts_token_lists() -> None:
    async with setup() as (_, embedder):
        matrix = await embedder.embed_many([[1, 2, 3], [4, 5]])
        np.testing.assert_array_equal(matrix[1], expected_vector(MODEL, [4, 5], DIMS))


async def test_create_sends_exactly_one_request() -> None:
    async with setup() as (server, embedder):
        result = await embedder.create(["a", "b"], encoding_format="float")
        assert result.vectors.shape == (2, DIMS)
        assert result.model == MODEL and result.usage.prompt_tokens > 0 and result.id
        single = await embedder.create("solo")
        np.testing.assert_array_equal(single.vectors[0], want("solo"))
        tokens = await embedder.create([7, 8, 9])
        assert tokens.vectors.shape == (1, DIMS)
        assert server.requests_count == 3
        assert [r.encoding_format for r in server.requests] == ["float", "base64", "base64"]


async def test_stats_add_up_tokens_and_cost() -> None:
    async with setup(server_kw={"price_per_token": 1e-6}) as (server, embedder):
        await embedder.embed_many(["aaaa bbbb", "cccc"])
        stats = embedder.stats
        assert stats.prompt_tokens == server.stats.tokens > 0
        assert stats.cost == pytest.approx(server.stats.cost)


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda e: e.embed(None), TypeError),
        (lambda e: e.embed(3), TypeError),
        (lambda e: e.embed(b"bytes"), TypeError),
        (lambda e: e.embed(""), asyncembed.InvalidInputError),
        (lambda e: e.embed_many([]), asyncembed.InvalidInputError),
        (lambda e: e.embed_many("abc"), TypeError),
        (lambda e: e.embed_many(["ok", 3]), TypeError),
        (lambda e: e.embed_many(["ok", ""]), ValueError),
        (lambda e: e.embed_many([[1, 2], [3, "x"]]), TypeError),
        (lambda e: e.embed_many([[1, 2], []]), ValueError),
        (lambda e: e.embed("x" * 100_000), asyncembed.InputTooLongError),
        (lambda e: e.embed("   "), asyncembed.InvalidInputError),
        (lambda e: e.embed("\n\t"), asyncembed.InvalidInputError),
        (lambda e: e.embed_many(["ok", " "]), asyncembed.InvalidInputError),
        (lambda e: e.embed_many([[1] * 9000]), asyncembed.InputTooLongError),
        (lambda e: e.create([1] * 9000), asyncembed.InputTooLongError),
        (lambda e: e.create([[1], [1] * 9000]), asyncembed.InputTooLongError),
        (lambda e: e.create(" "), asyncembed.InvalidInputError),
        (lambda e: e.embed("ok", timeout=-1), ValueError),
        (lambda e: e.embed("ok", timeout=0), ValueError),
        (lambda e: e.embed("ok", timeout=float("nan")), ValueError),
        (lambda e: e.embed_many(["ok"], timeout=-1), ValueError),
    ],
)
async def test_bad_input_fails_at_the_call_site_and_alone(call: Any, error: type) -> None:
    async with setup(batching=Batching(max_wait=10.0)) as (server, embedder):
        async with anyio.create_task_group() as tg:
            tg.start_soon(embedder.embed, "innocent")
            await anyio.lowlevel.checkpoint()
            with pytest.raises(error):
                await call(embedder)
            assert embedder.stats.queued == 1
            embedder.flush()
        assert server.requests_count == 1 and server.inputs_count == 1


async def test_over_long_token_lists_name_their_index() -> None:
    async with setup(batching=Batching(max_input_tokens=8)) as (server, embedder):
        with pytest.raises(asyncembed.InputTooLongError, match=r"texts\[1\] has 9 tokens") as info:
            await embedder.embed_many([[1] * 8, [1] * 9])
        assert info.value.index == 1 and server.requests_count == 0
        await embedder.embed_many([[1] * 8])  # at the limit is fine


async def test_truncate_cuts_over_long_inputs_instead() -> None:
    batching = Batching(max_input_tokens=10, truncate=True, chars_per_token=4.0)
    async with setup(batching=batching) as (server, embedder):
        await embedder.embed("y" * 1000)
        assert server.requests[0].inputs == ["y" * 39]  # estimate 10: within the limit


async def test_dimensions_are_requested_and_checked() -> None:
    async with setup(dimensions=8) as (server, embedder):
        vector = await embedder.embed("short")
        assert vector.shape == (8,)
        assert server.requests[0].dimensions == 8


async def test_spending_cap_stops_new_requests() -> None:
    limits = Limits(max_cost=1e-9)
    async with setup(limits=limits, server_kw={"price_per_token": 1e-6}) as (server, embedder):
        await embedder.embed("first")
        with pytest.raises(asyncembed.BudgetExceededError, match="max_cost"):
            await embedder.embed("second")
        assert server.requests_count == 1


async def test_live_calls_go_ahead_of_bulk_backfill() -> None:
    limits = Limits(max_concurrency=1)
    kw = {"latency": 0.005}
    async with setup(server_kw=kw, limits=limits, batching=Batching(max_size=2)) as (
        server,
        embedder,
    ):
        async with anyio.create_task_group() as tg:
            tg.start_soon(embedder.embed_many, [f"bulk {i}" for i in range(20)])
            await wait_until(lambda: server.requests_count >= 1)  # the backfill has begun
            await embedder.embed("live one")
            live_at = next(i for i, r in enumerate(server.requests) if r.inputs == ["live one"])
        assert server.requests_count == 11
        assert live_at <= 2  # behind at most the bulk request(s) already in flight


async def test_stream_yields_blocks_in_order_with_bounded_reading() -> None:
    read = 0

    def corpus() -> Any:
        nonlocal read
        for i in range(1000):
            read += 1
            yield f"line {i}"

    async with setup(batching=Batching(max_size=10), limits=Limits(max_concurrency=2)) as (
        _,
        embedder,
    ):
        expected_start = 0
        async for start, block in embedder.stream(corpus(), window=3):
            assert start == expected_start
            assert read <= start + len(block) + 3 * 10  # never more than a window ahead
            np.testing.assert_array_equal(block[0], want(f"line {start}"))
            expected_start += len(block)
        assert expected_start == 1000


async def test_stream_of_pairs_yields_ids() -> None:
    async def pairs() -> Any:
        for i in range(25):
            yield (f"id-{i}", f"text {i}")

    async with setup(batching=Batching(max_size=10)) as (_, embedder):
        seen: list[str] = []
        async for ids, block in embedder.stream(pairs()):
            assert len(ids) == len(block)
            np.testing.assert_array_equal(block[-1], want(f"text {ids[-1][3:]}"))
            seen += ids
        assert seen == [f"id-{i}" for i in range(25)]


async def test_stream_bad_item_names_its_position() -> None:
    async with setup() as (_, embedder):
        with pytest.raises(asyncembed.InvalidInputError, match=r"item\[2\]"):
            async for _ in embedder.stream(["a", "b", "", "d"]):
                pass


async def test_lifecycle_errors_and_repr() -> None:
    async with LocalServer(dimensions=DIMS) as server:
        embedder = Embedder(MODEL, base_url=server.base_url, api_key="sk-secret-123")
        assert "state=UNOPENED" in repr(embedder)
        async with embedder:
            assert "state=OPENED" in repr(embedder)
            await embedder.embed("x")
        assert "state=CLOSED" in repr(embedder)
        assert "sk-secret" not in repr(embedder)
        with pytest.raises(asyncembed.EmbedderClosedError, match="closed"):
            await embedder.embed("x")
        with pytest.raises(RuntimeError):
            async with embedder:
                pass


async def test_aclose_sends_what_is_queued_or_fails_it_on_request() -> None:
    async with LocalServer(dimensions=DIMS) as server:
        async with Embedder(
            MODEL, base_url=server.base_url, batching=Batching(max_wait=60.0)
        ) as embedder:
            async with anyio.create_task_group() as tg:
                results: list[Any] = []

                async def call() -> None:
                    results.append(await embedder.embed("queued"))

                tg.start_soon(call)
                await anyio.lowlevel.checkpoint()
                await embedder.aclose()
            assert len(results) == 1 and server.requests_count == 1

        async with Embedder(
            MODEL, base_url=server.base_url, batching=Batching(max_wait=60.0)
        ) as embedder:
            async with anyio.create_task_group() as tg:
                errors: list[BaseException] = []

                async def failing() -> None:
                    try:
                        await embedder.embed("dropped")
                    except asyncembed.EmbedderClosedError as exc:
                        errors.append(exc)

                tg.start_soon(failing)
                await anyio.lowlevel.checkpoint()
                await embedder.aclose(cancel_pending=True)
            assert len(errors) == 1 and server.requests_count == 1


async def test_caller_owned_session_stays_open() -> None:
    import aiohttp

    async with LocalServer(dimensions=DIMS) as server, aiohttp.ClientSession() as session:
        async with Embedder(MODEL, base_url=server.base_url, session=session) as embedder:
            await embedder.embed("x")
        assert not session.closed


async def test_per_call_timeout() -> None:
    async with setup(server_kw={"latency": 5.0}) as (_, embedder):
        with pytest.raises(asyncembed.APITimeoutError) as info:
            await embedder.embed("slow", timeout=0.05)
        assert isinstance(info.value, TimeoutError)
        with pytest.raises(asyncembed.APITimeoutError):
            await embedder.embed_many(["slow too"], timeout=0.05)
        await embedder.aclose(cancel_pending=True)


async def test_cache_answers_repeated_texts_across_embedders(tmp_path: Any) -> None:
    path = tmp_path / "cache.sqlite"
    async with LocalServer(dimensions=DIMS) as server:
        async with Embedder(MODEL, base_url=server.base_url, cache=path) as embedder:
            first = await embedder.embed_many(["a", "b", "c"])
            assert embedder.stats.cache_misses == 3
        async with Embedder(MODEL, base_url=server.base_url, cache=path) as embedder:
            again = await embedder.embed_many(["a", "b", "c", "d"])
            vector = await embedder.embed("b")
            stats = embedder.stats
        np.testing.assert_array_equal(again[:3], first)
        np.testing.assert_array_equal(again[3], want("d"))
        np.testing.assert_array_equal(vector, want("b"))
        assert (stats.cache_hits, stats.cache_misses) == (4, 1)
        assert server.inputs_count == 4  # a, b, c once, then d
        async with Embedder(MODEL, base_url=server.base_url, cache=path, dimensions=8) as other:
            await other.embed("a")  # another dimension count is another key
        assert server.inputs_count == 5


async def test_token_estimate_calibrates_from_usage() -> None:
    # The server counts len(text) // 4 tokens; start from a wrong guess of 1 char/token.
    async with setup(batching=Batching(chars_per_token=1.0)) as (_, embedder):
        for i in range(20):
            await embedder.embed_many([f"{'word ' * 40}{i}-{j}" for j in range(10)])
        assert 3.0 < embedder.stats.chars_per_token <= 4.5


async def test_stats_show_requests_waiting_for_a_slot() -> None:
    limits = Limits(max_concurrency=1)
    async with setup(server_kw={"latency": 0.05}, limits=limits, batching=Batching(max_size=1)) as (
        server,
        embedder,
    ):
        async with anyio.create_task_group() as tg:
            tg.start_soon(embedder.embed_many, ["a", "b", "c"])
            await wait_until(lambda: server.stats.in_flight == 1)
            stats = embedder.stats
            assert (stats.in_flight, stats.waiting) == (1, 2)
        assert embedder.stats.waiting == 0


async def test_flush_when_idle_skips_the_window_for_a_lone_call() -> None:
    clock = FakeClock()
    batching = Batching(max_wait=60.0, flush_when_idle=True, max_size=100)
    async with setup(batching=batching, clock=clock) as (server, embedder):
        vector = await embedder.embed("alone")  # would wait 60 s (virtual) without it
        np.testing.assert_array_equal(vector, want("alone"))
        assert clock.sleeps == []
        # A burst started in one tick still shares requests.
        async with anyio.create_task_group() as tg:
            for i in range(250):
                tg.start_soon(embedder.embed, f"burst {i}")
        assert [r.n_inputs for r in server.requests] == [1, 100, 100, 50]


async def test_flush_when_idle_still_batches_while_a_request_is_in_flight() -> None:
    batching = Batching(max_wait=0.01, flush_when_idle=True)
    async with setup(server_kw={"latency": 0.05}, batching=batching) as (server, embedder):
        async with anyio.create_task_group() as tg:
            tg.start_soon(embedder.embed, "first")  # idle: sent at once, stays in flight
            await wait_until(lambda: server.stats.in_flight == 1)
            for i in range(20):
                tg.start_soon(embedder.embed, f"later {i}")
        assert [r.n_inputs for r in server.requests] == [1, 20]


async def test_embed_many_splits_by_max_tokens_too() -> None:
    batching = Batching(max_size=100, max_tokens=100, chars_per_token=4.0)
    async with setup(batching=batching) as (server, embedder):
        texts = ["x" * 160 + str(i) for i in range(5)]  # ~41 estimated tokens each
        texts.insert(2, "short")
        matrix = await embedder.embed_many(texts)
        np.testing.assert_array_equal(matrix[2], want("short"))
        # Estimates 41, 41, 2, 41, 41, 41 tokens: greedy runs of at most 100.
        assert sorted(r.n_inputs for r in server.requests) == [1, 2, 3]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"model": ""}, "model must be a non-empty string"),
        ({"model": "m", "encoding_format": "hex"}, "encoding_format must be 'base64' or 'float'"),
        ({"model": "m", "dimensions": 0}, "dimensions must be a positive int"),
        ({"model": "m", "base_url": "ftp://x.invalid"}, "http"),
    ],
)
def test_constructor_arguments_are_checked(kwargs: dict[str, Any], message: str) -> None:
    model = kwargs.pop("model")
    with pytest.raises(ValueError, match=message):
        Embedder(model, **kwargs)
