"""The Limiter: the state that several Embedders may have to share.

The Scheduler keeps what is local to one Embedder (requests in flight, the queue of
waiters by priority, the adaptive concurrency) and asks a :class:`Limiter` for the
rest: the request and token windows (``Limits.requests_per_minute`` /
``tokens_per_minute``), the pause that a 429 sets, and the spend that
``Limits.max_cost`` caps. :class:`LocalLimiter`, the default, keeps them in this
process; ``RedisLimiter`` keeps them in Redis, for every worker of an account.

The adaptive concurrency is not shared: it bounds this process's own requests in
flight, and the shared pause already stops every worker after any worker's 429.
"""

from __future__ import annotations

import abc
import logging
import math
from collections import deque
from dataclasses import dataclass
from typing import Self

from ._clock import Clock, SystemClock
from ._config import Limits
from ._exceptions import BudgetExceededError

__all__ = [
    "Budget",
    "Limiter",
    "LocalLimiter",
    "Reservation",
    "SlidingWindow",
]

logger = logging.getLogger("asyncembed")

_WINDOW = 60.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Reservation:
    """A limiter's answer to one request: go (after ``wait``), or ask again later.

    Attributes:
        granted: The request and its tokens are reserved (and its estimated cost
            committed): send it after ``wait`` seconds.
        wait: Granted: seconds to wait before sending. Not granted: seconds before
            asking again (``math.inf`` with ``on_release``: until a request ends).
        paused: Seconds left of a 429 pause, as the limiter saw it (0: none).
        on_release: Not granted because the spending cap leaves room only if a request
            in flight turns out cheaper: ask again when one ends, or after ``wait``.
        committed: The estimated cost committed to the request (0 without a cap).
        lease: The limiter's own handle on the reservation, for :meth:`Limiter.settle`.
    """

    granted: bool
    wait: float = 0.0
    paused: float = 0.0
    on_release: bool = False
    committed: float = 0.0
    lease: str | None = None


class Limiter(abc.ABC):
    """What several Embedders share: rate windows, the 429 pause and the spend.

    Pass one as ``Embedder(..., limiter=...)``. The default keeps everything in the
    process (one Embedder); :class:`asyncembed.RedisLimiter` shares it through Redis.
    To write your own, implement the three abstract methods: :meth:`reserve` is awaited
    before every HTTP request; :meth:`pause` and :meth:`settle` are called from
    synchronous code and must not block (send them in the background if they do I/O).
    A limiter that grants ahead (a ``wait`` > 0) also implements :meth:`pause_left`.
    """

    @abc.abstractmethod
    async def reserve(self, tokens: int, limits: Limits) -> Reservation:
        """Reserve one request of ``tokens`` estimated tokens under ``limits``.

        Args:
            tokens: The request's estimated tokens (for ``tokens_per_minute``).
            limits: The caller's ``requests_per_minute``, ``tokens_per_minute`` and
                ``max_cost`` (``max_concurrency`` is the Scheduler's own business).

        Returns:
            A granted :class:`Reservation` (possibly with a short wait), or one that
            says when to ask again.

        Raises:
            BudgetExceededError: ``max_cost`` leaves no room for this request even if
                every request in flight turns out free.
            LimiterUnavailableError: The shared state cannot be reached.
        """

    @abc.abstractmethod
    def pause(self, seconds: float) -> None:
        """Hold every request for ``seconds`` from now (a longer pause in force stands).

        Args:
            seconds: The delay a 429 asked for (its ``Retry-After``, or the backoff).
        """

    @abc.abstractmethod
    def settle(self, reservation: Reservation, *, cost: float | None, tokens: int) -> None:
        """A granted request ended: free its commitment and record what it billed.

        Args:
            reservation: What :meth:`reserve` granted.
            cost: The billed cost (``usage.cost``), or ``None`` (not billed, or the
                server does not say).
            tokens: The billed prompt tokens (0 if not billed).
        """

    async def pause_left(self) -> float:
        """Seconds left of the pause in force (0.0: none).

        Asked just before sending a request that was granted with a ``wait``, so that
        a pause set in the meantime holds it too. The default (for limiters that never
        grant ahead) is 0.0.

        Raises:
            LimiterUnavailableError: The shared state cannot be reached.
        """
        return 0.0

    async def aclose(self) -> None:  # noqa: B027 - optional, not abstract
        """Release connections and flush what is being sent. Default: nothing to do."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


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
    """The spend against ``Limits.max_cost``: billed, and committed to requests in flight.

    A request's cost is estimated from the cost per token billed so far; until the
    first billed answer only one request flies. So the spend overshoots the cap only
    by the estimates' error on the requests in flight.
    """

    __slots__ = ("billed_tokens", "committed", "in_flight", "spent")

    def __init__(self) -> None:
        self.spent = 0.0
        self.billed_tokens = 0
        self.committed = 0.0
        self.in_flight = 0

    def estimate(self, tokens: int) -> float | None:
        """A request's estimated cost from the price seen so far (``None``: no answer yet)."""
        if self.billed_tokens == 0:
            return None
        return tokens * self.spent / self.billed_tokens

    def grant(self, tokens: int, max_cost: float) -> float | None:
        """The cost to commit for a request of ``tokens``, or ``None`` to wait.

        Raises:
            BudgetExceededError: The request cannot fit under the cap even when every
                request in flight turns out free.
        """
        estimate = self.estimate(tokens)
        if self.spent >= max_cost or (estimate is not None and self.spent + estimate > max_cost):
            raise budget_exceeded(self.spent, max_cost, estimate)
        if estimate is None:
            return 0.0 if self.in_flight == 0 else None  # one request until the price is known
        if self.spent + self.committed + estimate > max_cost:
            return None  # fits only if a request in flight fails: wait for them to end
        return estimate

    def bill(self, cost: float | None, tokens: int) -> None:
        """Record what an answer billed (``cost`` ``None``: the server does not say)."""
        if cost is not None:
            self.spent += cost
        self.billed_tokens += tokens


