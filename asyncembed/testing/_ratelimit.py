"""The local server's requests-per-minute and tokens-per-minute limits.

A sliding 60-second window over the requests admitted so far: a request is refused
when it would make more than ``rpm`` requests, or more than ``tpm`` tokens, within
the last 60 seconds. Time is read from a function of monotonic seconds (the server's
:class:`~asyncembed.Clock`), so tests move it by hand; the epoch-based header
``X-RateLimit-Reset`` is derived from it with the server's fixed epoch offset.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["WINDOW", "Refusal", "WindowLimiter"]

WINDOW = 60.0
"""The window length, in seconds."""


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why and for how long a request is refused.

    Attributes:
        kind: ``"requests"`` or ``"tokens"``: which limit was hit.
        limit: That limit (requests or tokens per minute).
        remaining: What is left of it in the current window (0 for requests).
        retry_after: Seconds until the request would fit.
        reset: Clock time (monotonic seconds) at which it would fit.
    """

    kind: str
    limit: int
    remaining: int
    retry_after: float
    reset: float

    def headers(self, epoch_offset: float) -> dict[str, str]:
        """``Retry-After`` (whole seconds, rounded up) and ``X-RateLimit-*`` (reset in epoch ms).

        Args:
            epoch_offset: Epoch seconds minus clock seconds: turns :attr:`reset` into
                wall time.
        """
        return {
            # Rounded first so that float noise (45.0000001) does not add a second.
            "Retry-After": str(max(0, math.ceil(round(self.retry_after, 6)))),
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(math.ceil((self.reset + epoch_offset) * 1000.0)),
        }


class WindowLimiter:
    """Sliding-window RPM/TPM admission. ``None`` disables a limit.

    Args:
        rpm: Requests per minute, or ``None``.
        tpm: Tokens per minute, or ``None``.
        clock: Monotonic seconds (the server's ``Clock.now``).
    """

    __slots__ = ("_clock", "_log", "_tokens", "rpm", "tpm")

    def __init__(self, *, rpm: int | None, tpm: int | None, clock: Callable[[], float]) -> None:
        self.rpm = rpm
        self.tpm = tpm
        self._clock = clock
        self._log: deque[tuple[float, int]] = deque()
        self._tokens = 0

    def admit(self, tokens: int) -> Refusal | None:
        """Record a request of ``tokens`` tokens, or say why it must wait.

        A request larger than ``tpm`` on its own is the caller's problem to detect
        first (it would never fit); see :meth:`too_large`.
        """
        if self.rpm is None and self.tpm is None:
            return None
        now = self._clock()
        log = self._log
        while log and log[0][0] <= now - WINDOW:
            self._tokens -= log.popleft()[1]
        if self.rpm is not None and len(log) >= self.rpm:
            # The oldest request that must leave the window for one more to fit.
            reset = log[len(log) - self.rpm][0] + WINDOW
            return Refusal("requests", self.rpm, 0, reset - now, reset)
        if self.tpm is not None and self._tokens + tokens > self.tpm:
            excess = self._tokens + tokens - self.tpm
            reset = now
            for stamp, used in log:
                excess -= used
                reset = stamp + WINDOW
                if excess <= 0:
                    break
            remaining = max(0, self.tpm - self._tokens)
            return Refusal("tokens", self.tpm, remaining, reset - now, reset)
        log.append((now, tokens))
        self._tokens += tokens
        return None

    def too_large(self, tokens: int) -> bool:
        """Whether a request of ``tokens`` tokens can never fit the TPM limit."""
        return self.tpm is not None and tokens > self.tpm

    def reset(self) -> None:
        """Forget every admitted request."""
        self._log.clear()
        self._tokens = 0
