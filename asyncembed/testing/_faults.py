"""Fault injection for the local server: what can go wrong, scripted or at random.

A :class:`Fault` says how one request goes wrong. Faults reach a request in two ways:
a script (``LocalServer(script=[...])`` or ``server.script([...])``), consumed one entry
per request, and, once the script is empty, :class:`Faults` probabilities drawn from a
seeded RNG, so a run is reproducible for a given request order.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal, TypeAlias, cast, get_args

__all__ = ["Fault", "FaultKind", "FaultPlan", "FaultSpec", "Faults"]

FaultKind: TypeAlias = Literal[
    "ok",
    "status",
    "html_502",
    "error_200",
    "empty_data",
    "shuffled",
    "bad_index",
    "truncated",
    "reset",
    "slow",
    "base64_ignored",
    "nan",
    "wrong_width",
    "missing_item",
]
# Type aliases are shared typing objects: the export test and help() read __doc__.
FaultKind.__doc__ = """The kinds of :class:`Fault`.

- ``ok``: no fault (a placeholder in a script).
- ``status``: an error status with OpenRouter's JSON envelope (``Fault.status(code)``).
- ``html_502``: a 502 whose body is an HTML page, not JSON.
- ``error_200``: HTTP 200 whose body is ``{"error": {"code": 502, ...}}``.
- ``empty_data``: HTTP 200 with ``"data": []``.
- ``shuffled``: the items of ``data`` in a random order, each with its correct ``index``.
- ``bad_index``: one item's ``index`` duplicates another's, so one index is missing.
- ``truncated``: HTTP 200 with the full ``Content-Length``, half the body, then a close.
- ``reset``: the connection is closed without an answer.
- ``slow``: the normal answer after an extra ``delay`` seconds.
- ``base64_ignored``: float arrays even when base64 was asked for.
- ``nan``: a non-finite value in the first vector (``null`` in JSON, NaN in base64).
- ``wrong_width``: every vector one longer than the model's (a provider fallback).
- ``missing_item``: the last item of ``data`` left out (a short answer).

