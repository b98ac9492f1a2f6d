from __future__ import annotations

import msgspec
import pytest

from asyncembed import (
    EmbeddingRequest,
    EmbeddingResponse,
    MaxPrice,
    Percentiles,
    ProviderPreferences,
    ProviderSort,
)
from asyncembed._codec import encode_request
from asyncembed._models import ErrorBody

FULL_PROVIDER = ProviderPreferences(
    order=["openai", "azure"],
    only=["openai"],
    ignore=["deepinfra"],
    allow_fallbacks=False,
    require_parameters=True,
    data_collection="deny",
    zdr=True,
    enforce_distillable_text=False,
    quantizations=["fp16", "int8"],
    sort=ProviderSort(by="price", partition="model"),
    max_price=MaxPrice(prompt=0.02, completion="1", image=0, audio=0, request="0.001"),
    preferred_min_throughput=Percentiles(p50=100, p90=50),
    preferred_max_latency=2.5,
)


@pytest.mark.parametrize(
    "value",
    ["one text", ["a", "b"], [1, 2, 3], [[1, 2], [3]]],
    ids=["str", "list[str]", "tokens", "list[tokens]"],
)
def test_request_input_forms_round_trip(value: object) -> None:
    body = encode_request(EmbeddingRequest(input=value, model="m"))  # type: ignore[arg-type]
    assert msgspec.json.decode(body) == {"input": value, "model": "m"}


def test_unset_fields_are_omitted() -> None:
    body = msgspec.json.decode(encode_request(EmbeddingRequest(input="x", model="m")))
    assert set(body) == {"input", "model"}
    body = msgspec.json.decode(
        encode_request(
            EmbeddingRequest(input="x", model="m", provider=ProviderPreferences(zdr=False))
        )
    )
    assert body["provider"] == {"zdr": False}  # False is sent; only None is omitted


def test_every_request_field_is_sent() -> None:
    request = EmbeddingRequest(
        input=["a"],
        model="m",
        encoding_format="base64",
        dimensions=256,
        input_type="search_query",
        user="u-1",
        provider=FULL_PROVIDER,
    )
    body = msgspec.json.decode(encode_request(request))
    assert body["provider"]["sort"] == {"by": "price", "partition": "model"}
    assert body["provider"]["max_price"] == {
        "prompt": 0.02,
        "completion": "1",
        "image": 0,
        "audio": 0,
        "request": "0.001",
    }
    assert body["provider"]["preferred_min_throughput"] == {"p50": 100, "p90": 50}
    assert body["provider"]["preferred_max_latency"] == 2.5
    assert (
        msgspec.json.decode(msgspec.json.encode(FULL_PROVIDER), type=ProviderPreferences)
        == FULL_PROVIDER
    )


def test_sort_string_form() -> None:
    body = msgspec.json.decode(
        encode_request(
            EmbeddingRequest(input="x", model="m", provider=ProviderPreferences(sort="throughput"))
        )
    )
    assert body["provider"] == {"sort": "throughput"}


def test_response_tolerates_unknown_and_missing_optional_fields() -> None:
    raw = (
        b'{"object":"list","model":"m","provider":"OpenAI","data":[{"object":"embedding",'
        b'"embedding":[0.5,1.5],"extra":1}],"usage":{"prompt_tokens":3,"total_tokens":3,'
        b'"is_byok":false,"cost_details":{"upstream_inference_cost":1}},"new_field":[1]}'
    )
    response = msgspec.json.decode(raw, type=EmbeddingResponse)
    assert response.id is None
    assert response.data[0].index is None
    assert response.usage is not None and response.usage.cost is None
    assert response.provider == "OpenAI"


def test_error_envelope_struct() -> None:
    raw = (
        b'{"error":{"code":429,"message":"slow down","metadata":{"headers":'
        b'{"X-RateLimit-Reset":"1765661760000"}},"availability":{"code":"capacity_exhausted",'
        b'"retryable":true,"retry_after":3}},"user_id":"u"}'
    )
    body = msgspec.json.decode(raw, type=ErrorBody)
    assert body.error is not None
    assert body.error.code == 429
    assert body.error.availability is not None
    assert body.error.availability.retryable is True
    assert body.error.availability.retry_after == 3


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: ProviderPreferences(order="openai"), "ProviderPreferences.order"),  # type: ignore[arg-type]
        (lambda: ProviderPreferences(data_collection="maybe"), "data_collection"),  # type: ignore[arg-type]
        (lambda: ProviderPreferences(zdr="yes"), "ProviderPreferences.zdr"),  # type: ignore[arg-type]
        (lambda: ProviderPreferences(only=["a", 2]), "ProviderPreferences.only"),  # type: ignore[list-item]
        (lambda: ProviderPreferences(preferred_max_latency="fast"), "preferred_max_latency"),  # type: ignore[arg-type]
        (lambda: MaxPrice(prompt=[1]), "MaxPrice.prompt"),  # type: ignore[arg-type]
        (lambda: Percentiles(p50="x"), "Percentiles.p50"),  # type: ignore[arg-type]
        (lambda: ProviderSort(by="price", partition="all"), "ProviderSort.partition"),  # type: ignore[arg-type]
    ],
)
def test_provider_preferences_are_checked_when_built(build: object, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        build()  # type: ignore[operator]


def test_valid_provider_preferences_are_accepted() -> None:
    prefs = ProviderPreferences(
        order=["openai"],
        data_collection="deny",
        zdr=True,
        sort=ProviderSort(by="price", partition="model"),
        max_price=MaxPrice(prompt=0.1, completion="0.2"),
        preferred_max_latency=Percentiles(p50=1.5),
        preferred_min_throughput=100,
    )
    assert prefs.zdr is True and prefs.max_price is not None
