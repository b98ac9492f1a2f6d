"""Counters kept while an Embedder runs, and the frozen snapshot users read."""

from __future__ import annotations

from dataclasses import dataclass, fields

__all__ = ["Counters", "Stats"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Stats:
    """A snapshot of an Embedder's activity (``embedder.stats``); cheap to read in a loop.

    Attributes:
        requests: HTTP requests sent, retries included.
        inputs: Inputs embedded successfully (each distinct input once per request).
        retries: Requests retried (after 429, 5xx, connection errors...).
        rate_limited: 429 answers received.
        errors: Requests that ended in an error of any kind (retried or not).
        splits: Batches bisected to isolate a bad input.
        deduplicated: Calls answered by a request already made for the same text.
        prompt_tokens: ``usage.prompt_tokens`` summed over responses.
        total_tokens: ``usage.total_tokens`` summed over responses.
        cost: ``usage.cost`` summed over responses, in credits.
        cache_hits: Inputs answered from the cache.
        cache_misses: Inputs looked up in the cache and not found.
        max_batch_size: The largest number of inputs sent in one request.
        queued: Texts in the batch being filled now (not yet handed to the scheduler).
        waiting: Requests waiting for a slot now (concurrency, RPM/TPM, a 429 pause).
        in_flight: Requests in flight now.
        concurrency: The current (adaptive) concurrency limit.
        max_concurrency: The configured concurrency limit.
        encoding_format: The encoding in use now ("float" after a base64 fallback).
        batch_cap: The most inputs sent per request since the server refused a larger
            batch (a learned size cap); ``None`` while no cap was seen.
        pending: Distinct texts of ``embed()`` calls waiting for their vector now
            (queued or in flight).
        active: The work ``aclose()`` waits for: batch timers and sends, and
            ``embed_many()``/``stream()`` block/``create()`` calls in progress (an
            ``embed()`` caller waits on a send); 0 after closing: nothing left running.
        paused_for: Seconds left in the pause a 429 imposed on every request (0.0 when
            none).
        chars_per_token: The calibrated characters-per-token ratio that token
            estimates (batch ``max_tokens``, TPM windows) use, learned from ``usage``.
    """

    requests: int = 0
    inputs: int = 0
    retries: int = 0
    rate_limited: int = 0
    errors: int = 0
    splits: int = 0
    deduplicated: int = 0
    prompt_tokens: int = 0
    total_tokens: int = 0
    cost: float = 0.0
    cache_hits: int = 0
    cache_misses: int = 0
    max_batch_size: int = 0
    queued: int = 0
    waiting: int = 0
    in_flight: int = 0
    concurrency: int = 0
    max_concurrency: int = 0
    encoding_format: str = "base64"
    batch_cap: int | None = None
    pending: int = 0
    active: int = 0
    paused_for: float = 0.0
    chars_per_token: float = 0.0

    @property
    def mean_batch_size(self) -> float:
        """Inputs per successful request, on average (0.0 before any)."""
        successes = self.requests - self.errors
        return self.inputs / successes if successes > 0 else 0.0


class Counters:
    """The mutable counters behind :class:`Stats` (one per Embedder, event-loop only)."""

    __slots__ = (
        "cache_hits",
        "cache_misses",
        "cost",
        "deduplicated",
        "errors",
        "inputs",
        "max_batch_size",
        "prompt_tokens",
        "rate_limited",
        "requests",
        "retries",
        "splits",
        "total_tokens",
    )

    def __init__(self) -> None:
        for name in self.__slots__:
            setattr(self, name, 0)
        self.cost = 0.0

    requests: int
    inputs: int
    retries: int
    rate_limited: int
    errors: int
    splits: int
    deduplicated: int
    prompt_tokens: int
    total_tokens: int
    cost: float
    cache_hits: int
    cache_misses: int
    max_batch_size: int

    def snapshot(self, **live: float | str | None) -> Stats:
        """Freeze the counters, plus the live gauges passed by the Embedder."""
        values = {name: getattr(self, name) for name in self.__slots__}
        return Stats(**values, **live)  # type: ignore[arg-type]


_COUNTED = {f.name for f in fields(Stats)}
assert set(Counters.__slots__) <= _COUNTED, "every counter must appear in Stats"
