"""Retries and fault tolerance against the local server's fault injection."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anyio
import anyio.lowlevel
import numpy as np
import pytest

import asyncembed
from asyncembed import Batching, Embedder, Limits, Retry
from asyncembed.testing import (
    FakeClock,
    Fault,
    Faults,
    FaultSpec,
    LocalServer,
    expected_vector,
    no_backoff,
    wait_until,
)

pytestmark = pytest.mark.anyio

DIMS = 8
MODEL = "test/faulty"
KEY = "sk-or-v1-supersecret-0123456789"


def want(text: str) -> np.ndarray:
    return expected_vector(MODEL, text, DIMS)


@contextlib.asynccontextmanager
async def setup(
    *, server_kw: dict[str, Any] | None = None, **kw: Any
) -> AsyncIterator[tuple[LocalServer, Embedder, FakeClock]]:
    clock = kw.pop("clock", None) or FakeClock()
    kw.setdefault("retry", no_backoff())
    async with LocalServer(dimensions=DIMS, clock=clock, **(server_kw or {})) as server:
        async with Embedder(MODEL, base_url=server.base_url, clock=clock, **kw) as embedder:
            yield server, embedder, clock


@pytest.mark.parametrize(
    "fault",
    [
        "500",
        "502",
        "html_502",
        "503",
        "504",
        "524",
        "529",
        "408",
        "error_200",
        "truncated",
        "reset",
        "bad_index",
        "nan",
        "429",
    ],
)
async def test_transient_faults_are_retried_until_success(fault: str) -> None:
    async with setup(server_kw={"script": [fault]}) as (server, embedder, _):
        matrix = await embedder.embed_many(["one", "two", "three"])
        np.testing.assert_array_equal(matrix[2], want("three"))
        assert server.requests_count == 2
        stats = embedder.stats
        assert stats.retries == 1 and stats.errors == 1 and stats.inputs == 3


async def test_shuffled_data_is_put_back_in_order_without_a_retry() -> None:
    async with setup(server_kw={"script": ["shuffled"]}) as (server, embedder, _):
        texts = [f"t{i}" for i in range(50)]
        matrix = await embedder.embed_many(texts)
        for row, text in zip(matrix, texts, strict=True):
            np.testing.assert_array_equal(row, want(text))
        assert server.requests_count == 1


async def test_protocol_errors_spend_the_normal_retry_budget() -> None:
    script = ["bad_index", "error_200", "bad_index", "nan"]
    async with setup(server_kw={"script": script}) as (server, embedder, _):
        matrix = await embedder.embed_many(["a", "b"])  # four bad answers, then a good one
        np.testing.assert_array_equal(matrix[1], want("b"))
        assert server.requests_count == 5
    retry = Retry(attempts=3)
    async with setup(server_kw={"script": ["bad_index"] * 3}, retry=retry) as (server, e, _):
        with pytest.raises(asyncembed.ProtocolError, match="exactly once"):
            await e.embed_many(["a", "b"])
        assert server.requests_count == 3  # the attempts, like a 502


@pytest.mark.parametrize(
    ("status", "cls", "hint"),
    [
        (401, asyncembed.AuthenticationError, "API key"),
        (402, asyncembed.PaymentRequiredError, "credits"),
        (403, asyncembed.PermissionDeniedError, "403"),
        (404, asyncembed.NotFoundError, "404"),
    ],
)
async def test_fatal_statuses_fail_fast_with_one_request(status: int, cls: type, hint: str) -> None:
    async with setup(server_kw={"script": [status]}) as (server, embedder, _):
        with pytest.raises(cls, match=hint):
            await embedder.embed_many([f"x{i}" for i in range(40)])
        assert server.requests_count == 1


async def test_wrong_key_is_401_and_never_shown() -> None:
    async with setup(server_kw={"api_key": "the-right-key"}, api_key=KEY) as (server, e, _):
        with pytest.raises(asyncembed.AuthenticationError) as info:
            await e.embed("hello")
        assert KEY not in str(info.value) and KEY not in repr(info.value)
        assert server.requests_count == 1


async def test_one_bad_input_among_255_good_ones_fails_alone() -> None:
    texts = [f"good {i}" for i in range(256)]
    texts[137] = "poison"
    kw: dict[str, Any] = {
        "server_kw": {"reject_inputs": {"poison"}},
        "batching": Batching(max_size=256),
    }
    async with setup(**kw) as (server, embedder, _):
        results: dict[int, Any] = {}

        async def call(i: int) -> None:
            try:
                results[i] = await embedder.embed(texts[i])
            except asyncembed.BadRequestError as exc:
                results[i] = exc

        async with anyio.create_task_group() as tg:
            for i in range(256):
                tg.start_soon(call, i)
        assert isinstance(results.pop(137), asyncembed.BadRequestError)
        for i, vector in results.items():
            np.testing.assert_array_equal(vector, want(texts[i]))
        # Bisection: the first request, then two halves per level down to the bad one.
        assert server.requests_count <= 1 + 2 * 8
        assert embedder.stats.splits == 8


async def test_embed_many_names_the_bad_input() -> None:
    kw: dict[str, Any] = {"server_kw": {"reject_inputs": {"poison"}}}
    async with setup(**kw) as (_, embedder, _clock):
        with pytest.raises(asyncembed.PartialResultError) as info:
            await embedder.embed_many(["fine", "also fine", "poison", "ok"])
        assert info.value.failed == [2]
        assert "(input 2)" in info.value.errors[2].__notes__


async def test_payload_too_large_is_bisected() -> None:
    async with setup(server_kw={"script": [413]}) as (server, embedder, _):
        matrix = await embedder.embed_many(["a", "b", "c", "d"])
        assert matrix.shape == (4, DIMS)
        assert server.requests_count == 3 and embedder.stats.splits == 1


async def test_429_pauses_all_dispatch_for_the_servers_delay() -> None:
    limits = Limits(max_concurrency=4)
    kw: dict[str, Any] = {
        "server_kw": {"script": [Fault.rate_limit(retry_after=1.0)]},
        "limits": limits,
    }
    async with setup(batching=Batching(max_size=5), **kw) as (server, embedder, clock):
        await embedder.embed_many([f"text {i}" for i in range(60)])
        records = server.requests
        limited = next(r for r in records if r.status == 429)
        later = [r.arrived for r in records if r.arrived > limited.arrived]
        assert later, "requests were sent after the 429"
        # Nothing was sent during the pause; the in-flight ones had left before it.
        assert min(later) >= limited.arrived + 1.0
        assert 1.0 in clock.sleeps
        assert embedder.stats.rate_limited == 1
        assert embedder.stats.concurrency < 4 or embedder.stats.requests > 12


async def test_retry_after_longer_than_the_budget_fails_fast() -> None:
    retry = Retry(attempts=5, timeout=30.0)
    kw: dict[str, Any] = {
        "server_kw": {"script": [Fault.rate_limit(retry_after=120)]},
        "retry": retry,
    }
    async with setup(**kw) as (server, embedder, clock):
        with pytest.raises(asyncembed.RateLimitError) as info:
            await embedder.embed("x")
        assert info.value.retry_after == 120
        assert server.requests_count == 1 and clock.sleeps == []  # no retry sleep at all


async def test_no_retry_sleep_ends_past_the_callers_timeout() -> None:
    kw: dict[str, Any] = {"server_kw": {"script": [Fault.rate_limit(retry_after=10)]}}
    async with setup(**kw) as (server, embedder, clock):
        with pytest.raises(asyncembed.RateLimitError):
            await embedder.embed("x", timeout=5.0)
        assert 10 not in clock.sleeps and server.requests_count == 1


async def test_attempts_bound_the_retries() -> None:
    async with setup(server_kw={"script": ["503"] * 10}, retry=no_backoff(3)) as (server, e, _):
        with pytest.raises(asyncembed.ServiceUnavailableError):
            await e.embed("x")
        assert server.requests_count == 3 and e.stats.retries == 2


async def test_backoff_uses_full_jitter_within_the_cap() -> None:
    retry = Retry(attempts=6, initial_delay=1.0, max_delay=4.0)
    async with setup(server_kw={"script": ["502"] * 5}, retry=retry) as (_, embedder, clock):
        await embedder.embed("x")
        waits = clock.sleeps  # a lone call is sent at once: only retry sleeps
        caps = [1.0, 2.0, 4.0, 4.0, 4.0]
        assert len(waits) == 5 and all(0 <= w <= c for w, c in zip(waits, caps, strict=True))


@pytest.mark.parametrize("mode", ["empty_data", "float"])
async def test_model_without_base64_falls_back_to_float_for_good(mode: str) -> None:
    kw: dict[str, Any] = {"base64_unsupported_models": {MODEL}, "base64_unsupported_mode": mode}
    async with setup(server_kw=kw) as (server, embedder, _):
        first = await embedder.embed_many(["a", "b"])
        second = await embedder.embed("c")
        np.testing.assert_array_equal(first[1], want("b"))
        np.testing.assert_array_equal(second, want("c"))
        # Empty data is evidence only when repeated: one retry in base64 first. Float
        # arrays for base64 are kept as they are: nothing is resent.
        tried = ["base64", "base64", "float"] if mode == "empty_data" else ["base64"]
        assert [r.encoding_format for r in server.requests] == [*tried, "float"]
        assert embedder.stats.encoding_format == "float"


async def test_base64_ignored_once_also_switches() -> None:
    async with setup(server_kw={"script": ["base64_ignored"]}) as (server, embedder, _):
        np.testing.assert_array_equal(await embedder.embed("a"), want("a"))
        await embedder.embed("b")
        assert [r.encoding_format for r in server.requests] == ["base64", "float"]


async def test_connection_closed_by_the_server_is_retried() -> None:
    async with LocalServer(dimensions=DIMS, keepalive_timeout=0.05) as server:
        async with aiohttp.ClientSession() as session:
            async with Embedder(
                MODEL, base_url=server.base_url, session=session, retry=no_backoff()
            ) as embedder:
                await embedder.embed("first")
                connector: Any = session.connector
                # Wait (bounded) until the server has dropped the idle pooled connection.
                await wait_until(
                    lambda: (
                        not any(p.is_connected() for c in connector._conns.values() for p, _ in c)
                    )
                )
                server.script(["reset"])  # and a connection that dies mid-request
                np.testing.assert_array_equal(await embedder.embed("second"), want("second"))
                np.testing.assert_array_equal(await embedder.embed("third"), want("third"))


async def test_connection_refused_is_an_api_connection_error() -> None:
    async with LocalServer(dimensions=DIMS) as server:
        url = server.base_url
    async with Embedder(MODEL, base_url=url, retry=no_backoff(2), clock=FakeClock()) as e:
        with pytest.raises(asyncembed.APIConnectionError):
            await e.embed("x")
        assert e.stats.retries == 1


async def test_retries_are_logged_without_key_or_text(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="asyncembed")
    async with setup(server_kw={"script": ["503", "429"]}, api_key=KEY) as (_, embedder, _c):
        await embedder.embed("very private text")
    retries = [r for r in caplog.records if "retrying" in r.getMessage()]
    assert len(retries) == 2
    assert "503" in retries[0].getMessage() and "attempt 1" in retries[0].getMessage()
    for record in caplog.records:
        assert KEY not in record.getMessage() and "very private" not in record.getMessage()


async def test_key_never_appears_in_repr_stats_or_errors() -> None:
    async with setup(server_kw={"script": [500] * 3}, api_key=KEY, retry=no_backoff(2)) as (
        _,
        embedder,
        _c,
    ):
        with pytest.raises(asyncembed.InternalServerError) as info:
            await embedder.embed("x")
        for text in (
            repr(embedder),
            repr(embedder.stats),
            str(info.value),
            repr(info.value),
            repr(embedder._transport),
        ):
            assert KEY not in text


def test_key_is_not_sent_over_plain_http_to_another_host() -> None:
    with pytest.raises(ValueError, match="plain http"):
        Embedder(MODEL, base_url="http://example.invalid/api/v1", api_key=KEY)
    # Allowed: loopback, https, or an explicit opt-in (nothing is sent here).
    Embedder(MODEL, base_url="http://127.0.0.1:9/api/v1", api_key=KEY)
    Embedder(MODEL, base_url="http://localhost:9/api/v1", api_key=KEY)
    Embedder(MODEL, base_url="https://example.invalid/api/v1", api_key=KEY)
    Embedder(MODEL, base_url="http://example.invalid/v1", api_key=KEY, allow_insecure=True)


async def test_chaos_every_text_gets_its_vector_exactly_once() -> None:
    """20,000 texts through embed() and embed_many() with 20% of requests failing."""
    rates: dict[FaultSpec, float] = {
        Fault.rate_limit(retry_after=0.5): 0.03,
        "500": 0.03,
        "502": 0.03,
        "503": 0.03,
        "error_200": 0.02,
        "shuffled": 0.02,
        "truncated": 0.02,
        "reset": 0.02,
    }
    faults = Faults(rates=rates, seed=7)
    kw: dict[str, Any] = {
        "server_kw": {"faults": faults},
        "batching": Batching(max_size=100),
        "limits": Limits(max_concurrency=8),
        "retry": Retry(attempts=10, timeout=1e9, initial_delay=0.1, max_delay=2.0),
    }
    async with setup(**kw) as (server, embedder, _):
        singles = [f"single {i}" for i in range(10_000)]
        bulk = [f"bulk {i}" for i in range(10_000)]
        got: dict[int, np.ndarray] = {}
        calls = 0

        async def one(i: int) -> None:
            nonlocal calls
            vector = await embedder.embed(singles[i])
            calls += 1
            assert i not in got
            got[i] = vector

        async with anyio.create_task_group() as tg:
            for i in range(10_000):
                tg.start_soon(one, i)
            matrix = await embedder.embed_many(bulk)
        assert calls == 10_000
        for i, text in enumerate(singles):
            np.testing.assert_array_equal(got[i], want(text))
        np.testing.assert_array_equal(matrix, np.stack([want(t) for t in bulk]))
        stats = embedder.stats
        faulty = sum(1 for r in server.requests if r.fault not in (None, "shuffled"))
        assert faulty > 20  # the faults really happened
        assert stats.inputs == 20_000  # each text embedded once: no duplicate sends
        assert stats.requests == server.requests_count
        assert stats.retries == faulty  # every failed request was retried, nothing else
        # 200 batches at least; with 18% failing requests about 1.22 tries each.
        assert server.requests_count <= 200 * 1.5 + 20


async def test_time_queued_behind_our_own_limits_is_not_charged_to_the_retry_budget() -> None:
    # One slot, taken by a slow-to-fail request: the next waits 60 s (virtual) in line.
    limits = Limits(max_concurrency=1, requests_per_minute=1)
    retry = Retry(attempts=3, timeout=30.0, initial_delay=0.0, max_delay=0.0)
    kw: dict[str, Any] = {"server_kw": {"script": ["ok", "503"]}, "limits": limits, "retry": retry}
    async with setup(batching=Batching(max_size=1), **kw) as (server, embedder, clock):
        matrix = await embedder.embed_many(["first", "second"])
        assert matrix.shape == (2, DIMS)
        assert server.requests_count == 3  # the 503 was retried although 60 s had passed
        assert clock.now() - 1000.0 >= 60.0


async def test_a_fatal_error_while_bisecting_reaches_callers_as_itself() -> None:
    # 400 for the batch, then 401 for a half: callers get the AuthenticationError.
    kw: dict[str, Any] = {
        "server_kw": {"script": [400, 401, 401]},
        "batching": Batching(max_wait=10.0),
    }
    async with setup(**kw) as (_, embedder, _clock):
        errors: list[BaseException] = []

        async def call(text: str) -> None:
            try:
                await embedder.embed(text)
            except Exception as exc:
                errors.append(exc)

        async with anyio.create_task_group() as tg:
            for text in ("a", "b", "c", "d"):
                tg.start_soon(call, text)
            await anyio.lowlevel.checkpoint()
            embedder.flush()
        assert len(errors) == 4
        assert all(isinstance(e, asyncembed.AuthenticationError) for e in errors)


async def test_embed_many_timeout_bounds_retry_sleeps_too() -> None:
    kw: dict[str, Any] = {"server_kw": {"script": [Fault.rate_limit(retry_after=10)]}}
    async with setup(**kw) as (server, embedder, clock):
        with pytest.raises(asyncembed.RateLimitError):
            await embedder.embed_many(["a", "b"], timeout=5.0)
        assert 10 not in clock.sleeps and server.requests_count == 1


async def test_a_final_429_still_lowers_concurrency() -> None:
    kw: dict[str, Any] = {"server_kw": {"script": ["429"]}, "limits": Limits(max_concurrency=8)}
    async with setup(retry=no_backoff(1), **kw) as (_, embedder, _clock):
        with pytest.raises(asyncembed.RateLimitError):
            await embedder.embed("x")
        assert embedder.stats.concurrency == 4


async def test_a_429_without_retry_after_pauses_everyone_for_the_backoff() -> None:
    retry = Retry(attempts=3, initial_delay=2.0, max_delay=2.0)
    kw: dict[str, Any] = {"server_kw": {"script": [Fault.rate_limit(retry_after=None)]}}
    async with setup(retry=retry, **kw) as (server, embedder, clock):
        await embedder.embed("x")
        limited = next(r for r in server.requests if r.status == 429)
        backoff = clock.sleeps[-1]
        assert 0.0 <= backoff <= 2.0
        # The pause covers the same backoff for every other request, not just this one.
        left = limited.arrived + backoff - clock.now()
        assert embedder.stats.paused_for == pytest.approx(left)
        assert embedder.stats.rate_limited == 1 and embedder.stats.retries == 1


# -- compound faults (the rules in docs/guides/reliability.md) ---------------------------------


async def test_vectors_of_another_width_are_never_delivered() -> None:
    script = ["ok", "wrong_width", "wrong_width"]
    async with setup(server_kw={"script": script}) as (server, embedder, _):
        first = await embedder.embed("fixes the width")
        second = await embedder.embed("gets another width twice, then its own")
        blocks = [b async for _, b in embedder.stream([f"s{i}" for i in range(30)])]
    assert first.shape == second.shape == (DIMS,)
    np.testing.assert_array_equal(second, want("gets another width twice, then its own"))
    assert {b.shape[1] for b in blocks} == {DIMS}
    assert server.stats.faults["wrong_width"] == 2


async def test_a_short_answer_is_retried_and_is_no_reason_to_leave_base64() -> None:
    async with setup(server_kw={"script": ["missing_item"]}) as (server, embedder, _):
        matrix = await embedder.embed_many(["a", "b", "c"])
        np.testing.assert_array_equal(matrix[2], want("c"))
        assert [r.encoding_format for r in server.requests] == ["base64", "base64"]
        assert embedder.stats.encoding_format == "base64"


@pytest.mark.parametrize("as_date", [False, True], ids=["seconds", "http-date"])
async def test_an_hour_long_retry_after_fails_its_caller_at_once_and_pauses_nobody(
    as_date: bool,
) -> None:
    clock = FakeClock()
    hour = Fault.status(429, retry_after=3600, retry_after_date=as_date)
    async with LocalServer(dimensions=DIMS, script=[hour]) as server:
        async with Embedder(MODEL, base_url=server.base_url, clock=clock) as embedder:
            with pytest.raises(asyncembed.RateLimitError) as info:
                await embedder.embed("told to wait an hour")
            assert info.value.retry_after is not None and info.value.retry_after > 3000
            start = clock.now()
            np.testing.assert_array_equal(await embedder.embed("next"), want("next"))
            assert clock.now() - start < 1.0 and embedder.stats.requests == 2


async def test_a_caller_whose_deadline_ends_inside_a_pause_fails_at_once() -> None:
    retry = Retry(attempts=3, timeout=60.0)
    script = [Fault.rate_limit(retry_after=30.0)]
    async with LocalServer(dimensions=DIMS, script=script) as server:
        async with Embedder(MODEL, base_url=server.base_url, retry=retry) as e:
            async with anyio.create_task_group() as tg:
                tg.start_soon(e.embed, "waits out the 30 s pause")  # within its budget
                await wait_until(lambda: e.stats.retries == 1)
                with anyio.fail_after(2.0):  # it fails at once, not after 5 s
                    with pytest.raises(asyncembed.RateLimitError, match="paused") as info:
                        await e.embed("has only 5 s", timeout=5.0)
                assert info.value.retry_after is not None and info.value.retry_after > 20
                tg.cancel_scope.cancel()
