"""A clock whose time moves only when code sleeps on it, for tests without real waiting."""

from __future__ import annotations

from collections.abc import Callable

import anyio

from .._config import Retry

__all__ = ["FakeClock", "no_backoff", "wait_until"]


class FakeClock:
    """Virtual time for :class:`asyncembed.Embedder` (``Embedder(clock=FakeClock())``).

    ``sleep(d)`` yields to the event loop once and then moves the clock to at least
    ``start + d``, so retry backoffs, 429 pauses, rate-limit windows and the batch
    window all complete at once while the code still sees the time pass. ``sleeps``
    records every requested delay, for assertions.

    Args:
        start: The initial reading of ``now()``.
    """

    __slots__ = ("_now", "sleeps")

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self.sleeps: list[float] = []

    def __repr__(self) -> str:
        return f"<FakeClock now={self._now:.3f} sleeps={len(self.sleeps)}>"

    def now(self) -> float:
        """The virtual time, in seconds."""
        return self._now

    def advance(self, seconds: float) -> None:
        """Move time forward by hand.

        Raises:
            ValueError: ``seconds`` is negative.
        """
        if seconds < 0:
            raise ValueError(f"time cannot go back, got {seconds}")
        self._now += seconds

    async def sleep(self, seconds: float) -> None:
        """Yield once, then let at least ``seconds`` of virtual time pass."""
        target = self._now + max(0.0, seconds)
        self.sleeps.append(seconds)
        await anyio.lowlevel.checkpoint()
        self._now = max(self._now, target)


def no_backoff(attempts: int = 8) -> Retry:
    """A :class:`asyncembed.Retry` that retries at once (for tests of retry paths).

    Server-named delays (``Retry-After``) are still honoured: pair it with
    :class:`FakeClock` to make those instant too.
    """
    return Retry(attempts=attempts, initial_delay=0.0, max_delay=0.0)


async def wait_until(
    condition: Callable[[], bool], *, timeout: float = 5.0, interval: float = 0.001
) -> None:
    """Wait until ``condition()`` is true, checking every ``interval`` seconds.

    For states that have no event to wait on: another process's progress, a socket
    the peer closed, a background task winding down. Bounded, unlike a fixed sleep.

    Raises:
        TimeoutError: the condition was still false after ``timeout`` seconds.
    """
    with anyio.fail_after(timeout):
        while not condition():  # noqa: ASYNC110 - polling is the point here
            await anyio.sleep(interval)
