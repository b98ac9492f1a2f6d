"""Retry policy as data: a :class:`Retry` becomes a tenacity ``AsyncRetrying``.

tenacity runs the loop; this module only says which errors are worth another try,
how long to wait (the server's delay when it names one, else full jitter), and when
to give up (attempts, the policy's time budget, and the callers' own deadline).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable

import tenacity

from ._clock import Clock
from ._config import Retry
from ._exceptions import APIConnectionError, APIStatusError, ProtocolError

__all__ = ["budget_end", "is_retryable", "retrying"]

logger = logging.getLogger("asyncembed")

_JITTER = random.Random()  # one for all requests: seeding one per request costs more


def is_retryable(exc: BaseException) -> bool:
    """Whether another attempt can help: by class, or by the body's availability flag."""
    if isinstance(exc, APIStatusError | APIConnectionError | ProtocolError):
        return exc.retryable
    return False


def budget_end(
    policy: Retry,
    created: float,
    sent: float | None,
    deadline: Callable[[], float | None] | None,
) -> float:
    """The latest time a request may still wait: its retry budget (from its first send,
    else its creation) or its callers' deadline, whichever ends first."""
    limit = (created if sent is None else sent) + policy.timeout
    latest = deadline() if deadline is not None else None
    return limit if latest is None else min(limit, latest)


def retrying(
    policy: Retry,
    clock: Clock,
    *,
    created: float | None = None,
    deadline: Callable[[], float | None] | None = None,
    started: Callable[[], float | None] = lambda: None,
    on_retry: Callable[[BaseException, float], None] | None = None,
    rng: random.Random | None = None,
) -> tenacity.AsyncRetrying:
    """Build the retry loop for one request.

    Args:
        policy: Attempts, time budget and backoff.
        clock: Time for the budget and the sleeps (``clock.sleep`` does the waiting).
        created: When the request was created (``clock.now()``; default: now), the
            start of its budget until it is first sent.
        deadline: Returns the latest ``clock.now()`` any caller still waits for, read
            before each sleep (callers may join while the request is in flight); no
            sleep is started that would end after it. ``None`` (or a ``None`` reading):
            no caller deadline.
        started: When the first attempt was actually sent (after its wait for a
            slot), so time spent queued behind our own limits is not charged to the
            retry budget; ``None`` until then (the loop's start is used instead).
        on_retry: Called with the error and the delay before each sleep.
        rng: Random source for the jitter (for reproducible tests).

    The returned object re-raises the last error when it gives up.
    """
    if created is None:
        created = clock.now()
    jitter = rng or _JITTER

    def should_retry(state: tenacity.RetryCallState) -> bool:
        exc = state.outcome.exception() if state.outcome else None
        return exc is not None and is_retryable(exc)

    def wait(state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        server_delay = getattr(exc, "retry_after", None)
        if isinstance(server_delay, int | float):
            return float(server_delay)
        # AWS "Full Jitter": uniform(0, min(cap, base * 2**n)).
        ceiling = min(policy.max_delay, policy.initial_delay * 2 ** (state.attempt_number - 1))
        return jitter.uniform(0.0, ceiling)

    def stop(state: tenacity.RetryCallState) -> bool:
        if state.attempt_number >= policy.attempts:
            return True
        # Fail fast rather than sleep past the budget or past every caller's deadline.
        sent = started()
        limit = budget_end(policy, created, sent, deadline)
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, APIConnectionError) and exc.unreachable:
            # Never reached: a wrong URL or a server not started, not a passing fault.
            limit = min(limit, (created if sent is None else sent) + policy.unreachable_timeout)
        return clock.now() + (state.upcoming_sleep or 0.0) > limit

    def before_sleep(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        assert exc is not None
        delay = state.upcoming_sleep
        logger.info(
            "retrying after %s (attempt %d of %d) in %.3fs",
            _describe(exc),
            state.attempt_number,
            policy.attempts,
            delay,
        )
        if on_retry is not None:
            on_retry(exc, delay)

    return tenacity.AsyncRetrying(
        sleep=clock.sleep,
        stop=stop,
        wait=wait,
        retry=should_retry,
        before_sleep=before_sleep,
        reraise=True,
    )


def _describe(exc: BaseException) -> str:
    if isinstance(exc, APIStatusError):
        return f"HTTP {exc.status} {type(exc).__name__}"
    return type(exc).__name__
