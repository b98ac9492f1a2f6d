"""Inputs at the call site: type and size checks, and the cheap token estimate.

Everything here runs before anything is queued, so a bad input fails alone, in the
caller's own frame, and costs nobody else anything.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from ._config import Batching
from ._exceptions import InputTooLongError, InvalidInputError

__all__ = ["TokenEstimator", "check_many", "check_tokens", "chunk"]

_MIN_RATIO, _MAX_RATIO = 0.5, 20.0
_SMOOTHING = 0.2


class TokenEstimator:
    """Estimates tokens as ``len(text) / chars_per_token``, calibrated from ``usage``.

    Real tokenizers cost far more than the request itself; a ratio is enough to size
    batches and budgets, and each response's ``prompt_tokens`` corrects it (an
    exponential moving average, clamped to a sane range).
    """

    __slots__ = ("_batching", "chars_per_token")

    def __init__(self, batching: Batching) -> None:
        self._batching = batching
        self.chars_per_token = batching.chars_per_token

    def estimate(self, text: str) -> int:
        """Estimated tokens of one text (at least 1)."""
        return int(len(text) / self.chars_per_token) + 1

    def costs(self, texts: Sequence[str]) -> list[int]:
        """:meth:`estimate` of each text, in one pass."""
        ratio = self.chars_per_token
        return [int(len(text) / ratio) + 1 for text in texts]

    def total(self, inputs: Sequence[str] | Sequence[Sequence[int]]) -> int:
        """Estimated tokens of a request's inputs (token lists count exactly)."""
        if inputs and isinstance(inputs[0], str):
            return int(sum(map(len, inputs)) / self.chars_per_token) + len(inputs)
        return sum(map(len, inputs))

    @property
    def max_input_tokens(self) -> int | None:
        """``Batching.max_input_tokens``: the longest input accepted."""
        return self._batching.max_input_tokens

    def calibrate(self, characters: int, prompt_tokens: float) -> None:
        """Fold one response's real token count into the ratio."""
        if characters <= 0 or prompt_tokens <= 0:
            return
        observed = min(_MAX_RATIO, max(_MIN_RATIO, characters / prompt_tokens))
        self.chars_per_token += _SMOOTHING * (observed - self.chars_per_token)

    def check_text(self, text: object, index: int | None = None, label: str = "text") -> str:
        """Validate one text; return it (cut short when ``Batching.truncate`` is set).

        ``index`` and ``label`` name the input in messages (``texts[3]``); they are
        formatted only when something is wrong, since this runs for every text.

        Raises:
            TypeError: not a ``str``.
            InvalidInputError: empty or only whitespace (its ``index`` is set).
            InputTooLongError: over ``Batching.max_input_tokens`` (estimated).
        """
        if not isinstance(text, str):
            raise TypeError(f"{_name(label, index)} must be a str, got {type(text).__name__}")
        if not text or text.isspace():
            # One rule with the CLI's readers: whitespace embeds to noise, never on purpose.
            what = "empty" if not text else "only whitespace"
            raise InvalidInputError(
                f"{_name(label, index)} is {what}; empty texts cannot be embedded", index=index
            )
        limit = self._batching.max_input_tokens
        if limit is not None and len(text) > limit * self.chars_per_token:
            estimated = self.estimate(text)
            if estimated > limit:
                if self._batching.truncate:
                    # The longest prefix whose estimate is within the limit.
                    return text[: math.ceil(limit * self.chars_per_token) - 1]
                raise InputTooLongError(
                    f"{_name(label, index)} is about {estimated} tokens, over "
                    f"max_input_tokens={limit} (pass Batching(truncate=True) to cut it instead)",
                    index=index,
                )
        return text


def _name(label: str, index: int | None) -> str:
    return label if index is None else f"{label}[{index}]"


def check_tokens(
    tokens: object, where: str = "input", max_tokens: int | None = None, index: int | None = None
) -> list[int]:
    """Validate one token-id list; return it as a list.

    Raises:
        TypeError: not a list of ints.
        InvalidInputError: empty.
        InputTooLongError: longer than ``max_tokens`` (``Batching.max_input_tokens``);
            token lists are never truncated.
    """
    if not isinstance(tokens, list | tuple):
        raise TypeError(f"{where} must be a list of token ids, got {type(tokens).__name__}")
    if not tokens:
        raise InvalidInputError(f"{where} is an empty token list")
    for j, token in enumerate(tokens):
        if type(token) is not int:
            raise TypeError(f"{where}[{j}] must be an int token id, got {type(token).__name__}")
    if max_tokens is not None and len(tokens) > max_tokens:
        raise InputTooLongError(
            f"{where} has {len(tokens)} tokens, over max_input_tokens={max_tokens}", index=index
        )
    return list(tokens)


def check_many(texts: object, estimator: TokenEstimator) -> list[Any]:
    """Validate a list of texts or of token-id lists (not mixed); return them as a list.

    Raises:
        TypeError: not a sequence, or an item of the wrong type (its index is named).
        InvalidInputError: an empty list, or an empty/over-long item.
    """
    if isinstance(texts, str | bytes) or not isinstance(texts, Sequence):
        raise TypeError(f"expected a list of texts, got {type(texts).__name__}")
    if not texts:
        raise InvalidInputError("expected at least one text, got an empty list")
    if isinstance(texts[0], str):
        check = estimator.check_text
        return [check(t, i, "texts") for i, t in enumerate(texts)]
    if isinstance(texts[0], list | tuple):
        limit = estimator.max_input_tokens
        return [check_tokens(t, f"texts[{i}]", limit, i) for i, t in enumerate(texts)]
    raise TypeError(f"texts[0] must be a str or a token list, got {type(texts[0]).__name__}")


def chunk(
    inputs: Sequence[Any], estimator: TokenEstimator, batching: Batching
) -> Iterable[tuple[int, int]]:
    """Split inputs into ``(start, end)`` runs under ``max_size`` and ``max_tokens``."""
    max_size, max_tokens = batching.max_size, batching.max_tokens
    n = len(inputs)
    if n and isinstance(inputs[0], str):
        costs = estimator.costs(inputs)
    else:
        costs = list(map(len, inputs))
    # Fast path: no block of max_size inputs reaches max_tokens (the common case).
    if all(sum(costs[s : s + max_size]) <= max_tokens for s in range(0, n, max_size)):
        yield from ((s, min(n, s + max_size)) for s in range(0, n, max_size))
        return
    start, tokens = 0, 0
    for i, cost in enumerate(costs):
        if i > start and (i - start >= max_size or tokens + cost > max_tokens):
            yield start, i
            start, tokens = i, 0
        tokens += cost
    if start < n:
        yield start, n
