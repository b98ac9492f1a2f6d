"""The Scheduler: who may send a request now.

A request needs a slot: fewer than the current concurrency limit in flight, no
global pause (set by a 429), room in the RPM/TPM windows and under the spending cap.
Waiters are served in priority order (live ``embed()`` before bulk backfill), first
come first served within a priority, so a large bulk job cannot starve a web handler.

The concurrency limit adapts (AIMD): halved on a 429, raised by one after as many
successes in a row as the current limit, never above ``Limits.max_concurrency``.

What may be shared with other Embedders (the windows, the pause, the spend; see
``_limiter.py``) is the :class:`~asyncembed.Limiter`'s: only the head of the queue
asks it, once it has a concurrency slot. The Scheduler keeps a local copy of the
pause (``paused_until``), so it neither asks the limiter during a pause it knows of
nor lets a caller wait through a pause that outlasts its deadline.

The spending cap is checked when a slot is granted: the cost already billed plus the
estimated cost of every request in flight plus this one's must fit under the cap.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
from asyncio import FIRST_COMPLETED
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from ._clock import Clock
from ._config import Limits
from ._exceptions import RateLimitError
from ._limiter import Limiter, LocalLimiter, Reservation, SlidingWindow

__all__ = ["BULK", "LIVE", "Scheduler", "Slot", "SlidingWindow"]

logger = logging.getLogger("asyncembed")

LIVE = 0
BULK = 1


class _Waiter:
    __slots__ = ("key", "tokens", "wake")

    def __init__(self, key: tuple[int, int], tokens: int) -> None:
        self.key = key
        self.tokens = tokens
        self.wake: asyncio.Future[None] | None = None

    def __lt__(self, other: _Waiter) -> bool:
        return self.key < other.key


class Slot:
    """One granted request: its reservation, and what its answer billed."""

    __slots__ = ("cost", "reservation", "tokens")

    def __init__(self, reservation: Reservation) -> None:
        self.reservation = reservation
        self.cost: float | None = None
        self.tokens = 0

    def bill(self, cost: float | None, tokens: int) -> None:
        """Record an answer's billed cost and tokens (settled when the slot is released)."""
        if cost is not None:
            self.cost = (self.cost or 0.0) + cost
        self.tokens += tokens


