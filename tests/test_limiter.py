"""The Scheduler through the ``Limiter`` interface, on virtual time.

``Ahead`` is a small Limiter of our own, written as a user would write one: it answers
from a list of reservations, so the Scheduler's handling of each answer (a wait ahead, a
pause that comes up meanwhile, a budget wait, an outage) is shown without Redis. The
in-process default is shown shared by two Schedulers.
"""

from __future__ import annotations

import anyio
import pytest

import asyncembed
from asyncembed import Limiter, LimiterUnavailableError, Limits, RateLimitError, Reservation
from asyncembed._limiter import LocalLimiter
from asyncembed._scheduler import Scheduler
from asyncembed.testing import FakeClock

pytestmark = pytest.mark.anyio


class Ahead(Limiter):
    """Answers ``reserve`` from ``answers`` (then grants), ``pause_left`` from ``pauses``."""

    def __init__(self, answers: list[Reservation], pauses: list[float] | None = None) -> None:
        self.answers = answers
        self.pauses = pauses or []
        self.asked: list[int] = []
        self.settled: list[tuple[Reservation, float | None, int]] = []
        self.paused: list[float] = []
        self.down = False

    async def reserve(self, tokens: int, limits: Limits) -> Reservation:
        await anyio.lowlevel.checkpoint()  # a real one awaits I/O
        if self.down:
            raise LimiterUnavailableError("down")
        self.asked.append(tokens)
        return self.answers.pop(0) if self.answers else Reservation(granted=True, lease="x")

    def pause(self, seconds: float) -> None:
        self.paused.append(seconds)

    def settle(self, reservation: Reservation, *, cost: float | None, tokens: int) -> None:
        self.settled.append((reservation, cost, tokens))

    async def pause_left(self) -> float:
        return self.pauses.pop(0) if self.pauses else 0.0


async def test_a_reservation_ahead_is_waited_for_and_billed_on_release() -> None:
    clock = FakeClock()
    limiter = Ahead([Reservation(granted=True, wait=0.4, committed=0.01, lease="a")])
    scheduler = Scheduler(Limits(), clock, limiter)
    start = clock.now()
    async with scheduler.slot(100) as slot:
        assert clock.now() - start == pytest.approx(0.4)
        assert scheduler.in_flight == 1
        slot.bill(0.012, 90)
    ((reservation, cost, tokens),) = limiter.settled
    assert (reservation.lease, cost, tokens) == ("a", 0.012, 90)
    assert scheduler.in_flight == 0


async def test_a_pause_set_while_waiting_gives_the_reservation_up() -> None:
    clock = FakeClock()
    ahead = Reservation(granted=True, wait=0.5, lease="first")
    limiter = Ahead([ahead], pauses=[2.0])
    scheduler = Scheduler(Limits(), clock, limiter)
    start = clock.now()
    slot = await scheduler.acquire(10)
    # 0.5 s for the reservation, then the 2 s pause another worker set, then a new one.
    assert clock.now() - start == pytest.approx(2.5)
    assert [s[0].lease for s in limiter.settled] == ["first"]  # given up, nothing billed
    assert limiter.settled[0][1:] == (None, 0)
    assert slot.reservation.lease == "x" and limiter.asked == [10, 10]
    assert scheduler.in_flight == 1 and scheduler.waiting == 0


async def test_a_pause_seen_by_the_limiter_fails_a_caller_whose_deadline_is_sooner() -> None:
    clock = FakeClock()
    limiter = Ahead([Reservation(granted=True, paused=30.0, wait=0.2, lease="p")])
    scheduler = Scheduler(Limits(), clock, limiter)
    with pytest.raises(RateLimitError, match="paused") as info:
        await scheduler.acquire(1, wait_limit=lambda: clock.now() + 5.0)
    assert info.value.retry_after == pytest.approx(30.0)
    assert [s[0].lease for s in limiter.settled] == ["p"]  # the grant is handed back
    assert scheduler.in_flight == 0 and scheduler.waiting == 0
    # Everyone else now knows of the pause without asking.
    assert scheduler.paused_until == pytest.approx(clock.now() + 30.0)


async def test_a_window_wait_is_slept_by_the_head_then_asked_again() -> None:
    clock = FakeClock()
    limiter = Ahead([Reservation(granted=False, wait=3.0)])
    scheduler = Scheduler(Limits(), clock, limiter)
    start = clock.now()
    await scheduler.acquire(1)
    assert clock.now() - start == pytest.approx(3.0) and limiter.asked == [1, 1]


async def test_a_budget_wait_asks_again_after_the_limiters_interval() -> None:
    # Another worker's request ends: no local release wakes us, the interval does.
    limiter = Ahead([Reservation(granted=False, on_release=True, wait=0.01)])
    scheduler = Scheduler(Limits(), FakeClock(), limiter)
    with anyio.fail_after(2):
        await scheduler.acquire(1)
    assert limiter.asked == [1, 1]


async def test_an_unreachable_limiter_fails_the_request_and_leaves_the_queue_clean() -> None:
    limiter = Ahead([])
    limiter.down = True
    scheduler = Scheduler(Limits(max_concurrency=1), FakeClock(), limiter)
    with pytest.raises(LimiterUnavailableError):
        await scheduler.acquire(1)
    assert scheduler.waiting == 0 and scheduler.in_flight == 0
    limiter.down = False
    await scheduler.acquire(1)
    assert scheduler.in_flight == 1


async def test_a_429_pause_reaches_the_limiter() -> None:
    limiter = Ahead([])
    scheduler = Scheduler(Limits(), FakeClock(), limiter)
    scheduler.pause(2.0)
    assert limiter.paused == [2.0]


async def test_one_local_limiter_shared_by_two_schedulers_holds_one_window() -> None:
    # The example: two Embedders with requests_per_minute=3 sent 6 at t=0.
    clock = FakeClock()
    shared = LocalLimiter(clock)
    limits = Limits(requests_per_minute=3)
    first, second = Scheduler(limits, clock, shared), Scheduler(limits, clock, shared)
    stamps: list[float] = []

    async def one(scheduler: Scheduler) -> None:
        async with scheduler.slot(1):
            stamps.append(clock.now())

    async with anyio.create_task_group() as tg:
        for i in range(6):
            tg.start_soon(one, first if i % 2 else second)
    assert sum(1 for t in stamps if t < stamps[0] + 60.0) == 3
    assert max(stamps) - min(stamps) >= 60.0


async def test_local_spend_is_settled_with_the_release() -> None:
    clock = FakeClock()
    shared = LocalLimiter(clock)
    scheduler = Scheduler(Limits(max_cost=0.05), clock, shared)
    async with scheduler.slot(100) as slot:
        slot.bill(0.03, 100)  # learns the price: 0.0003 per token
    with pytest.raises(asyncembed.BudgetExceededError, match="next request"):
        await scheduler.acquire(100)  # 0.03 + 0.03 > 0.05
    assert scheduler.waiting == 0
