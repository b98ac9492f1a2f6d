"""What the local server records: one :class:`RequestRecord` per request, and counters."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from aiohttp import web

from ._wire import ParsedRequest

__all__ = ["Recorder", "RequestRecord", "ServerStats"]


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One request the server received.

    Attributes:
        path: The URL path.
        status: The HTTP status answered (200 also for ``error_200``; 0 for ``reset``).
        model: The request's model, or ``None`` if the body was not valid.
        inputs: The inputs (texts or token lists), or ``None`` if the body was not
            valid or ``record_inputs=False``.
        n_inputs: The number of inputs (0 if the body was not valid).
        encoding_format: ``"float"``, ``"base64"``, or ``None`` when not sent.
        dimensions: The request's ``dimensions``, or ``None`` when not sent.
        tokens: The request's token count (0 if the body was not valid).
        fault: The fault name applied (``"429"``, ``"truncated"``...), ``"rate_limited"``
            for a 429 from the RPM/TPM limits, or ``None``.
        headers: The request headers, without ``Authorization``.
        arrived: The server clock (``clock()``) when the request arrived.
    """

    path: str
    status: int
    model: str | None
    inputs: list[str] | list[list[int]] | None
    n_inputs: int
    encoding_format: str | None
    dimensions: int | None
    tokens: int
    fault: str | None
    headers: Mapping[str, str]
    arrived: float


@dataclass(frozen=True, slots=True)
class ServerStats:
    """A snapshot of the server's counters since start (or :meth:`LocalServer.reset_stats`).

    Attributes:
        requests: Embedding requests received, whatever their outcome.
        inputs: Inputs in requests that passed validation.
        embedded: Inputs answered with a 200 carrying vectors.
        tokens: Tokens billed (``usage.prompt_tokens`` of 200 answers).
        cost: Cost billed (``usage.cost`` of 200 answers).
        in_flight: Requests being handled now.
        max_concurrent: The most requests handled at once.
        statuses: Count of answers per HTTP status.
        faults: Count of applied faults per name.
    """

    requests: int
    inputs: int
    embedded: int
    tokens: int
    cost: float
    in_flight: int
    max_concurrent: int
    statuses: Mapping[int, int]
    faults: Mapping[str, int]


class Recorder:
    """The server's counters and request log. Single-threaded: called from the event loop."""

    __slots__ = (
        "cost",
        "embedded",
        "faults",
        "in_flight",
        "inputs",
        "max_concurrent",
        "record_inputs",
        "record_requests",
        "records",
        "requests",
        "statuses",
        "tokens",
    )

    def __init__(self, *, record_requests: bool, record_inputs: bool) -> None:
        self.record_requests = record_requests
        self.record_inputs = record_inputs
        self.in_flight = 0
        self.reset()

    def reset(self) -> None:
        """Zero the counters and forget the records."""
        self.records: list[RequestRecord] = []
        self.requests = 0
        self.inputs = 0
        self.embedded = 0
        self.tokens = 0
        self.cost = 0.0
        self.statuses: Counter[int] = Counter()
        self.faults: Counter[str] = Counter()
        # Requests still in flight keep counting; the peak restarts from them.
        self.max_concurrent = self.in_flight

    def enter(self) -> None:
        """A request arrived."""
        self.requests += 1
        self.in_flight += 1
        if self.in_flight > self.max_concurrent:
            self.max_concurrent = self.in_flight

    def leave(self) -> None:
        """A request is done (answered, refused, or cancelled)."""
        self.in_flight -= 1

    def billed(self, inputs: int, tokens: int, cost: float) -> None:
        """A 200 with ``inputs`` vectors (0 for empty data) and this usage went out whole."""
        self.embedded += inputs
        self.tokens += tokens
        self.cost += cost

    def finish(
        self,
        request: web.Request,
        arrived: float,
        parsed: ParsedRequest | None,
        status: int,
        tokens: int,
        fault: str | None,
    ) -> None:
        """Count the answer's status and, if enabled, keep a :class:`RequestRecord`."""
        self.statuses[status] += 1
        if not self.record_requests:
            return
        headers = {k: v for k, v in request.headers.items() if k.lower() != "authorization"}
        self.records.append(
            RequestRecord(
                path=request.path,
                status=status,
                model=parsed.model if parsed else None,
                inputs=parsed.items if parsed and self.record_inputs else None,
                n_inputs=len(parsed.items) if parsed else 0,
                encoding_format=parsed.encoding_format if parsed else None,
                dimensions=parsed.dimensions if parsed else None,
                tokens=tokens,
                fault=fault,
                headers=headers,
                arrived=arrived,
            )
        )

    def snapshot(self) -> ServerStats:
        """The counters, frozen."""
        return ServerStats(
            requests=self.requests,
            inputs=self.inputs,
            embedded=self.embedded,
            tokens=self.tokens,
            cost=self.cost,
            in_flight=self.in_flight,
            max_concurrent=self.max_concurrent,
            statuses=MappingProxyType(dict(self.statuses)),
            faults=MappingProxyType(dict(self.faults)),
        )