class Scheduler:
    """Hands out request slots under concurrency, rate limits and 429 pauses.

    Args:
        limits: The configured ceilings.
        clock: Time source for windows and pauses.
        limiter: Where the windows, the pause and the spend live (default: in this
            process, on ``clock``).
    """

    def __init__(self, limits: Limits, clock: Clock, limiter: Limiter | None = None) -> None:
        self._clock = clock
        self._limits = limits
        self._limiter = limiter if limiter is not None else LocalLimiter(clock)
        self.max_concurrency = limits.max_concurrency
        self.concurrency = limits.max_concurrency
        self.in_flight = 0
        self.paused_until = float("-inf")
        """When the last pause this Scheduler knows of ends (``clock.now()`` time)."""
        self._asking = False  # the head is awaiting the limiter: nobody else asks
        self._warned_no_cost = False
        self._successes = 0
        self._seq = itertools.count()
        self._waiters: list[_Waiter] = []

    def __repr__(self) -> str:
        return (
            f"<Scheduler in_flight={self.in_flight} concurrency={self.concurrency}/"
            f"{self.max_concurrency} waiting={len(self._waiters)}>"
        )

    @property
    def waiting(self) -> int:
        """Requests waiting for a slot."""
        return len(self._waiters)

    @asynccontextmanager
    async def slot(
        self, tokens: int, priority: int = LIVE, wait_limit: Callable[[], float] | None = None
    ) -> AsyncIterator[Slot]:
        """Hold a request slot for the body of the ``async with``.

        Args:
            tokens: The request's estimated tokens (for the TPM window).
            priority: ``LIVE`` (0) or ``BULK`` (1); lower goes first.
            wait_limit: Returns the latest ``clock.now()`` the request may wait to
                through a 429 pause (its callers' deadline, its retry budget).

        Yields:
            The :class:`Slot`; call its ``bill()`` with what the answer billed.
        """
        slot = await self.acquire(tokens, priority, wait_limit)
        try:
            yield slot
        finally:
            self.release(slot)

    async def acquire(
        self, tokens: int, priority: int = LIVE, wait_limit: Callable[[], float] | None = None
    ) -> Slot:
        """Wait for a slot and take it. Cancellation leaves the queue cleanly.

        Returns:
            The slot, to hand back to :meth:`release`.

        Raises:
            BudgetExceededError: The spending cap leaves no room for this request.
            RateLimitError: A 429 pause lasts past ``wait_limit()``: the request fails at
                once rather than wait in vain (``retry_after``: the pause left).
            LimiterUnavailableError: A shared limiter cannot be reached.
        """
        waiter = _Waiter((priority, next(self._seq)), tokens)
        heapq.heappush(self._waiters, waiter)
        try:
            while True:
                timeout: float | None = None
                if (
                    self._waiters[0] is waiter
                    and self.in_flight < self.concurrency
                    and not self._asking
                ):
                    self._check_pause(wait_limit)
                    pause = self.paused_until - self._clock.now()
                    if pause > 0:
                        # The head waits out the pause; the rest queue behind it.
                        await self._clock.sleep(pause)
                        continue
                    answer = await self._ask(tokens)
                    if answer.paused > 0:
                        self.paused_until = max(
                            self.paused_until, self._clock.now() + answer.paused
                        )
                        if answer.granted and self._past(wait_limit):
                            self._limiter.settle(answer, cost=None, tokens=0)
                        self._check_pause(wait_limit)
                    if answer.granted:
                        slot = await self._take(waiter, answer)
                        if slot is not None:
                            return slot
                        continue  # a pause came up while it waited: queued again
                    if not answer.on_release:
                        await self._clock.sleep(answer.wait)  # a window: the head waits
                        continue
                    # Over budget while requests are in flight: a release wakes the head
                    # (a shared limiter also says how soon to ask again).
                    timeout = answer.wait if answer.wait < float("inf") else None
                waiter.wake = asyncio.get_running_loop().create_future()
                if timeout is None:
                    await waiter.wake
                else:  # a release, or the limiter's "ask again in", on our clock
                    again = asyncio.ensure_future(self._clock.sleep(timeout))
                    try:
                        await asyncio.wait((waiter.wake, again), return_when=FIRST_COMPLETED)
                    finally:
                        again.cancel()
        except BaseException:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
                heapq.heapify(self._waiters)
            self._wake_head()
            raise

    async def _ask(self, tokens: int) -> Reservation:
        self._asking = True
        try:
            return await self._limiter.reserve(tokens, self._limits)
        finally:
            self._asking = False
            self._wake_head()  # whoever became head while we asked

    async def _take(self, waiter: _Waiter, answer: Reservation) -> Slot | None:
        if self._waiters[0] is waiter:  # the usual case: O(log n), not O(n)
            heapq.heappop(self._waiters)
        else:  # a higher priority arrived while the limiter was asked
            self._waiters.remove(waiter)
            heapq.heapify(self._waiters)
        self.in_flight += 1
        self._wake_head()
        slot = Slot(answer)
        if answer.wait <= 0:
            return slot
        # Reserved a little ahead (a shared limiter): wait for the reserved time, then
        # make sure no worker's 429 paused everyone meanwhile; if one did, give the
        # reservation up rather than send into the pause.
        try:
            await self._clock.sleep(answer.wait)
            left = await self._limiter.pause_left()
        except BaseException:
            self.release(slot)
            raise
        if left <= 0:
            return slot
        self.release(slot)
        self.paused_until = max(self.paused_until, self._clock.now() + left)
        heapq.heappush(self._waiters, waiter)
        return None

    def _past(self, wait_limit: Callable[[], float] | None) -> bool:
        return wait_limit is not None and self.paused_until > wait_limit()

    def _check_pause(self, wait_limit: Callable[[], float] | None) -> None:
        if self._past(wait_limit):
            left = self.paused_until - self._clock.now()
            raise RateLimitError(
                f"rate limited: dispatch is paused for {left:.1f} s more, "
                "past this request's deadline or retry budget",
                retry_after=left,
            )

    def release(self, slot: Slot | None = None) -> None:
        """Give a slot back; what it billed goes to the limiter's spend."""
        self.in_flight -= 1
        if slot is not None:
            if (
                self._limits.max_cost is not None
                and slot.tokens
                and slot.cost is None
                and not self._warned_no_cost
            ):
                self._warned_no_cost = True
                logger.warning("max_cost is set but the server reports no usage.cost: not enforced")
            self._limiter.settle(slot.reservation, cost=slot.cost, tokens=slot.tokens)
        self._wake_head()

    def on_success(self) -> None:
        """Additive increase: +1 concurrency after a run of successes."""
        if self.concurrency < self.max_concurrency:
            self._successes += 1
            if self._successes >= self.concurrency:
                self.concurrency += 1
                self._successes = 0
                self._wake_head()

    def on_rate_limited(self) -> None:
        """Multiplicative decrease of the concurrency (the pause is set by the retry)."""
        self.concurrency = max(1, self.concurrency // 2)
        self._successes = 0

    def pause(self, delay: float) -> None:
        """Hold all dispatch for ``delay`` seconds (an existing longer pause stands).

        The limiter hears of it too, so that a shared one pauses every worker.
        """
        self.paused_until = max(self.paused_until, self._clock.now() + delay)
        self._limiter.pause(delay)

    def _wake_head(self) -> None:
        if self._waiters:
            wake = self._waiters[0].wake
            if wake is not None and not wake.done():
                wake.set_result(None)