def budget_exceeded(spent: float, max_cost: float, estimate: float | None) -> BudgetExceededError:
    """The error for a request refused by the spending cap (one wording for every limiter)."""
    return BudgetExceededError(
        f"spending cap reached: {spent:.6f} spent of max_cost={max_cost}"
        + ("" if estimate is None else f", next request ~{estimate:.6f}")
    )


class LocalLimiter(Limiter):
    """The in-process limiter (the default): exact sliding windows, a pause, a budget.

    It grants only what fits now (``wait`` is always 0 when granted), so the windows
    hold exactly: at most ``requests_per_minute`` requests in any 60 s.

    Args:
        clock: Time source (the Embedder's).
    """

    def __init__(self, clock: Clock | None = None) -> None:
        self._clock = clock or SystemClock()
        self._requests: SlidingWindow | None = None
        self._tokens: SlidingWindow | None = None
        self._budget = Budget()
        self.paused_until = float("-inf")

    def __repr__(self) -> str:
        return f"<LocalLimiter spent={self._budget.spent:.6f} in_flight={self._budget.in_flight}>"

    async def reserve(self, tokens: int, limits: Limits) -> Reservation:
        """See :meth:`Limiter.reserve`."""
        now = self._clock.now()
        paused = max(0.0, self.paused_until - now)
        delay = paused
        requests = _window(self._requests, limits.requests_per_minute)
        tokens_window = _window(self._tokens, limits.tokens_per_minute)
        self._requests, self._tokens = requests, tokens_window
        if requests is not None:
            delay = max(delay, requests.delay(1, now))
        if tokens_window is not None:
            delay = max(delay, tokens_window.delay(tokens, now))
        if delay > 0:
            return Reservation(granted=False, wait=delay, paused=paused)
        committed = 0.0
        if limits.max_cost is not None:
            grant = self._budget.grant(tokens, limits.max_cost)
            if grant is None:
                return Reservation(granted=False, wait=math.inf, on_release=True)
            committed = grant
            self._budget.committed += committed
            self._budget.in_flight += 1
        if requests is not None:
            requests.add(1, now)
        if tokens_window is not None:
            tokens_window.add(tokens, now)
        lease = "budget" if limits.max_cost is not None else None
        return Reservation(granted=True, committed=committed, lease=lease)

    def pause(self, seconds: float) -> None:
        """See :meth:`Limiter.pause`."""
        self.paused_until = max(self.paused_until, self._clock.now() + seconds)

    def settle(self, reservation: Reservation, *, cost: float | None, tokens: int) -> None:
        """See :meth:`Limiter.settle`."""
        if reservation.lease is None:
            return
        self._budget.committed -= reservation.committed
        self._budget.in_flight -= 1
        self._budget.bill(cost, tokens)


def _window(window: SlidingWindow | None, limit: int | None) -> SlidingWindow | None:
    """The window for ``limit`` (kept across calls, its limit updated), or ``None``."""
    if limit is None:
        return None
    if window is None:
        return SlidingWindow(limit)
    window.limit = limit
    return window
