"""Chaos: the public client against the independent adversary server (tests/adversary.py).

Every delivered vector is compared exactly to the server's deterministic vector; a caller
either gets its own vector or an exception, and nobody hangs. Request counts are compared
with a fault-free run of the same workload, measured in the same test.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import pytest
from adversary import RETRYABLE_MIX, Adversary

import asyncembed

pytestmark = pytest.mark.anyio

MODEL = "test/chaos"
N_CHAOS = 20_000
BATCH = 32
STALL = 2.0  # server-side; longer than the client's request timeout below
REQUEST_TIMEOUT = 0.75
LOST_AFTER = 25.0  # a caller not done by then counts as lost


def texts_for(tag: str, n: int) -> list[str]:
    return [f"{tag} text {i}: " + "word " * (i % 7) for i in range(n)]


def make_embedder(adv: Adversary, **kw: Any) -> asyncembed.Embedder:
    kw.setdefault("batching", asyncembed.Batching(max_size=BATCH))
    kw.setdefault(
        "retry", asyncembed.Retry(attempts=10, initial_delay=0.001, max_delay=0.01, timeout=30.0)
    )
    kw.setdefault("timeouts", asyncembed.Timeouts(request=REQUEST_TIMEOUT))
    return asyncembed.Embedder(MODEL, base_url=adv.base_url, **kw)


@dataclass
class Tally:
    """What happened to each caller."""

    ok: int = 0
    wrong: int = 0
    lost: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    widths: Counter[int] = field(default_factory=Counter)

    @property
    def n_failed(self) -> int:
        return sum(self.failed.values())


async def run_callers(
    calls: Sequence[Callable[[], Awaitable[Any]]], timeout: float = LOST_AFTER
) -> list[Any]:
    """Run every call concurrently; a call still running after ``timeout`` is lost."""
    tasks = [asyncio.ensure_future(call()) for call in calls]
    _, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    results: list[Any] = []
    for task in tasks:
        if task in pending or task.cancelled():
            results.append(LOST)
        elif task.exception() is not None:
            results.append(task.exception())
        else:
            results.append(task.result())
    return results


LOST = object()


def describe(result: Any) -> str:
    if result is LOST:
        return "lost (still waiting, cancelled)"
    if isinstance(result, BaseException):
        return repr(result)
    return f"a vector of shape {getattr(result, 'shape', '?')}"


def tally_vectors(results: Sequence[Any], expected: Sequence[np.ndarray], tally: Tally) -> None:
    for got, want in zip(results, expected, strict=True):
        if got is LOST:
            tally.lost += 1
        elif isinstance(got, BaseException):
            tally.failed[type(got).__name__] += 1
        else:
            tally.widths[got.shape[-1]] += 1
            if got.dtype == np.float32 and np.array_equal(got, want):
                tally.ok += 1
            else:
                tally.wrong += 1


def summary(
    label: str, tally: Tally, adv: Adversary, baseline: int | None = None, **extra: Any
) -> str:
    parts = [
        f"{label}: ok={tally.ok} wrong={tally.wrong} lost={tally.lost} "
        f"failed={tally.n_failed} {dict(tally.failed)} widths={dict(tally.widths)}",
        f"requests={adv.requests} statuses={dict(adv.statuses)} faults={dict(adv.faults)}",
    ]
    if baseline is not None:
        parts.append(f"fault-free requests={baseline} ratio={adv.requests / baseline:.3f}")
    parts.extend(f"{k}={v}" for k, v in extra.items())
    return "; ".join(parts)


# -- 20,000 texts at a 25% combined fault rate -------------------------------------------------


async def embed_one_by_one(adv: Adversary, texts: list[str]) -> tuple[Tally, float]:
    started = time.monotonic()
    async with make_embedder(adv) as embedder:
        results = await run_callers([partial(embedder.embed, t) for t in texts])
    tally = Tally()
    tally_vectors(results, [adv.vector(MODEL, t) for t in texts], tally)
    return tally, time.monotonic() - started


async def embed_in_lists(adv: Adversary, texts: list[str], per_call: int) -> tuple[Tally, float]:
    started = time.monotonic()
    chunks = [texts[i : i + per_call] for i in range(0, len(texts), per_call)]
    async with make_embedder(adv) as embedder:
        results = await run_callers([partial(embedder.embed_many, c) for c in chunks])
    tally = Tally()
    for got, chunk in zip(results, chunks, strict=True):
        if got is LOST or isinstance(got, BaseException):
            tally_vectors([got] * len(chunk), [adv.vector(MODEL, t) for t in chunk], tally)
        else:
            tally_vectors(list(got), [adv.vector(MODEL, t) for t in chunk], tally)
    return tally, time.monotonic() - started


def chaos_server(seed: int) -> Adversary:
    """25% of requests fail, spread over the retryable mix; 429s ask for 0.05 s."""
    return Adversary(
        fault_rate=0.25,
        kinds=RETRYABLE_MIX,
        seed=seed,
        retry_after=0.05,
        stall=STALL,
        record_inputs=False,
    )


async def test_20k_concurrent_embed_calls_at_25_percent_faults() -> None:
    texts = texts_for("embed", N_CHAOS)
    async with Adversary(record_inputs=False) as clean:
        clean_tally, clean_time = await embed_one_by_one(clean, texts)
    assert clean_tally.ok == N_CHAOS, summary("fault-free", clean_tally, clean)
    async with chaos_server(seed=1) as adv:
        tally, took = await embed_one_by_one(adv, texts)
    report = summary(
        "embed() chaos", tally, adv, clean.requests, seconds=f"{took:.1f} (clean {clean_time:.1f})"
    )
    assert tally.wrong == 0 and tally.lost == 0 and tally.n_failed == 0, report
    assert tally.ok == N_CHAOS, report
    assert adv.requests <= 1.4 * clean.requests, report


async def test_20k_texts_through_embed_many_at_25_percent_faults() -> None:
    texts = texts_for("many", N_CHAOS)
    per_call = 1000  # 20 concurrent embed_many() callers
    async with Adversary(record_inputs=False) as clean:
        clean_tally, clean_time = await embed_in_lists(clean, texts, per_call)
    assert clean_tally.ok == N_CHAOS, summary("fault-free", clean_tally, clean)
    async with chaos_server(seed=2) as adv:
        tally, took = await embed_in_lists(adv, texts, per_call)
    failed_calls = tally.n_failed // per_call
    report = summary(
        "embed_many() chaos",
        tally,
        adv,
        clean.requests,
        failed_calls=f"{failed_calls} of {N_CHAOS // per_call}",
        seconds=f"{took:.1f} (clean {clean_time:.1f})",
    )
    assert tally.wrong == 0 and tally.lost == 0 and tally.n_failed == 0, report
    assert adv.requests <= 1.4 * clean.requests, report


# -- poison texts in a coalesced batch ---------------------------------------------------------


async def test_four_poison_texts_in_a_coalesced_batch_of_256_fail_alone() -> None:
    texts = texts_for("poison", 256)
    positions = [17, 93, 150, 222]  # one in each quarter of the batch
    poison = {texts[i] for i in positions}
    async with Adversary(poison=poison) as adv:
        async with make_embedder(adv, batching=asyncembed.Batching(max_size=256)) as embedder:
            results = await run_callers([partial(embedder.embed, t) for t in texts], 15.0)
    first = adv.log[0].n_inputs if adv.log else 0
    failed = {i for i, r in enumerate(results) if isinstance(r, BaseException)}
    kinds = Counter(type(r).__name__ for r in results if isinstance(r, BaseException))
    tally = Tally()
    innocent = [i for i in range(256) if i not in positions]
    tally_vectors(
        [results[i] for i in innocent], [adv.vector(MODEL, texts[i]) for i in innocent], tally
    )
    report = summary(
        "poison", tally, adv, first_request_inputs=first, failed_positions=sorted(failed)[:12]
    )
    assert first == 256, report  # one coalesced batch
    assert failed == set(positions), report
    assert all(isinstance(results[i], asyncembed.BadRequestError) for i in positions), (
        f"{kinds}; {report}"
    )
    assert tally.ok == 252 and tally.wrong == 0 and tally.lost == 0, report


# -- a batch size cap that must be learned -----------------------------------------------------


@pytest.mark.parametrize("status", [413, 422])
async def test_a_32_item_size_cap_is_learned(status: int) -> None:
    warm = texts_for(f"warm{status}", 512)
    big = texts_for(f"big{status}", 10_000)
    burst = texts_for(f"burst{status}", 4_000)
    async with Adversary(size_cap=32, size_cap_status=status, record_inputs=False) as adv:
        async with make_embedder(adv, batching=asyncembed.Batching(max_size=256)) as embedder:
            warm_results = await run_callers([partial(embedder.embed, t) for t in warm], 10.0)
            warm_tally = Tally()
            tally_vectors(warm_results, [adv.vector(MODEL, t) for t in warm], warm_tally)
            warm_counters = adv.reset_counters()
            try:
                matrix: Any = await asyncio.wait_for(embedder.embed_many(big), 10.0)
            except Exception as exc:
                matrix = exc
            big_counters = adv.reset_counters()
            burst_results = await run_callers([partial(embedder.embed, t) for t in burst], 10.0)
            burst_counters = adv.counters
    big_tally = Tally()
    if isinstance(matrix, BaseException):
        big_tally.failed[type(matrix).__name__] = len(big)
    else:
        tally_vectors(list(matrix), [adv.vector(MODEL, t) for t in big], big_tally)
    burst_tally = Tally()
    tally_vectors(burst_results, [adv.vector(MODEL, t) for t in burst], burst_tally)

    def line(label: str, tally: Tally, counters: Any, n: int) -> str:
        return (
            f"{label}: ok={tally.ok}/{n} failed={dict(tally.failed)} wrong={tally.wrong} "
            f"lost={tally.lost} requests={counters.requests} (min {math.ceil(n / 32)}) "
            f"statuses={dict(counters.statuses)} max_batch={max(counters.batch_sizes, default=0)}"
        )

    report = " | ".join(
        [
            line("warm-up embed()", warm_tally, warm_counters, len(warm)),
            line("embed_many", big_tally, big_counters, len(big)),
            line("burst embed()", burst_tally, burst_counters, len(burst)),
        ]
    )
    assert warm_tally.ok == len(warm), report
    assert big_tally.ok == len(big), report
    assert burst_tally.ok == len(burst), report
    assert big_counters.requests <= 1.1 * math.ceil(len(big) / 32), report
    assert burst_counters.requests <= 1.1 * math.ceil(len(burst) / 32), report


# -- an hour-long Retry-After ------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["429_long", "429_long_date"])
async def test_an_hour_long_retry_after_fails_fast_and_later_callers_succeed(kind: str) -> None:
    async with Adversary(script=[kind]) as adv:
        async with make_embedder(adv, retry=asyncembed.Retry(attempts=10)) as embedder:
            started = time.monotonic()
            first = (await run_callers([lambda: embedder.embed("first")], 5.0))[0]
            first_took = time.monotonic() - started
            started = time.monotonic()
            later = (await run_callers([lambda: embedder.embed("later")], 5.0))[0]
            later_took = time.monotonic() - started
    report = (
        f"first: {describe(first)} after {first_took:.2f}s; "
        f"later: {describe(later)} after {later_took:.2f}s; server statuses={dict(adv.statuses)}"
    )
    assert isinstance(first, asyncembed.RateLimitError), report
    assert first_took < 2.0, report
    assert first.retry_after is not None and first.retry_after > 3000, report
    assert isinstance(later, np.ndarray), report
    np.testing.assert_array_equal(later, adv.vector(MODEL, "later"))
    assert later_took < 2.0, report


# -- a response of another width is never delivered --------------------------------------------


async def test_wrong_width_responses_are_never_delivered_once_the_width_is_known() -> None:
    texts = texts_for("width", 3_000)
    async with Adversary(seed=3) as adv:
        async with make_embedder(adv) as embedder:
            await embedder.embed("warm-up")  # a clean answer fixes the width
            adv.set_faults(0.2, ["wrong_width"])
            try:
                matrix: Any = await asyncio.wait_for(embedder.embed_many(texts), 15.0)
            except Exception as exc:
                matrix = exc
    report = f"{matrix!r}"[:200] + f"; statuses={dict(adv.statuses)} faults={dict(adv.faults)}"
    assert isinstance(matrix, np.ndarray), report
    assert matrix.shape == (len(texts), 32), report
    np.testing.assert_array_equal(matrix, adv.matrix(MODEL, texts))


async def test_a_first_answer_of_the_wrong_width_is_refused_with_dimensions() -> None:
    texts = texts_for("dims", 320)
    async with Adversary(script=["wrong_width"]) as adv:
        async with make_embedder(
            adv, dimensions=32, limits=asyncembed.Limits(max_concurrency=1)
        ) as embedder:
            matrix = await asyncio.wait_for(embedder.embed_many(texts), 10.0)
    assert matrix.shape == (320, 32)
    np.testing.assert_array_equal(matrix, adv.matrix(MODEL, texts, 32))
    assert adv.faults == {"wrong_width": 1}


async def test_a_first_answer_of_the_wrong_width_never_mixes_widths() -> None:
    # Without dimensions=, the first good answer fixes the width (pass dimensions= to rule
    # it). Whatever it was, no later call may get vectors of another width.
    texts = texts_for("fallback", 320)
    async with Adversary(script=["wrong_width"]) as adv:
        retry = asyncembed.Retry(attempts=3, initial_delay=0.001, max_delay=0.01)
        async with make_embedder(adv, retry=retry) as embedder:
            results: list[Any] = []
            for call in (embedder.embed_many(texts), embedder.embed("later 1")):
                try:
                    results.append(await asyncio.wait_for(call, 10.0))
                except asyncembed.AsyncEmbedError as exc:
                    results.append(exc)
    arrays = [r.vectors if isinstance(r, asyncembed.PartialResultError) else r for r in results]
    widths = {a.shape[-1] for a in arrays if isinstance(a, np.ndarray)}
    assert len(widths) <= 1, widths
    allowed = np.ndarray | asyncembed.ProtocolError | asyncembed.PartialResultError
    assert all(isinstance(r, allowed) for r in results), results


# -- legal oddities cost nothing ---------------------------------------------------------------


async def test_shuffled_and_base64_as_float_answers_are_accepted_as_they_are() -> None:
    texts = texts_for("legal", 5_000)
    async with Adversary(seed=4, fault_rate=0.5, kinds=["shuffled", "base64_as_float"]) as adv:
        async with make_embedder(adv) as embedder:
            matrix = await asyncio.wait_for(embedder.embed_many(texts), 15.0)
            encoding = embedder.stats.encoding_format
    np.testing.assert_array_equal(matrix, adv.matrix(MODEL, texts))
    minimum = math.ceil(len(texts) / BATCH)
    assert adv.requests <= minimum + 1, (
        f"requests={adv.requests} (min {minimum}) faults={dict(adv.faults)} encoding={encoding}"
    )