A 429 or 503 ``status`` fault can send its ``Retry-After`` as an HTTP date
(``Fault.status(429, retry_after=3600, retry_after_date=True)``); a very long one is how
a provider says "not this hour".
"""

_KINDS: frozenset[str] = frozenset(get_args(FaultKind))
_RETRYABLE = frozenset({408, 429, 500, 502, 503, 504, 524, 529})
_ALIASES = {"502_html": "html_502", "429": "rate_limit"}


@dataclass(frozen=True, slots=True, kw_only=True)
class Fault:
    """How one request goes wrong. Build one with the class methods or :meth:`parse`.

    Usage:

    | spec | meaning |
    |---|---|
    | ``Fault.rate_limit(retry_after=0)`` or ``"429"`` | 429 with ``Retry-After`` |
    | ``Fault.status(503)``, ``503`` or ``"503"`` | that status, JSON envelope |
    | ``Fault.status(503, availability=True)`` | plus an ``error.availability`` object |
    | ``Fault(kind="slow", delay=0.5)`` or ``"slow"`` | answer late |
    | ``"truncated"``, ``"reset"``, ``"error_200"``... | see :data:`FaultKind` |

    Args:
        kind: One of :data:`FaultKind`.
        code: The HTTP status of a ``status`` fault (400-599).
        retry_after: Seconds sent as ``Retry-After`` (and in ``availability``);
            ``None`` sends no header.
        delay: Extra seconds before answering, for ``slow``.
        availability: Add OpenRouter's ``error.availability`` object to the error body.
        message: The error message; ``None`` uses a standard one for the status.
        retry_after_date: Send ``Retry-After`` as an HTTP date instead of seconds.

    Raises:
        ValueError: If a field is out of range or does not fit the kind.
    """

    kind: FaultKind
    code: int = 0
    retry_after: float | None = None
    delay: float = 1.0
    availability: bool = False
    message: str | None = None
    retry_after_date: bool = False

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; expected one of {sorted(_KINDS)}")
        if self.kind == "status" and not 400 <= self.code <= 599:
            raise ValueError(f"a status fault needs a code in 400..599, got {self.code}")
        if self.kind != "status" and self.code:
            raise ValueError(f"code is only for kind='status', got kind={self.kind!r}")
        if self.retry_after is not None and not self.retry_after >= 0:
            raise ValueError(f"retry_after must be >= 0 or None, got {self.retry_after}")
        if not self.delay >= 0:
            raise ValueError(f"delay must be >= 0, got {self.delay}")

    @classmethod
    def status(
        cls,
        code: int,
        *,
        retry_after: float | None = None,
        availability: bool = False,
        message: str | None = None,
        retry_after_date: bool = False,
    ) -> Fault:
        """An error response with status ``code`` and OpenRouter's JSON error envelope.

        Args:
            code: The HTTP status (400-599), e.g. 402, 413, 500, 503, 524, 529.
            retry_after: Seconds for the ``Retry-After`` header, or ``None`` for none.
            availability: Add an ``error.availability`` object.
            message: The error message; ``None`` uses a standard one.
            retry_after_date: Send ``Retry-After`` as an HTTP date (whole seconds).

        Raises:
            ValueError: If ``code`` is not in 400..599.
        """
        return cls(
            kind="status",
            code=code,
            retry_after=retry_after,
            availability=availability,
            message=message,
            retry_after_date=retry_after_date,
        )

    @classmethod
    def rate_limit(cls, *, retry_after: float | None = 1.0, availability: bool = False) -> Fault:
        """A 429 with ``Retry-After: retry_after`` (seconds; 0 allowed, ``None`` omits it)."""
        return cls.status(429, retry_after=retry_after, availability=availability)

    @classmethod
    def parse(cls, spec: FaultSpec) -> Fault:
        """Turn a script entry into a :class:`Fault`.

        Args:
            spec: A :class:`Fault`; an int status code; or a string: a kind name
                (``"slow"``, ``"reset"``...), ``"502_html"``, or a status code
                (``"429"`` gets ``Retry-After: 1``).

        Raises:
            ValueError: If the spec names no fault.
        """
        if isinstance(spec, Fault):
            return spec
        if isinstance(spec, bool):
            raise ValueError(f"not a fault spec: {spec!r}")
        if isinstance(spec, int):
            return cls.rate_limit() if spec == 429 else cls.status(spec)
        name = _ALIASES.get(spec.strip(), spec.strip())
        if name == "rate_limit":
            return cls.rate_limit()
        if name.isdigit():
            return cls.status(int(name))
        if name == "status" or name not in _KINDS:
            raise ValueError(
                f"unknown fault {spec!r}; expected a status code or one of "
                f"{sorted(_KINDS - {'status'})}"
            )
        return cls(kind=name)  # type: ignore[arg-type]  # checked against _KINDS above

    @property
    def name(self) -> str:
        """A short label: the status code for status faults (``"429"``), else the kind."""
        return str(self.code) if self.kind == "status" else self.kind

    @property
    def retryable(self) -> bool:
        """Whether OpenRouter marks this status as worth retrying (for ``availability``)."""
        return self.code in _RETRYABLE


FaultSpec: TypeAlias = Fault | FaultKind | str | int
FaultSpec.__doc__ = (
    "A script entry or a :class:`Faults` key: a :class:`Fault`, a kind name, or a status code."
)


# Mapping is invariant in its key type: accept plain dict[str, float] and friends too.
_Rates: TypeAlias = (
    Mapping[FaultSpec, float] | Mapping[str, float] | Mapping[int, float] | Mapping[Fault, float]
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Faults:
    """Random faults: each request gets at most one, with the given probabilities.

    Draws come from ``random.Random(seed)``, one per request that reaches the fault
    stage, so the same request order gives the same faults.

    Usage:

    | call | meaning |
    |---|---|
    | ``Faults(rates={"429": 0.05, "502": 0.02}, seed=1)`` | 5% 429s, 2% 502s |
    | ``Faults(rates={Fault.rate_limit(retry_after=0): 0.1})`` | a configured fault |
    | ``Faults.uniform(0.1)`` | 10% spread over 429, 502, 503 |

    Args:
        rates: Probability (0-1) per fault spec; they must add up to at most 1. Stored
            with :class:`Fault` keys (see :attr:`fault_rates`).
        seed: The RNG seed; ``None`` seeds from the OS (not reproducible).

    Raises:
        ValueError: If a spec is unknown, a rate is outside 0..1, or the sum is over 1.
    """

    rates: _Rates = field(default_factory=dict)
    seed: int | None = 0

    def __post_init__(self) -> None:
        parsed: dict[Fault, float] = {}
        items: Iterable[tuple[FaultSpec, float]] = self.rates.items()
        for spec, rate in items:
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"fault rate for {spec!r} must be in 0..1, got {rate}")
            fault = Fault.parse(spec)
            parsed[fault] = parsed.get(fault, 0.0) + rate
        total = sum(parsed.values())
        if total > 1.0 + 1e-9:
            raise ValueError(f"fault rates must add up to at most 1, got {total}")
        object.__setattr__(self, "rates", MappingProxyType(parsed))

    @property
    def fault_rates(self) -> Mapping[Fault, float]:
        """``rates`` with every key parsed into a :class:`Fault` (same specs merged)."""
        return cast("Mapping[Fault, float]", self.rates)

    @classmethod
    def uniform(
        cls,
        rate: float,
        *,
        kinds: Sequence[FaultSpec] = ("429", "502", "503"),
        seed: int | None = 0,
    ) -> Faults:
        """``rate`` split equally over ``kinds`` (by default the retryable 429, 502, 503).

        Raises:
            ValueError: If ``rate`` is outside 0..1 or ``kinds`` is empty or unknown.
        """
        if not kinds:
            raise ValueError("kinds must not be empty")
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"rate must be in 0..1, got {rate}")
        return cls(rates={kind: rate / len(kinds) for kind in kinds}, seed=seed)


class FaultPlan:
    """The faults still to come: a script queue, then random draws. Not thread-safe."""

    __slots__ = ("_faults", "_rng", "_script", "_table")

    def __init__(self, faults: Faults | None = None, script: Iterable[FaultSpec] = ()) -> None:
        self._faults = faults or Faults()
        self._rng = random.Random(self._faults.seed)
        self._table: list[tuple[float, Fault]] = []
        cumulative = 0.0
        for fault, rate in self._faults.fault_rates.items():
            cumulative += rate
            self._table.append((cumulative, fault))
        self._script: deque[Fault] = deque()
        self.extend(script)

    def extend(self, specs: Iterable[FaultSpec]) -> None:
        """Append entries to the script (each is parsed now, so errors surface here).

        Raises:
            ValueError: If an entry names no fault.
        """
        self._script.extend([Fault.parse(spec) for spec in specs])

    def drain(self) -> list[Fault]:
        """Remove and return the remaining script entries."""
        pending = list(self._script)
        self._script.clear()
        return pending

    @property
    def remaining(self) -> int:
        """How many script entries are still to be consumed."""
        return len(self._script)

    @property
    def rng(self) -> random.Random:
        """The seeded RNG, also used to shuffle ``data`` for ``shuffled`` faults."""
        return self._rng

    def next(self) -> Fault | None:
        """The fault for the next request, or ``None`` for a normal answer."""
        if self._script:
            fault = self._script.popleft()
            return None if fault.kind == "ok" else fault
        if not self._table:
            return None
        draw = self._rng.random()
        for bound, fault in self._table:
            if draw < bound:
                return None if fault.kind == "ok" else fault
        return None
