from __future__ import annotations

import base64
import email.utils
import json
from typing import Any

import anyio
import numpy as np
import pytest

import asyncembed
from asyncembed import _codec
from asyncembed._codec import Base64Unsupported, EmptyData, decode_response
from asyncembed._exceptions import error_for_status, parse_retry_after
from asyncembed._types import EncodingFormat

VECTORS = np.arange(12, dtype=np.float32).reshape(3, 4) / 10


@pytest.fixture(autouse=True, params=["in-one-go", "stepwise"])
def decode_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs twice: as small bodies are decoded, and as large ones are."""
    if request.param == "stepwise":
        monkeypatch.setattr(_codec, "LARGE_BODY", 0)
    return str(request.param)


def b64(row: np.ndarray) -> str:
    return base64.b64encode(row.astype("<f4").tobytes()).decode()


def body(items: list[dict[str, Any]], **extra: Any) -> bytes:
    return json.dumps({"object": "list", "model": "m", "data": items, **extra}).encode()


def decode(
    content: bytes,
    *,
    expected: int = 3,
    encoding: EncodingFormat = "float",
    status: int = 200,
    headers: dict[str, str] | None = None,
    dimensions: int | None = None,
) -> asyncembed.Embeddings:
    return decode_response(
        status, headers or {}, content, expected=expected, encoding=encoding, dimensions=dimensions
    )


def test_float_and_base64_decode_to_the_same_float32_matrix() -> None:
    floats = body([{"embedding": r.tolist(), "index": i} for i, r in enumerate(VECTORS)])
    b64s = body(
        [{"embedding": b64(r), "index": i} for i, r in enumerate(VECTORS)],
        usage={"prompt_tokens": 7, "total_tokens": 7, "cost": 1e-6},
        id="embd-1",
    )
    a = decode(floats)
    b = decode(b64s, encoding="base64")
    assert a.vectors.dtype == b.vectors.dtype == np.float32
    np.testing.assert_array_equal(a.vectors, VECTORS)
    np.testing.assert_array_equal(b.vectors, VECTORS)
    assert b.usage.prompt_tokens == 7 and b.usage.cost == 1e-6 and b.id == "embd-1"


def test_rows_are_placed_by_index_not_position() -> None:
    items = [{"embedding": VECTORS[i].tolist(), "index": i} for i in (2, 0, 1)]
    np.testing.assert_array_equal(decode(body(items)).vectors, VECTORS)


def test_without_any_index_position_is_used() -> None:
    items = [{"embedding": r.tolist()} for r in VECTORS]
    np.testing.assert_array_equal(decode(body(items)).vectors, VECTORS)


@pytest.mark.parametrize(
    "indices",
    [[0, 0, 1], [0, 1, 3], [0, 1, -1], [0, None, 2]],
    ids=["duplicate", "out-of-range", "negative", "partly-missing"],
)
def test_bad_index_coverage_is_a_protocol_error(indices: list[int | None]) -> None:
    items = [{"embedding": r.tolist(), "index": i} for r, i in zip(VECTORS, indices, strict=True)]
    with pytest.raises(asyncembed.ProtocolError, match="exactly once"):
        decode(body(items))


def test_short_or_empty_data_is_a_protocol_error() -> None:
    with pytest.raises(asyncembed.ProtocolError, match="2 embeddings for 3 inputs"):
        decode(body([{"embedding": r.tolist(), "index": i} for i, r in enumerate(VECTORS[:2])]))
    with pytest.raises(asyncembed.ProtocolError, match="0 embeddings"):
        decode(body([]))


def test_base64_request_answered_with_floats_is_decoded_as_floats() -> None:
    floats = body([{"embedding": r.tolist(), "index": i} for i, r in enumerate(VECTORS)])
    result = decode(floats, encoding="base64")
    np.testing.assert_array_equal(result.vectors, VECTORS)
    assert result.encoding == "float"


def test_base64_request_answered_with_empty_strings_signals_fallback() -> None:
    with pytest.raises(Base64Unsupported):
        decode(body([{"embedding": "", "index": i} for i in range(3)]), encoding="base64")


def test_a_short_or_empty_base64_answer_is_no_evidence() -> None:
    b64 = [base64.b64encode(r.astype("<f4").tobytes()).decode() for r in VECTORS]
    short = body([{"embedding": e, "index": i} for i, e in enumerate(b64[:2])])
    with pytest.raises(asyncembed.ProtocolError, match="2 embeddings for 3") as info:
        decode(short, encoding="base64")
    assert not isinstance(info.value, Base64Unsupported)
    with pytest.raises(EmptyData):
        decode(body([]), encoding="base64")


@pytest.mark.parametrize(
    "items",
    [
        [{"embedding": [0.1, None]}, {"embedding": [0.1, 0.2]}],
        [{"embedding": [0.1, 0.2]}, {"embedding": [0.1]}],
        [{"embedding": "AAAA"}, {"embedding": "AAAAAAAA"}],
        [{"embedding": "AAA="}, {"embedding": "AAA="}],
        [{"embedding": []}, {"embedding": []}],
        [{"embedding": "not base64!"}, {"embedding": "AAAA"}],
    ],
    ids=["null", "ragged", "ragged-b64", "not-float32", "empty", "bad-b64"],
)
def test_untrustworthy_vectors_are_protocol_errors(items: list[dict[str, Any]]) -> None:
    encoding: EncodingFormat = "base64" if isinstance(items[0]["embedding"], str) else "float"
    with pytest.raises(asyncembed.ProtocolError):
        decode(body(items), expected=2, encoding=encoding)


def test_nan_in_base64_is_a_protocol_error() -> None:
    rows = VECTORS[:2].copy()
    rows[1, 1] = np.nan
    items = [{"embedding": b64(r), "index": i} for i, r in enumerate(rows)]
    with pytest.raises(asyncembed.ProtocolError, match="NaN"):
        decode(body(items), expected=2, encoding="base64")


def test_dimension_mismatch_is_a_protocol_error() -> None:
    items = [{"embedding": r.tolist(), "index": i} for i, r in enumerate(VECTORS)]
    with pytest.raises(asyncembed.ProtocolError, match="expected 8-dimensional"):
        decode(body(items), dimensions=8)


def test_object_with_numeric_keys_is_accepted() -> None:
    items = [{"embedding": {str(j): float(v) for j, v in enumerate(r)}} for r in VECTORS]
    np.testing.assert_allclose(decode(body(items)).vectors, VECTORS)


def test_error_inside_200_is_raised_by_its_code() -> None:
    content = json.dumps(
        {
            "error": {
                "code": 502,
                "message": "Provider returned error",
                "metadata": {"provider_name": "X"},
            }
        }
    ).encode()
    with pytest.raises(asyncembed.BadGatewayError) as info:
        decode(content)
    assert info.value.metadata == {"provider_name": "X"}
    assert info.value.retryable


def test_non_json_body_is_a_protocol_error_with_an_excerpt() -> None:
    with pytest.raises(asyncembed.ProtocolError, match="<html>"):
        decode(b"<html><body>oops</body></html>")


def test_html_502_becomes_bad_gateway_with_excerpt() -> None:
    with pytest.raises(asyncembed.BadGatewayError, match="Bad Gateway") as info:
        decode(b"<html><h1>502 Bad Gateway</h1>" + b"x" * 5000 + b"</html>", status=502)
    assert len(info.value.message) < 300


def test_detail_shaped_error_body_is_read() -> None:
    with pytest.raises(asyncembed.UnprocessableEntityError, match="field required; too long"):
        decode(
            json.dumps({"detail": [{"msg": "field required"}, {"msg": "too long"}]}).encode(),
            status=422,
        )
    with pytest.raises(asyncembed.BadRequestError, match="bad input"):
        decode(json.dumps({"detail": "bad input"}).encode(), status=400)


STATUSES = {
    400: asyncembed.BadRequestError,
    401: asyncembed.AuthenticationError,
    402: asyncembed.PaymentRequiredError,
    403: asyncembed.PermissionDeniedError,
    404: asyncembed.NotFoundError,
    408: asyncembed.RequestTimeoutError,
    413: asyncembed.PayloadTooLargeError,
    422: asyncembed.UnprocessableEntityError,
    429: asyncembed.RateLimitError,
    500: asyncembed.InternalServerError,
    502: asyncembed.BadGatewayError,
    503: asyncembed.ServiceUnavailableError,
    504: asyncembed.GatewayTimeoutError,
    524: asyncembed.GatewayTimeoutError,
    529: asyncembed.ProviderOverloadedError,
}
RETRYABLE = {408, 429, 500, 502, 503, 504, 524, 529}


@pytest.mark.parametrize(("status", "cls"), sorted(STATUSES.items()))
def test_every_status_maps_to_its_class(status: int, cls: type[Exception]) -> None:
    content = json.dumps({"error": {"code": status, "message": "boom", "metadata": None}})
    with pytest.raises(cls) as info:
        decode(content.encode(), status=status, headers={"x-request-id": "req-9"})
    exc = info.value
    assert isinstance(exc, asyncembed.APIStatusError)
    assert exc.status == status and exc.message.startswith("boom")
    assert exc.request_id == "req-9"
    assert exc.retryable is (status in RETRYABLE)


def test_unknown_statuses() -> None:
    assert type(error_for_status(599, "x")) is asyncembed.InternalServerError
    other = error_for_status(418, "teapot")
    assert type(other) is asyncembed.APIStatusError and not other.retryable


def test_availability_overrides_retryable_and_gives_the_delay() -> None:
    content = json.dumps(
        {
            "error": {
                "code": 404,
                "message": "no endpoints",
                "availability": {
                    "code": "temporarily_unavailable",
                    "retryable": True,
                    "retry_after": 7,
                },
            }
        }
    ).encode()
    with pytest.raises(asyncembed.NotFoundError) as info:
        decode(content, status=404)
    assert info.value.retryable and info.value.retry_after == 7


def test_401_and_402_messages_tell_the_user_what_to_do() -> None:
    assert "API key" in str(error_for_status(401, "No auth credentials found"))
    assert "credits" in str(error_for_status(402, "Insufficient credits"))


NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("headers", "body_delay", "expected"),
    [
        ({"Retry-After": "3"}, None, 3.0),
        ({"Retry-After": "1.5"}, None, 1.5),
        ({"retry-after-ms": "250", "Retry-After": "3"}, None, 0.25),
        ({"Retry-After": email.utils.formatdate(NOW + 10, usegmt=True)}, None, 10.0),
        ({"Retry-After": email.utils.formatdate(NOW - 10, usegmt=True)}, None, 0.0),
        ({}, 4.0, 4.0),
        ({"X-RateLimit-Reset": str(int((NOW + 20) * 1000))}, None, 20.0),
        ({"X-RateLimit-Reset": str(int(NOW + 5))}, None, 5.0),
        ({"Retry-After": "garbage"}, None, None),
        ({}, None, None),
    ],
)
def test_parse_retry_after(
    headers: dict[str, str], body_delay: float | None, expected: float | None
) -> None:
    got = parse_retry_after(headers, body_delay=body_delay, now=NOW)
    assert got == pytest.approx(expected, abs=1.0) if expected else got == expected


def test_rate_limit_reset_inside_error_metadata_is_used() -> None:
    import time

    reset = int((time.time() + 30) * 1000)
    content = json.dumps(
        {
            "error": {
                "code": 429,
                "message": "Rate limit exceeded",
                "metadata": {"headers": {"X-RateLimit-Reset": str(reset)}},
            }
        }
    )
    with pytest.raises(asyncembed.RateLimitError) as info:
        decode(content.encode(), status=429)
    assert info.value.retry_after == pytest.approx(30, abs=2)


@pytest.mark.anyio
@pytest.mark.parametrize("encoding", ["float", "base64"])
async def test_large_bodies_are_decoded_in_steps_that_yield_to_the_loop(
    monkeypatch: pytest.MonkeyPatch, encoding: EncodingFormat
) -> None:
    monkeypatch.setattr(_codec, "LARGE_BODY", 0)
    monkeypatch.setattr(_codec, "_CHUNK_BYTES", 200)  # a few rows per step
    rows = np.random.default_rng(0).random((50, 16), dtype=np.float32)
    items = [
        {"embedding": b64(r) if encoding == "base64" else r.tolist(), "index": i}
        for i, r in reversed(list(enumerate(rows)))  # placed by index, not position
    ]
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        await anyio.lowlevel.checkpoint()
        before = ticks
        result = await _codec.decode_response_async(
            200, {}, body(items), expected=50, encoding=encoding
        )
        tg.cancel_scope.cancel()
    np.testing.assert_array_equal(result.vectors, rows)
    assert ticks - before >= 5  # the loop ran between the steps
