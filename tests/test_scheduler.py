"""The scheduler alone, on virtual time: concurrency, priority, windows, pauses, AIMD."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

from asyncembed import Limits
from asyncembed._scheduler import BULK, LIVE, Scheduler, SlidingWindow
from asyncembed.testing import FakeClock

pytestmark = pytest.mark.anyio


def test_sliding_window_admits_at_most_limit_per_period() -> None:
    window = SlidingWindow(3, period=60.0)
    now = 0.0
    admitted: list[float] = []
    while len(admitted) < 10:
        delay = window.delay(1, now)
        if delay > 0:
            now += delay
            continue
        window.add(1, now)
        admitted.append(now)
    for t in admitted:
        assert sum(1 for u in admitted if t <= u < t + 60.0) <= 3
    assert admitted[3] == pytest.approx(60.0)


def test_sliding_window_weighted_and_oversized() -> None:
    window = SlidingWindow(100)
    window.add(80, 0.0)
    assert window.delay(30, 1.0) == pytest.approx(59.0)
    assert window.delay(20, 1.0) == 0.0
    empty = SlidingWindow(10)
    assert empty.delay(50, 0.0) == 0.0  # larger than the limit: admitted alone


async def test_concurrency_is_never_exceeded_and_priority_goes_first() -> None:
    clock = FakeClock()
    scheduler = Scheduler(Limits(max_concurrency=2), clock)
    order: list[str] = []
    peak = 0

    async def job(name: str, priority: int) -> None:
        nonlocal peak
        async with scheduler.slot(1, priority):
            peak = max(peak, scheduler.in_flight)
            order.append(name)
            await anyio.lowlevel.checkpoint()

    await scheduler.acquire(1)
    await scheduler.acquire(1)  # both slots taken: everyone below queues
    async with anyio.create_task_group() as tg:
        for i in range(3):
            tg.start_soon(job, f"bulk{i}", BULK)
        await anyio.lowlevel.checkpoint()
        tg.start_soon(job, "live", LIVE)
        await anyio.lowlevel.checkpoint()
        assert scheduler.waiting == 4
        scheduler.release()
        scheduler.release()
    assert order[0] == "live"
    assert order[1:] == ["bulk0", "bulk1", "bulk2"]
    assert peak <= 2 and scheduler.in_flight == 0


async def test_rate_limit_pauses_everyone_and_halves_concurrency() -> None:
    clock = FakeClock()
    scheduler = Scheduler(Limits(max_concurrency=8), clock)
    scheduler.on_rate_limited()
    scheduler.pause(5.0)
    assert scheduler.concurrency == 4
    start = clock.now()
    await scheduler.acquire(1)
    assert clock.now() - start >= 5.0
    scheduler.release()
    for _ in range(4):
        scheduler.on_success()
    assert scheduler.concurrency == 5  # +1 after a run of `concurrency` successes
    for _ in range(100):
        scheduler.on_success()
    assert scheduler.concurrency == 8  # never above the configured maximum


async def test_rpm_budget_holds_over_several_windows() -> None:
    clock = FakeClock()
    scheduler = Scheduler(Limits(max_concurrency=50, requests_per_minute=10), clock)
    times: list[float] = []

    async def one() -> None:
        async with scheduler.slot(1):
            times.append(clock.now())

    async with anyio.create_task_group() as tg:
        for _ in range(35):
            tg.start_soon(one)
    assert len(times) == 35
    assert max(times) - min(times) >= 180.0  # 35 requests at 10/min span 3+ windows
    for t in times:
        assert sum(1 for u in times if t <= u < t + 60.0) <= 10


async def test_tpm_budget_counts_tokens() -> None:
    clock = FakeClock()
    scheduler = Scheduler(Limits(tokens_per_minute=1000), clock)
    stamps: list[float] = []
    for _ in range(5):
        async with scheduler.slot(400):
            stamps.append(clock.now())
    # 400 tokens each, 1000 per minute: two per window.
    assert stamps[2] - stamps[0] >= 60.0 and stamps[4] - stamps[2] >= 60.0


async def test_cancelled_waiter_leaves_the_queue() -> None:
    scheduler = Scheduler(Limits(max_concurrency=1), FakeClock())
    await scheduler.acquire(1)
    with anyio.move_on_after(0.01):
        await scheduler.acquire(1)
    assert scheduler.waiting == 0
    scheduler.release()
    await scheduler.acquire(1)
    assert scheduler.in_flight == 1
