"""Coalescers without sockets: the same batch work behind each library's single-item call.

Config: ``lib`` (``floor``, ``aiodataloader``, ``batchlet``, ``asyncembed``), ``loop``
(``asyncio`` or ``uvloop``), ``mode`` (``throughput`` or ``behaviour``), ``n``, ``rounds``.

``throughput``: ``n`` callers, each its own task, each awaiting one text; every batch of
up to 256 does :func:`benchmarks.peers._work.batch_rows` (asyncembed: its transport
returns the same pre-built body and its codec decodes it). The floor has no library:
``n`` tasks await plain futures that a resolver sets 256 at a time after the same
decode. CPU and wall per text are the median of ``rounds`` rounds after a warm-up. With
``profile``, one more round runs under cProfile and its top ``profile_top`` functions
by own time are added.

``behaviour``: three probes, each measured:
    ``cancel``: 8 callers share a batch; one is cancelled while the batch is in
        flight; how many of the other 7 get a vector.
    ``duplicate``: a text asked twice at once, among 6 others: how many times it
        reaches the batch work.
    ``bound``: 24 batches' worth of callers (each batch takes 2 ms): the most batches
        in flight at once (asyncembed's default ``max_concurrency`` and batchlet's
        ``max_concurrent_batches`` are 16).
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import msgspec
import numpy as np

from benchmarks.peers._peer import Rounds, config, emit, median, run, texts
from benchmarks.peers._work import DIMS, batch_rows, body

Hook = Callable[[list[str]], Awaitable[None]] | None
Call = Callable[[str], Coroutine[Any, Any, Any]]

BATCH = 256


@asynccontextmanager
async def coalescer(lib: str, hook: Hook, pending: int) -> AsyncIterator[Call]:
    """``lib``'s single-text call; ``hook(texts)`` runs at the start of each batch."""
    if lib == "aiodataloader":
        from aiodataloader import DataLoader

        async def load(keys: list[str]) -> list[Any]:
            if hook is not None:
                await hook(keys)
            return batch_rows(len(keys))

        # Built here, inside the running loop: DataLoader binds to get_event_loop().
        loader: DataLoader[str, Any] = DataLoader(load, max_batch_size=BATCH, cache=False)

        async def call(text: str) -> Any:  # load() returns a future: await it in a task
            return await loader.load(text)

        yield call
    elif lib == "batchlet":
        from batchlet import AsyncBatcher, BatchPolicy

        async def process(items: list[str]) -> list[Any]:
            if hook is not None:
                await hook(items)
            return batch_rows(len(items))

        async with AsyncBatcher(
            process,
            policy=BatchPolicy(max_items=BATCH),
            max_wait_ms=5,
            max_concurrent_batches=16,
            max_pending_items=max(1024, pending),  # the default 1024 raises QueueFull
        ) as batcher:
            yield batcher.submit
    elif lib == "asyncembed":
        from asyncembed import Embedder

        async with Embedder("bench/model", transport=_BodyTransport(hook)) as embedder:
            yield embedder.embed
    else:
        raise SystemExit(f"unknown coalescer {lib!r}")


class _Request(msgspec.Struct):
    input: list[str]


_REQUEST = msgspec.json.Decoder(_Request)


class _BodyTransport:
    """An asyncembed ``Transport`` answering each request with the pre-built body."""

    def __init__(self, hook: Hook) -> None:
        self._hook = hook

    async def post(self, content: bytes) -> Any:
        from asyncembed import RawResponse

        inputs = _REQUEST.decode(content).input
        if self._hook is not None:
            await self._hook(inputs)
        return RawResponse(200, {"Content-Type": "application/json"}, body(len(inputs)))

    async def aclose(self) -> None:
        pass


async def _floor(n: int, rounds: int) -> dict[str, Any]:
    loop = asyncio.get_running_loop()

    async def body_(k: int) -> None:
        futures: list[asyncio.Future[Any]] = []

        async def caller() -> Any:
            future = loop.create_future()
            futures.append(future)
            return await future

        async def resolver() -> None:
            await asyncio.sleep(0)  # every caller has started and waits
            for start in range(0, len(futures), BATCH):
                batch = futures[start : start + BATCH]
                for future, row in zip(batch, batch_rows(len(batch)), strict=True):
                    future.set_result(row)
                await asyncio.sleep(0)

        tasks = [asyncio.create_task(caller()) for _ in range(n)]
        await asyncio.gather(resolver(), *tasks)

    await body_(rounds)
    return (await Rounds(n).run(rounds, body_)).summary(median)


