from __future__ import annotations

import dataclasses

import pytest

from asyncembed import Batching, Limits, Retry, Timeouts


def test_defaults_suit_openrouter() -> None:
    assert Batching().max_size == 256
    assert Batching().max_tokens <= 300_000  # OpenAI's per-request cap
    assert Limits().max_concurrency == 16
    assert Limits().requests_per_minute is None
    # A 60 s rate-limit window must be survivable with the default policy.
    assert Retry().timeout > 60 and Retry().attempts >= 5


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda: Batching(max_wait=-1.0), "max_wait must be >= 0, got -1.0"),
        (lambda: Batching(max_size=0), "max_size must be >= 1, got 0"),
        (lambda: Batching(max_tokens=0), "max_tokens must be >= 1, got 0"),
        (lambda: Batching(max_input_tokens=0), "max_input_tokens must be > 0, got 0"),
        (lambda: Batching(chars_per_token=float("nan")), "chars_per_token must be > 0"),
        (lambda: Limits(max_concurrency=0), "max_concurrency must be >= 1, got 0"),
        (lambda: Limits(requests_per_minute=0), "requests_per_minute must be > 0, got 0"),
        (lambda: Limits(tokens_per_minute=-5), "tokens_per_minute must be > 0, got -5"),
        (lambda: Limits(max_cost=-1.0), "max_cost must be >= 0, got -1.0"),
        (lambda: Retry(attempts=0), "attempts must be >= 1, got 0"),
        (lambda: Retry(timeout=0), "timeout must be > 0, got 0"),
        (lambda: Retry(max_delay=-1), "max_delay must be >= 0, got -1"),
        (lambda: Timeouts(request=0), "request must be > 0, got 0"),
    ],
)
def test_out_of_range_values_raise_value_error(factory: object, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        factory()  # type: ignore[operator]


def test_config_objects_are_frozen_and_keyword_only() -> None:
    batching = Batching(max_size=10)
    with pytest.raises(dataclasses.FrozenInstanceError):
        batching.max_size = 5  # type: ignore[misc]
    with pytest.raises(TypeError):
        Batching(10)  # type: ignore[call-arg]
    assert repr(Limits(max_concurrency=4)).startswith("Limits(max_concurrency=4")
