"""The spending cap (``Limits.max_cost``) against the billed total the server reports.

The cap is enforced when a request is granted its slot, counting what is in flight, so
the billed total may pass the cap only by the estimates' error on the requests in flight
(one request before the first answer gives a price). Each test checks the server's own
billed cost against that bound, and that every caller not sent got BudgetExceededError.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import numpy as np
import pytest

import asyncembed
from asyncembed import Batching, BudgetExceededError, Embedder, Limits, PartialResultError, Retry
from asyncembed._cli import main
from asyncembed.testing import Faults, LocalServer, expected_vector

MODEL = "test/embed-small"
DIMS = 8
PRICE = 1e-4  # per token
CAP = 0.10
CONCURRENCY = 4
BATCH = 64

pytestmark = pytest.mark.anyio


def texts(n: int) -> list[str]:
    return [f"sentence number {i} about the sea" for i in range(n)]


def in_flight_bound(server: LocalServer) -> float:
    """What the requests in flight may add past the cap: the dearest request, times the slots."""
    dearest = max(r.tokens for r in server.requests) * PRICE
    return CONCURRENCY * dearest


def check_billed(server: LocalServer, cap: float = CAP) -> float:
    billed = server.stats.cost
    assert billed <= cap + in_flight_bound(server), (billed, cap)
    return billed


def embedder(server: LocalServer, cap: float = CAP) -> Embedder:
    return Embedder(
        MODEL,
        base_url=server.base_url,
        batching=Batching(max_size=BATCH),
        limits=Limits(max_concurrency=CONCURRENCY, max_cost=cap),
    )


async def test_embed_many_stops_at_the_cap() -> None:
    corpus = texts(2_000)
    async with LocalServer(dimensions=DIMS, price_per_token=PRICE) as server:
        async with embedder(server) as client:
            with pytest.raises(PartialResultError) as info:
                await client.embed_many(corpus)  # what was paid for is kept
            kept = [i for i in range(len(corpus)) if i not in info.value.errors]
            assert all(isinstance(e, BudgetExceededError) for e in info.value.errors.values())
            assert len(kept) == server.stats.embedded
            np.testing.assert_array_equal(
                info.value.vectors[kept], [expected_vector(MODEL, corpus[i], DIMS) for i in kept]
            )
            uncapped = sum(len(t) for t in corpus)  # far more than the cap would allow
            assert server.stats.cost < CAP * 2 < uncapped * PRICE / 4
            assert check_billed(server) > CAP / 2  # the budget was used, not refused early
            assert client.stats.cost == pytest.approx(server.stats.cost)


async def test_coalesced_embed_calls_stop_at_the_cap() -> None:
    corpus = texts(1_000)
    got: dict[int, np.ndarray] = {}
    refused: list[int] = []

    async def call(client: Embedder, i: int) -> None:
        try:
            got[i] = await client.embed(corpus[i])
        except BudgetExceededError:
            refused.append(i)

    async with LocalServer(dimensions=DIMS, price_per_token=PRICE) as server:
        async with embedder(server, cap=0.02) as client, anyio.create_task_group() as tg:
            for i in range(len(corpus)):
                tg.start_soon(call, client, i)
        check_billed(server, cap=0.02)
        assert server.stats.embedded == len(got)  # every vector billed was delivered
    assert len(got) + len(refused) == len(corpus) and refused and got
    for i, vector in got.items():
        np.testing.assert_array_equal(vector, expected_vector(MODEL, corpus[i], DIMS))


async def test_stream_stops_at_the_cap() -> None:
    corpus = texts(2_000)
    rows = 0
    async with LocalServer(dimensions=DIMS, price_per_token=PRICE) as server:
        async with embedder(server) as client:
            with pytest.raises((BudgetExceededError, PartialResultError)) as info:
                async for _start, block in client.stream(corpus):
                    rows += len(block)
            if isinstance(info.value, PartialResultError):
                assert all(isinstance(e, BudgetExceededError) for e in info.value.errors.values())
        check_billed(server)
        assert rows <= server.stats.embedded


async def test_first_request_flies_alone_until_the_price_is_known() -> None:
    async with LocalServer(dimensions=DIMS, price_per_token=PRICE, latency=0.01) as server:
        async with embedder(server, cap=1e-9) as client:
            with pytest.raises(PartialResultError) as info:
                await client.embed_many(texts(1_000))
            assert all(isinstance(e, BudgetExceededError) for e in info.value.errors.values())
        assert server.requests_count == 1 and server.max_concurrent == 1


async def test_a_request_that_cannot_fit_is_refused_before_it_is_sent() -> None:
    async with LocalServer(dimensions=DIMS, price_per_token=PRICE) as server:
        async with embedder(server, cap=0.01) as client:
            await client.embed("a short first text")  # learns the price
            with pytest.raises(BudgetExceededError, match="next request"):
                await client.embed_many([f"a much longer text {i} " * 50 for i in range(BATCH)])
        assert server.requests_count == 1


async def test_cli_max_cost(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "in.txt"
    source.write_text("\n".join(texts(2_000)) + "\n")
    async with LocalServer(dimensions=DIMS, price_per_token=PRICE) as server:
        argv = ["embed", str(source), "-o", str(tmp_path / "o.npy"), "--model", MODEL]
        argv += ["--base-url", server.base_url, "--quiet", "--max-cost", str(CAP)]
        argv += ["--batch-size", str(BATCH), "--concurrency", str(CONCURRENCY)]
        assert await anyio.to_thread.run_sync(main, argv) == 1
        check_billed(server)
    err = capsys.readouterr().err
    assert "spending cap" in err and "Traceback" not in err


def test_cli_max_cost_must_be_a_number(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["embed", "in.txt", "-o", "o.npy", "--model", MODEL, "--max-cost", "-1"]) == 2
    assert "--max-cost" in capsys.readouterr().err


def test_budget_error_is_exported() -> None:
    assert asyncembed.BudgetExceededError is BudgetExceededError


async def test_refused_answers_that_were_billed_count_against_the_cap() -> None:
    faults = Faults(rates={"nan": 0.8}, seed=3)  # billed by the server, refused by us
    async with LocalServer(dimensions=DIMS, price_per_token=PRICE, faults=faults) as server:
        async with Embedder(
            MODEL,
            base_url=server.base_url,
            batching=Batching(max_size=BATCH),
            limits=Limits(max_concurrency=1, max_cost=CAP),
            retry=Retry(attempts=10, initial_delay=0.0),
        ) as client:
            with pytest.raises((BudgetExceededError, PartialResultError)):
                await client.embed_many(texts(2_000))
        assert server.stats.cost <= CAP + max(r.tokens for r in server.requests) * PRICE
        assert client.stats.cost == pytest.approx(server.stats.cost)
