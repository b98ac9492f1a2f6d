"""MockTransport: the seam for unit tests without sockets."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import asyncembed
from asyncembed import Embedder
from asyncembed.testing import MockTransport, expected_vector, json_response, no_backoff

pytestmark = pytest.mark.anyio


async def test_default_answers_match_the_local_server() -> None:
    transport = MockTransport(dimensions=6)
    async with Embedder("m", transport=transport) as embedder:
        matrix = await embedder.embed_many(["a", "b"])
        floats = await embedder.create(["c"], encoding_format="float")
    np.testing.assert_array_equal(matrix[1], expected_vector("m", "b", 6))
    np.testing.assert_array_equal(floats.vectors[0], expected_vector("m", "c", 6))
    assert [r["encoding_format"] for r in transport.requests] == ["base64", "float"]
    assert not transport.closed  # the Embedder closes only what it created


async def test_handler_can_fail_one_input_and_the_batch_is_bisected() -> None:
    def handler(request: dict[str, Any]) -> asyncembed.RawResponse:
        if "poison" in request["input"]:
            return json_response({"error": {"code": 400, "message": "bad input"}}, status=400)
        return transport.answer(request)

    transport = MockTransport(handler)
    async with Embedder("m", transport=transport) as embedder:
        with pytest.raises(asyncembed.PartialResultError, match="bad input") as info:
            await embedder.embed_many(["ok", "poison", "fine", "good"])
        assert info.value.failed == [1]
    assert [len(r["input"]) for r in transport.requests] == [4, 2, 2, 1, 1]


async def test_async_handler_and_retry_after_header() -> None:
    calls = 0

    async def handler(request: dict[str, Any]) -> asyncembed.RawResponse:
        nonlocal calls
        calls += 1
        if calls == 1:
            body = {"error": {"code": 503, "message": "busy"}}
            return json_response(body, status=503, headers={"Retry-After": "0"})
        return transport.answer(request)

    transport = MockTransport(handler, dimensions=3)
    async with Embedder("m", transport=transport, retry=no_backoff()) as embedder:
        vector = await embedder.embed("x")
    assert vector.shape == (3,) and calls == 2


async def test_invalid_request_gets_the_servers_400() -> None:
    transport = MockTransport()
    response = transport.answer({"model": "m", "input": ""})
    assert response.status == 400
    assert b"error" in response.content