async def _throughput(lib: str, n: int, rounds: int, profile: int = 0) -> dict[str, Any]:
    async with coalescer(lib, None, n) as call:

        async def body_(k: int) -> None:
            tasks = [asyncio.create_task(call(t)) for t in texts(n, f"r{k}-")]
            results = await asyncio.gather(*tasks)
            assert results[-1].shape == (DIMS,)

        await body_(rounds)  # warm-up: bodies built, allocator, calibration
        summary = (await Rounds(n).run(rounds, body_)).summary(median)
        if profile:
            import cProfile

            from benchmarks.peers.asyncembed_client import top_functions

            profiler = cProfile.Profile()
            profiler.enable()
            await body_(rounds + 1)
            profiler.disable()
            summary["profile"] = top_functions(profiler, profile)
        return summary


async def _cancel_probe(lib: str) -> dict[str, Any]:
    entered, gate = asyncio.Event(), asyncio.Event()

    async def hook(batch: list[str]) -> None:
        entered.set()
        await gate.wait()

    async with coalescer(lib, hook, 1024) as call:
        tasks = [asyncio.create_task(call(f"cancel probe {i}")) for i in range(8)]
        await entered.wait()  # the batch is in flight
        tasks[3].cancel()
        gate.set()
        done, _ = await asyncio.wait(tasks, timeout=5)
        mates = [t for i, t in enumerate(tasks) if i != 3]
        answered = sum(
            1
            for t in mates
            if t in done
            and not t.cancelled()
            and t.exception() is None
            and isinstance(t.result(), np.ndarray)
        )
        errors = sorted(
            {type(t.exception()).__name__ for t in mates if t in done and t.exception()}
        )
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return {"mates": len(mates), "answered": answered, "errors": errors}


async def _duplicate_probe(lib: str) -> int:
    seen: list[str] = []

    async def hook(batch: list[str]) -> None:
        seen.extend(batch)

    async with coalescer(lib, hook, 1024) as call:
        items = ["twice"] + [f"once {i}" for i in range(6)] + ["twice"]
        await asyncio.gather(*(asyncio.create_task(call(t)) for t in items))
    return seen.count("twice")


async def _bound_probe(lib: str, batches: int) -> int:
    active = peak = 0

    async def hook(batch: list[str]) -> None:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        try:
            await asyncio.sleep(0.002)  # the request's round trip
        finally:
            active -= 1

    n = batches * BATCH
    async with coalescer(lib, hook, n) as call:
        items = [f"bound probe {i}" for i in range(n)]
        await asyncio.gather(*(asyncio.create_task(call(t)) for t in items))
    return peak


async def main() -> None:
    cfg = config()
    lib, mode = cfg["lib"], cfg.get("mode", "throughput")
    if mode == "throughput":
        n, rounds = cfg["n"], cfg["rounds"]
        before = [gen["collections"] for gen in gc.get_stats()]
        summary = await (
            _floor(n, rounds)
            if lib == "floor"
            else _throughput(lib, n, rounds, cfg.get("profile_top", 0) if cfg.get("profile") else 0)
        )
        after = [gen["collections"] for gen in gc.get_stats()]
        # Full collections traverse every live object (the 10,000 waiting tasks too):
        # how often they run is much of what separates one coalescer from another.
        summary["gc_per_round"] = [
            round((a - b) / (rounds + 1), 2) for a, b in zip(after, before, strict=True)
        ]
        emit(peer=lib, loop=cfg.get("loop", "asyncio"), mode=mode, **summary)
    elif mode == "behaviour":
        batches = cfg.get("batches", 24)
        emit(
            peer=lib,
            mode=mode,
            cancel=await _cancel_probe(lib),
            duplicate_sent=await _duplicate_probe(lib),
            max_in_flight=await _bound_probe(lib, batches),
            batches=batches,
        )
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    run(main, config().get("loop"))
