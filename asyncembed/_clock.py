"""Time as a parameter: the batch window, the limiter and retries read time from a Clock."""

from __future__ import annotations

import time
from typing import Protocol

import anyio

__all__ = ["Clock", "SystemClock"]


class Clock(Protocol):
    """Where asyncembed reads the time and how it waits.

    ``now()`` is monotonic seconds; ``sleep(seconds)`` waits that long. Tests pass
    :class:`asyncembed.testing.FakeClock` to move time by hand instead of sleeping.
    """

    def now(self) -> float:
        """Monotonic time in seconds."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` (``<= 0`` only yields to the event loop)."""
        ...


class SystemClock:
    """The real clock: ``time.monotonic`` and ``anyio.sleep``."""

    __slots__ = ()

    def now(self) -> float:
        """Monotonic time in seconds."""
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        """Sleep for real."""
        await anyio.sleep(max(0.0, seconds))
