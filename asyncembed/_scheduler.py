"""The Scheduler: who may send a request now.

A request needs a slot: fewer than the current concurrency limit in flight, no
global pause (set by a 429), and room in the RPM/TPM windows. Waiters are served in
priority order (live ``embed()`` before bulk backfill), first come first served
within a priority, so a large bulk job cannot starve a web handler.

The concurrency limit adapts (AIMD): halved on a 429, raised by one after as many
successes in a row as the current limit, never above ``Limits.max_concurrency``.

The spending cap (``Limits.max_cost``) is enforced here too, when a slot is granted:
the cost already billed plus the estimated cost of every request in flight plus this
one's must fit under the cap. A request's cost is estimated from the cost per token
billed so far; until the first billed answer only one request flies. So the spend
overshoots the cap only by the estimates' error on the requests in flight.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from ._clock import Clock
from ._config import Limits
from ._exceptions import BudgetExceededError, RateLimitError

__all__ = ["BULK", "LIVE", "Budget", "Scheduler", "SlidingWindow"]

logger = logging.getLogger("asyncembed")

LIVE = 0
BULK = 1

_WINDOW = 60.0


class SlidingWindow:
    """At most ``limit`` units in any ``period`` seconds (an exact sliding log).

    A log rather than a token bucket: a bucket that starts full lets through up to
    twice its rate in the first window, and the point is to stay under the account's
    quota in every window. The log holds at most one entry per admitted request.
    """

    __slots__ = ("_log", "_period", "_used", "limit")

    def __init__(self, limit: int, period: float = _WINDOW) -> None:
        self.limit = limit
        self._period = period
        self._log: deque[tuple[float, int]] = deque()
        self._used = 0

    def delay(self, amount: int, now: float) -> float:
        """Seconds until ``amount`` fits (0.0: it fits now).

        An amount larger than the whole limit fits once the window is empty.
        """
        log = self._log
        while log and log[0][0] <= now - self._period:
            self._used -= log.popleft()[1]
        if self._used + amount <= self.limit or not log:
            return 0.0
        need = self._used + amount - self.limit
        freed = 0
        for stamp, used in log:
            freed += used
            if freed >= need:
                return stamp + self._period - now
        return log[-1][0] + self._period - now

    def add(self, amount: int, now: float) -> None:
        """Record ``amount`` units used at ``now``."""
        self._log.append((now, amount))
        self._used += amount


class Budget:
    """The spend against ``Limits.max_cost``: billed, committed to requests in flight.

    Args:
        max_cost: The cap, in the API's credits.
    """

    __slots__ = ("billed_tokens", "committed", "max_cost", "spent")

    def __init__(self, max_cost: float) -> None:
        self.max_cost = max_cost
        self.spent = 0.0
        self.billed_tokens = 0
        self.committed = 0.0

    def estimate(self, tokens: int) -> float | None:
        """A request's estimated cost from the price seen so far (``None``: no answer yet)."""
        if self.billed_tokens == 0:
            return None
        return tokens * self.spent / self.billed_tokens

    def grant(self, tokens: int, in_flight: int) -> float | None:
        """The cost to commit for a request of ``tokens``, or ``None`` to wait.

        Raises:
            BudgetExceededError: The request cannot fit under the cap even when every
                request in flight turns out free.
        """
        estimate = self.estimate(tokens)
        if self.spent >= self.max_cost or (
            estimate is not None and self.spent + estimate > self.max_cost
        ):
            raise BudgetExceededError(
                f"spending cap reached: {self.spent:.6f} spent of max_cost={self.max_cost}"
                + ("" if estimate is None else f", next request ~{estimate:.6f}")
            )
        if estimate is None:
            return 0.0 if in_flight == 0 else None  # one request until the price is known
        if self.spent + self.committed + estimate > self.max_cost:
            return None  # fits only if a request in flight fails: wait for them to end
        return estimate

    def bill(self, cost: float | None, tokens: int) -> None:
        """Record what an answer billed (``cost`` ``None``: the server does not say)."""
        if cost is not None:
            self.spent += cost
        elif not self.billed_tokens:
            logger.warning("max_cost is set but the server reports no usage.cost: not enforced")
        self.billed_tokens += tokens


class _Waiter:
    __slots__ = ("key", "tokens", "wake")

    def __init__(self, key: tuple[int, int], tokens: int) -> None:
        self.key = key
        self.tokens = tokens
        self.wake: asyncio.Future[None] | None = None

    def __lt__(self, other: _Waiter) -> bool:
        return self.key < other.key


