"""Configuration objects: frozen, keyword-only, validated at construction."""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Batching", "Limits", "Retry", "Timeouts"]


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _positive(name: str, value: float | None, *, allow_zero: bool = False) -> None:
    if value is None:
        return
    ok = (value >= 0 if allow_zero else value > 0) and math.isfinite(value)
    _check(ok, f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Batching:
    """How single-text calls are coalesced into requests.

    A batch is sent when it holds ``max_size`` inputs, or when adding the next input
    would pass ``max_tokens`` estimated tokens, or ``max_wait`` seconds after its first
    input arrived, whichever comes first. With ``flush_when_idle`` (the default), a
    batch started while no other batch is in flight is sent at the end of the current
    event-loop tick instead: a lone call pays no window, calls made in the same tick
    still share a request, and under load (something always in flight) batching is
    unchanged.

    Usage:

    | field | default | meaning |
    |---|---|---|
    | ``max_size`` | 256 | inputs per request (OpenAI allows 2048; Gemini 100, Vertex 250) |
    | ``max_tokens`` | 250_000 | estimated tokens per request (OpenAI caps at 300k) |
    | ``max_wait`` | 0.005 | seconds a batch waits for company while another is in flight |
    | ``flush_when_idle`` | True | no window when nothing is in flight (see above) |
    | ``max_input_tokens`` | 8192 | estimated tokens per input; ``None``: no check |
    | ``truncate`` | False | cut over-long inputs instead of raising InputTooLongError |
    | ``chars_per_token`` | 4.0 | the token estimate's starting ratio; calibrated from ``usage`` |

    Raises:
        ValueError: a field is out of range.
    """

    max_size: int = 256
    max_tokens: int = 250_000
    max_wait: float = 0.005
    flush_when_idle: bool = True
    max_input_tokens: int | None = 8192
    truncate: bool = False
    chars_per_token: float = 4.0

    def __post_init__(self) -> None:
        _check(self.max_size >= 1, f"max_size must be >= 1, got {self.max_size!r}")
        _check(self.max_tokens >= 1, f"max_tokens must be >= 1, got {self.max_tokens!r}")
        _positive("max_wait", self.max_wait, allow_zero=True)
        _positive("max_input_tokens", self.max_input_tokens)
        _positive("chars_per_token", self.chars_per_token)


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """Client-side limits: concurrency, request and token budgets, and a spending cap.

    Usage:

    | field | default | meaning |
    |---|---|---|
    | ``max_concurrency`` | 16 | requests in flight at most (lowered on 429, AIMD) |
    | ``requests_per_minute`` | None | requests in any 60 s window; ``None``: unlimited |
    | ``tokens_per_minute`` | None | estimated tokens in any 60 s window; ``None``: unlimited |
    | ``max_cost`` | None | send no request whose estimated cost would pass this (credits) |

    Raises:
        ValueError: a field is out of range.
    """

    max_concurrency: int = 16
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    max_cost: float | None = None

    def __post_init__(self) -> None:
        _check(
            self.max_concurrency >= 1,
            f"max_concurrency must be >= 1, got {self.max_concurrency!r}",
        )
        _positive("requests_per_minute", self.requests_per_minute)
        _positive("tokens_per_minute", self.tokens_per_minute)
        _positive("max_cost", self.max_cost, allow_zero=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class Retry:
    """When and how long failed requests are retried.

    Retried: 408, 429, 500, 502, 503, 504, 524, 529, connection errors, timeouts,
    truncated bodies, errors whose body says ``availability.retryable: true``, and (once)
    a 200 whose body cannot be trusted. The wait is the server's delay when it names
    one, otherwise exponential backoff with full jitter: ``uniform(0, min(max_delay,
    initial_delay * 2**n))`` (AWS "Full Jitter"). A server delay that would end past
    ``timeout`` fails at once with the server's error instead of sleeping in vain.

    Usage:

    | field | default | meaning |
    |---|---|---|
    | ``attempts`` | 8 | tries per request, the first included; 1 disables retries |
    | ``timeout`` | 180.0 | seconds from the first try after which no retry starts |
    | ``initial_delay`` | 0.5 | backoff scale, seconds |
    | ``max_delay`` | 60.0 | backoff cap, seconds (a server's own delay is not capped) |
    | ``unreachable_timeout`` | 10.0 | seconds to retry a server never reached (see below) |

    A server that has never answered this client and refuses connections (or whose
    name does not resolve) is most likely a wrong URL or a server not started: such
    errors are retried for ``unreachable_timeout`` seconds only. Once it has answered,
    connection errors are retried like any other fault.

    Raises:
        ValueError: a field is out of range.
    """

    attempts: int = 8
    timeout: float = 180.0
    initial_delay: float = 0.5
    max_delay: float = 60.0
    unreachable_timeout: float = 10.0

    def __post_init__(self) -> None:
        _check(self.attempts >= 1, f"attempts must be >= 1, got {self.attempts!r}")
        _positive("unreachable_timeout", self.unreachable_timeout, allow_zero=True)
        _positive("timeout", self.timeout)
        _positive("initial_delay", self.initial_delay, allow_zero=True)
        _positive("max_delay", self.max_delay, allow_zero=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class Timeouts:
    """Per-request HTTP timeouts, in seconds (``None``: no limit).

    Usage:

    | field | default | meaning |
    |---|---|---|
    | ``connect`` | 10.0 | to open a connection |
    | ``request`` | 120.0 | for one whole request, body included (large batches are slow) |

    Raises:
        ValueError: a field is out of range.
    """

    connect: float | None = 10.0
    request: float | None = 120.0

    def __post_init__(self) -> None:
        _positive("connect", self.connect)
        _positive("request", self.request)