class Scheduler:
    """Hands out request slots under concurrency, rate limits and 429 pauses.

    Args:
        limits: The configured ceilings.
        clock: Time source for windows and pauses.
    """

    def __init__(self, limits: Limits, clock: Clock) -> None:
        self._clock = clock
        self.max_concurrency = limits.max_concurrency
        self.concurrency = limits.max_concurrency
        self.in_flight = 0
        self.paused_until = float("-inf")
        self._successes = 0
        self._seq = itertools.count()
        self._waiters: list[_Waiter] = []
        self._rpm = (
            SlidingWindow(limits.requests_per_minute) if limits.requests_per_minute else None
        )
        self._tpm = SlidingWindow(limits.tokens_per_minute) if limits.tokens_per_minute else None
        self.budget = None if limits.max_cost is None else Budget(limits.max_cost)

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
    ) -> AsyncIterator[None]:
        """Hold a request slot for the body of the ``async with``.

        Args:
            tokens: The request's estimated tokens (for the TPM window).
            priority: ``LIVE`` (0) or ``BULK`` (1); lower goes first.
            wait_limit: Returns the latest ``clock.now()`` the request may wait to
                through a 429 pause (its callers' deadline, its retry budget).
        """
        committed = await self.acquire(tokens, priority, wait_limit)
        try:
            yield
        finally:
            self.release(committed)

    async def acquire(
        self, tokens: int, priority: int = LIVE, wait_limit: Callable[[], float] | None = None
    ) -> float:
        """Wait for a slot and take it. Cancellation leaves the queue cleanly.

        Returns:
            The cost committed to the request, to hand back to :meth:`release`.

        Raises:
            BudgetExceededError: The spending cap leaves no room for this request.
            RateLimitError: A 429 pause lasts past ``wait_limit()``: the request fails at
                once rather than wait in vain (``retry_after``: the pause left).
        """
        waiter = _Waiter((priority, next(self._seq)), tokens)
        heapq.heappush(self._waiters, waiter)
        try:
            while True:
                if self._waiters[0] is waiter and self.in_flight < self.concurrency:
                    delay = self._time_delay(tokens)
                    if wait_limit is not None and self.paused_until > wait_limit():
                        left = self.paused_until - self._clock.now()
                        raise RateLimitError(
                            f"rate limited: dispatch is paused for {left:.1f} s more, "
                            "past this request's deadline or retry budget",
                            retry_after=left,
                        )
                    if delay > 0:
                        # The head waits out the pause or window; the rest queue behind it.
                        await self._clock.sleep(delay)
                        continue
                    committed = self._commit(tokens)
                    if committed is not None:
                        heapq.heappop(self._waiters)
                        self._take(tokens)
                        self._wake_head()
                        return committed
                    # Over budget while requests are in flight: a release wakes the head.
                waiter.wake = asyncio.get_running_loop().create_future()
                await waiter.wake
        except BaseException:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
                heapq.heapify(self._waiters)
            self._wake_head()
            raise

    def release(self, committed: float = 0.0) -> None:
        """Give a slot back, with the cost that :meth:`acquire` committed to it."""
        self.in_flight -= 1
        if self.budget is not None:
            self.budget.committed -= committed
        self._wake_head()

    def bill(self, cost: float | None, tokens: int) -> None:
        """Record an answer's billed cost and tokens against the spending cap."""
        if self.budget is not None:
            self.budget.bill(cost, tokens)

    def _commit(self, tokens: int) -> float | None:
        if self.budget is None:
            return 0.0
        committed = self.budget.grant(tokens, self.in_flight)
        if committed is not None:
            self.budget.committed += committed
        return committed

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
        """Hold all dispatch for ``delay`` seconds (an existing longer pause stands)."""
        self.paused_until = max(self.paused_until, self._clock.now() + delay)

    def _take(self, tokens: int) -> None:
        now = self._clock.now()
        self.in_flight += 1
        if self._rpm is not None:
            self._rpm.add(1, now)
        if self._tpm is not None:
            self._tpm.add(tokens, now)

    def _time_delay(self, tokens: int) -> float:
        now = self._clock.now()
        delay = self.paused_until - now
        if self._rpm is not None:
            delay = max(delay, self._rpm.delay(1, now))
        if self._tpm is not None:
            delay = max(delay, self._tpm.delay(tokens, now))
        return delay

    def _wake_head(self) -> None:
        if self._waiters:
            wake = self._waiters[0].wake
            if wake is not None and not wake.done():
                wake.set_result(None)
