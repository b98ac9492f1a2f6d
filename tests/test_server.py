"""LocalServer: wire format, validation, limits, faults, recording, and the serve entry point.

Every test talks HTTP to a real server on 127.0.0.1 with a plain aiohttp session (or
the official ``openai`` client), never to the server's internals.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import email.utils
import io
import math
import random
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import msgspec
import numpy as np
import openai
import pytest

import asyncembed.testing as testing
from asyncembed.testing import (
    FakeClock,
    Fault,
    Faults,
    LocalServer,
    add_serve_arguments,
    expected_vector,
    run_serve,
    serve_main,
)

pytestmark = pytest.mark.anyio

MODEL = "test/embed"


class Reply(msgspec.Struct):
    status: int
    headers: dict[str, str]
    raw: bytes

    def json(self) -> Any:
        return msgspec.json.decode(self.raw)


@asynccontextmanager
async def serving(**options: Any) -> AsyncIterator[tuple[LocalServer, aiohttp.ClientSession]]:
    options.setdefault("dimensions", 8)
    async with LocalServer(**options) as server, aiohttp.ClientSession() as session:
        yield server, session


async def post(
    session: aiohttp.ClientSession,
    server: LocalServer,
    body: Any,
    *,
    headers: dict[str, str] | None = None,
    path: str = "/embeddings",
) -> Reply:
    data = body if isinstance(body, bytes) else msgspec.json.encode(body)
    url = server.base_url + path if path.startswith("/embeddings") else server.url + path
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    async with session.post(url, data=data, headers=hdrs) as response:
        return Reply(response.status, dict(response.headers), await response.read())


def embed_body(inputs: Any = ("a", "b", "c"), **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "input": list(inputs) if isinstance(inputs, tuple) else inputs, **extra}


def vectors_of(payload: Any) -> dict[int, np.ndarray[Any, np.dtype[np.float32]]]:
    """Index → vector, decoding float lists and base64 strings alike."""
    out = {}
    for item in payload["data"]:
        emb = item["embedding"]
        if isinstance(emb, str):
            out[item["index"]] = np.frombuffer(base64.b64decode(emb), dtype="<f4")
        else:
            out[item["index"]] = np.asarray(emb, dtype=np.float32)
    return out


# -- lifecycle and basics ------------------------------------------------------------


async def test_base_url_lifecycle_and_paths() -> None:
    server = LocalServer(dimensions=4)
    assert LocalServer.__test__ is False
    with pytest.raises(RuntimeError, match="not running"):
        _ = server.base_url
    await server.start()
    try:
        assert server.port > 0
        assert server.base_url == f"http://127.0.0.1:{server.port}/api/v1"
        with pytest.raises(RuntimeError, match="only once"):
            await server.start()
        async with aiohttp.ClientSession() as session:
            for path in ("/api/v1/embeddings", "/v1/embeddings", "/embeddings"):
                async with session.post(server.url + path, json=embed_body()) as response:
                    assert response.status == 200, path
            assert "requests=3" in repr(server)
    finally:
        await server.aclose()
    await server.aclose()  # idempotent
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectionError):
            await session.post(f"http://127.0.0.1:{server.port}/api/v1/embeddings", json={})


@pytest.mark.parametrize(
    ("inputs", "items", "tokens"),
    [
        ("hello world!", ["hello world!"], 3),
        (["a", "bbbbbbbbb", "cc"], ["a", "bbbbbbbbb", "cc"], 1 + 2 + 1),
        ([1, 2, 3], [[1, 2, 3]], 3),
        ([[5, 6], [7], [8, 9, 10]], [[5, 6], [7], [8, 9, 10]], 6),
    ],
    ids=["str", "list[str]", "list[int]", "list[list[int]]"],
)
async def test_every_input_form(inputs: Any, items: list[Any], tokens: int) -> None:
    async with serving(price_per_token=0.5) as (server, session):
        reply = await post(session, server, embed_body(inputs))
        assert reply.status == 200
        payload = reply.json()
        assert payload["object"] == "list"
        assert payload["model"] == MODEL
        assert payload["id"].startswith("embd-")
        assert payload["usage"] == {
            "prompt_tokens": tokens,
            "total_tokens": tokens,
            "cost": tokens * 0.5,
        }
        assert [item["object"] for item in payload["data"]] == ["embedding"] * len(items)
        assert [item["index"] for item in payload["data"]] == list(range(len(items)))
        vectors = vectors_of(payload)
        for i, item in enumerate(items):
            np.testing.assert_array_equal(vectors[i], expected_vector(MODEL, item, 8))
        assert server.stats.tokens == tokens
        assert server.stats.cost == tokens * 0.5


async def test_float_and_base64_carry_the_same_vectors() -> None:
    texts = [f"text {i}" for i in range(50)]
    async with serving(dimensions=1536) as (server, session):
        as_float = vectors_of((await post(session, server, embed_body(texts))).json())
        reply = await post(session, server, embed_body(texts, encoding_format="base64"))
        payload = reply.json()
        assert all(isinstance(item["embedding"], str) for item in payload["data"])
        as_b64 = vectors_of(payload)
        explicit = vectors_of(
            (await post(session, server, embed_body(texts, encoding_format="float"))).json()
        )
    for i, text in enumerate(texts):
        expected = expected_vector(MODEL, text, 1536)
        np.testing.assert_array_equal(as_float[i], expected)
        np.testing.assert_array_equal(as_b64[i], expected)
        np.testing.assert_array_equal(explicit[i], expected)


async def test_vectors_are_deterministic_and_distinct() -> None:
    async with serving() as (server, session):
        first = vectors_of((await post(session, server, embed_body(["x", "y", "x"]))).json())
    async with serving() as (server, session):
        again = vectors_of((await post(session, server, embed_body(["y", "x"]))).json())
        other = vectors_of((await post(session, server, {"model": "other", "input": "x"})).json())
    np.testing.assert_array_equal(first[0], first[2])
    np.testing.assert_array_equal(first[0], again[1])
    np.testing.assert_array_equal(first[1], again[0])
    assert not np.array_equal(first[0], first[1])
    assert not np.array_equal(first[0], other[0])


def test_expected_vector_properties() -> None:
    v = expected_vector("m", "hello", 1536)
    assert v.dtype == np.float32
    assert v.shape == (1536,)
    assert abs(float(np.linalg.norm(v)) - 1.0) < 1e-5
    # Strings and token arrays never collide, nor do models.
    assert not np.array_equal(expected_vector("m", "1", 16), expected_vector("m", [1], 16))
    assert not np.array_equal(expected_vector("m", "a", 16), expected_vector("n", "a", 16))
    # A shorter vector is the renormalised prefix of a longer one.
    short = expected_vector("m", "hello", 64)
    np.testing.assert_allclose(short, v[:64] / np.linalg.norm(v[:64]), rtol=1e-6)
    for bad in (0, 65537):
        with pytest.raises(ValueError, match="dimensions"):
            expected_vector("m", "x", bad)


async def test_dimensions_override_and_per_model_dimensions() -> None:
    async with serving(models={"small": 4, "big": 32}) as (server, session):
        big = (await post(session, server, {"model": "big", "input": "t"})).json()
        assert len(big["data"][0]["embedding"]) == 32
        small = (await post(session, server, {"model": "small", "input": "t"})).json()
        assert len(small["data"][0]["embedding"]) == 4
        cut = (await post(session, server, {"model": "big", "input": "t", "dimensions": 12})).json()
        np.testing.assert_array_equal(vectors_of(cut)[0], expected_vector("big", "t", 12))
        np.testing.assert_array_equal(
            server.vector_for("t", model="big", dimensions=12), expected_vector("big", "t", 12)
        )
        np.testing.assert_array_equal(server.vector_for("t", model="small"), vectors_of(small)[0])
        assert server.dimensions_for("big") == 32
        assert server.requests[-1].dimensions == 12
        with pytest.raises(ValueError, match="exactly one model"):
            server.vector_for("t")
    async with serving(models={"only": 6}) as (server, session):
        reply = await post(session, server, {"model": "only", "input": "t"})
        np.testing.assert_array_equal(vectors_of(reply.json())[0], server.vector_for("t"))


# -- validation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"model": "m", "input": ', "Invalid JSON"),
        (b"[1, 2]", "expected a JSON object"),
        (b"", "Invalid JSON"),
        ({"input": "x"}, "'model' is required"),
        ({"model": 3, "input": "x"}, "'model' must be"),
        ({"model": "", "input": "x"}, "'model' must be"),
        ({"model": "m"}, "'input' is required"),
        ({"model": "m", "input": None}, "'input' must be"),
        ({"model": "m", "input": ""}, "empty string"),
        ({"model": "m", "input": []}, "empty list"),
        ({"model": "m", "input": ["a", ""]}, "input[1] must not be an empty string"),
        ({"model": "m", "input": ["a", 1]}, "mixes strings"),
        ({"model": "m", "input": 42}, "'input' must be"),
        ({"model": "m", "input": {"text": "a"}}, "'input' must be"),
        ({"model": "m", "input": [1.5, 2]}, "items must be strings or token ids"),
        ({"model": "m", "input": [1, 2.5]}, "only integer token ids"),
        ({"model": "m", "input": [1, True]}, "only integer token ids"),
        ({"model": "m", "input": [1, -2]}, "token ids must be in 0..2147483647"),
        ({"model": "m", "input": [[2**31]]}, "token ids must be in 0.."),
        ({"model": "m", "input": [10**30]}, "token ids must be in 0.."),
        (b'{"model": "m", "input": [[1e400]]}', "Invalid request body"),
        ({"model": "m", "input": [[1], []]}, "input[1] must not be an empty token list"),
        ({"model": "m", "input": [[1], "a"]}, "mixes token-id lists"),
        ({"model": "m", "input": [[1], ["a"]]}, "input[1]"),
        ({"model": "m", "input": [{"content": []}]}, "multimodal"),
        ({"model": "m", "input": "x", "encoding_format": "int8"}, "encoding_format"),
        ({"model": "m", "input": "x", "encoding_format": 1}, "encoding_format"),
        ({"model": "m", "input": "x", "dimensions": 0}, "dimensions"),
        ({"model": "m", "input": "x", "dimensions": "8"}, "dimensions"),
        ({"model": "m", "input": "x", "dimensions": True}, "dimensions"),
        ({"model": "m", "input": "x", "dimensions": 10**6}, "dimensions"),
    ],
)
async def test_invalid_requests_get_400_envelope(body: Any, message: str) -> None:
    async with serving() as (server, session):
        reply = await post(session, server, body)
        assert reply.status == 400
        assert reply.headers["Content-Type"].startswith("application/json")
        error = reply.json()["error"]
        assert error["code"] == 400
        assert message in error["message"]
        assert set(error) == {"code", "message", "metadata"}
        assert server.stats.statuses == {400: 1}
        assert server.requests[0].status == 400
        assert server.inputs_count == 0


async def test_unknown_model_when_models_are_configured() -> None:
    async with serving(models={"known": 4}) as (server, session):
        reply = await post(session, server, {"model": "nope/nope", "input": "x"})
        assert reply.status == 400
        error = reply.json()["error"]
        assert error["message"] == (
            "nope/nope is not a valid model ID (this local server serves: known)"
        )
        assert error["availability"] == {"code": "model_not_found", "retryable": False}
    async with serving() as (server, session):  # no list: any model is fine
        assert (await post(session, server, {"model": "nope/nope", "input": "x"})).status == 200


async def test_max_inputs() -> None:
    async with serving(max_inputs=3) as (server, session):
        assert (await post(session, server, embed_body(["a", "b", "c"]))).status == 200
        reply = await post(session, server, embed_body(["a", "b", "c", "d"]))
        assert reply.status == 400
        assert "Too many inputs: 4" in reply.json()["error"]["message"]
    async with serving(max_inputs=None) as (server, session):
        reply = await post(session, server, embed_body([str(i) for i in range(5000)]))
        assert reply.status == 200
        assert len(reply.json()["data"]) == 5000


async def test_reject_inputs_fails_any_request_containing_them() -> None:
    async with serving(reject_inputs={"poison"}) as (server, session):
        reply = await post(session, server, embed_body(["ok", "fine", "poison", "x"]))
        assert reply.status == 400
        assert "input[2]" in reply.json()["error"]["message"]
        assert (await post(session, server, embed_body(["ok", "fine"]))).status == 200
        assert (await post(session, server, embed_body("poison"))).status == 400
        assert (await post(session, server, embed_body([1, 2]))).status == 200


async def test_oversized_body_gets_413() -> None:
    async with serving(max_body_bytes=1024) as (server, session):
        reply = await post(session, server, embed_body("x" * 4000))
        assert reply.status == 413
        assert reply.json()["error"]["code"] == 413


# -- auth ----------------------------------------------------------------------------


async def test_api_key_required_and_never_echoed() -> None:
    async with serving(api_key="sekret-key") as (server, session):
        missing = await post(session, server, embed_body())
        assert missing.status == 401
        assert missing.json()["error"]["code"] == 401
        wrong = await post(
            session, server, embed_body(), headers={"Authorization": "Bearer guessed-key-123"}
        )
        assert wrong.status == 401
        assert b"guessed-key-123" not in wrong.raw
        assert b"sekret" not in wrong.raw
        ok = await post(
            session, server, embed_body(), headers={"Authorization": "Bearer sekret-key"}
        )
        assert ok.status == 200
        assert [r.status for r in server.requests] == [401, 401, 200]
        for record in server.requests:
            assert all(name.lower() != "authorization" for name in record.headers)
            assert "sekret-key" not in repr(record)
        assert "Content-Type" in server.requests[-1].headers


# -- rate limits ---------------------------------------------------------------------


async def test_rpm_limit_answers_429_with_headers() -> None:
    clock = FakeClock()
    start = clock.now()
    async with serving(rpm=2, clock=clock) as (server, session):
        reset = str(math.ceil(server.wall_time(start + 60) * 1000))
        assert (await post(session, server, embed_body())).status == 200
        clock.advance(10)
        assert (await post(session, server, embed_body())).status == 200
        clock.advance(5)
        reply = await post(session, server, embed_body())
        assert reply.status == 429
        assert reply.headers["Retry-After"] == "45"  # the first request leaves at start + 60
        assert reply.headers["X-RateLimit-Limit"] == "2"
        assert reply.headers["X-RateLimit-Remaining"] == "0"
        assert reply.headers["X-RateLimit-Reset"] == reset
        # Epoch time, though the fake clock started at 1000: the server's start + 60 s.
        assert abs(int(reset) / 1000 - (time.time() + 60)) < 5
        error = reply.json()["error"]
        assert error["code"] == 429
        assert error["metadata"]["headers"] == {
            "X-RateLimit-Limit": "2",
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": reset,
        }
        assert server.requests[-1].fault == "rate_limited"
        clock.advance(45)  # exactly 60 s after the first one
        assert (await post(session, server, embed_body())).status == 200
        assert (await post(session, server, embed_body())).status == 429


async def test_tpm_limit_answers_429_and_413_for_hopeless_requests() -> None:
    clock = FakeClock()
    start = clock.now()
    async with serving(tpm=10, clock=clock) as (server, session):
        eight = ["x" * 16, "y" * 16]  # 4 tokens each
        assert (await post(session, server, embed_body(eight))).status == 200
        clock.advance(30)
        reply = await post(session, server, embed_body(["z" * 12]))  # 3 tokens: 11 > 10
        assert reply.status == 429
        assert reply.headers["X-RateLimit-Limit"] == "10"
        assert reply.headers["X-RateLimit-Remaining"] == "2"
        assert reply.headers["Retry-After"] == "30"
        assert reply.headers["X-RateLimit-Reset"] == str(
            math.ceil(server.wall_time(start + 60) * 1000)
        )
        assert (await post(session, server, embed_body(["z" * 8]))).status == 200  # 2 tokens
        too_big = await post(session, server, embed_body(["w" * 44]))  # 11 tokens, never fits
        assert too_big.status == 413
        assert "11 tokens" in too_big.json()["error"]["message"]
        clock.advance(30)
        assert (await post(session, server, embed_body(["z" * 12]))).status == 200


# -- faults --------------------------------------------------------------------------


async def test_script_is_consumed_one_entry_per_request() -> None:
    async with serving(script=["429", "ok", 502]) as (server, session):
        assert server.script_remaining == 3
        statuses = [(await post(session, server, embed_body())).status for _ in range(4)]
        assert statuses == [429, 200, 502, 200]
        server.script(["503", Fault.status(529)])
        assert server.script_remaining == 2
        statuses = [(await post(session, server, embed_body())).status for _ in range(3)]
        assert statuses == [503, 529, 200]
        assert [r.fault for r in server.requests] == ["429", None, "502", None, "503", "529", None]
        assert server.stats.faults == {"429": 1, "502": 1, "503": 1, "529": 1}


async def test_invalid_requests_do_not_consume_the_script() -> None:
    async with serving(script=["503"]) as (server, session):
        assert (await post(session, server, {"model": "m"})).status == 400
        assert (await post(session, server, embed_body())).status == 503


@pytest.mark.parametrize(
    ("fault", "retry_after"),
    [
        ("429", "1"),
        (Fault.rate_limit(retry_after=0), "0"),
        (Fault.rate_limit(retry_after=2.5), "2.5"),
        (Fault.rate_limit(retry_after=0.0000001), "0"),
        (Fault.rate_limit(retry_after=None), None),
        (Fault.status(503, retry_after=7), "7"),
    ],
)
async def test_retry_after_header(fault: Any, retry_after: str | None) -> None:
    async with serving(script=[fault]) as (server, session):
        reply = await post(session, server, embed_body())
        assert reply.headers.get("Retry-After") == retry_after
        assert reply.json()["error"]["code"] == reply.status


@pytest.mark.parametrize(
    "code", [400, 401, 402, 403, 404, 408, 413, 422, 500, 502, 503, 504, 524, 529]
)
async def test_status_faults_use_the_openrouter_envelope(code: int) -> None:
    async with serving(script=[code, Fault.status(code, availability=True, message="boom")]) as (
        server,
        session,
    ):
        plain = await post(session, server, embed_body())
        assert plain.status == code
        error = plain.json()["error"]
        assert error["code"] == code
        assert isinstance(error["message"], str) and error["message"]
        assert "metadata" in error
        assert "availability" not in error
        rich = await post(session, server, embed_body())
        error = rich.json()["error"]
        assert error["message"] == "boom"
        retryable = code in {408, 429, 500, 502, 503, 504, 524, 529}
        assert error["availability"]["retryable"] is retryable
        assert isinstance(error["availability"]["code"], str)


async def test_html_502() -> None:
    async with serving(script=["502_html"]) as (server, session):
        reply = await post(session, server, embed_body())
        assert reply.status == 502
        assert reply.headers["Content-Type"].startswith("text/html")
        assert reply.raw.startswith(b"<html>")
        with pytest.raises(msgspec.DecodeError):
            reply.json()


async def test_error_inside_200() -> None:
    async with serving(script=["error_200"]) as (server, session):
        reply = await post(session, server, embed_body())
        assert reply.status == 200
        payload = reply.json()
        assert "data" not in payload
        assert payload["error"]["code"] == 502
        assert payload["error"]["message"] == "Provider returned error"
        assert server.stats.embedded == 0


async def test_empty_data() -> None:
    async with serving(script=["empty_data"]) as (server, session):
        payload = (await post(session, server, embed_body())).json()
        assert payload["data"] == []
        assert payload["usage"]["prompt_tokens"] == 3


async def test_shuffled_keeps_indices_correct() -> None:
    texts = [f"t{i}" for i in range(20)]
    async with serving(script=["shuffled", Fault(kind="shuffled")]) as (server, session):
        for _ in range(2):
            payload = (
                await post(session, server, embed_body(texts, encoding_format="base64"))
            ).json()
            indices = [item["index"] for item in payload["data"]]
            assert indices != sorted(indices)
            assert sorted(indices) == list(range(20))
            for index, vector in vectors_of(payload).items():
                np.testing.assert_array_equal(vector, expected_vector(MODEL, texts[index], 8))
        # Two inputs are enough to always be out of order.
        server.script(["shuffled"])
        payload = (await post(session, server, embed_body(["a", "b"]))).json()
        assert [item["index"] for item in payload["data"]] == [1, 0]


async def test_bad_index() -> None:
    async with serving(script=["bad_index", "bad_index"]) as (server, session):
        payload = (await post(session, server, embed_body(["a", "b", "c"]))).json()
        indices = [item["index"] for item in payload["data"]]
        assert len(indices) == 3
        assert sorted(indices) != [0, 1, 2]
        assert len(set(indices)) == 2
        single = (await post(session, server, embed_body("a"))).json()
        assert [item["index"] for item in single["data"]] == [1]  # out of range


async def test_truncated_body() -> None:
    async with serving(script=["truncated"]) as (server, session):
        with pytest.raises(aiohttp.ClientPayloadError):
            await post(session, server, embed_body())
        assert server.requests[0].fault == "truncated"
        assert server.stats.embedded == 0
        assert (await post(session, server, embed_body())).status == 200


async def test_reset_closes_without_answer() -> None:
    async with serving(script=["reset"]) as (server, session):
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await post(session, server, embed_body())
        assert server.requests[0].status == 0
        assert (await post(session, server, embed_body())).status == 200


async def test_slow_and_latency_delay_the_answer_on_the_servers_clock() -> None:
    clock = FakeClock()
    slow = Fault(kind="slow", delay=30.0)
    async with serving(script=[slow], latency=2.0, clock=clock) as (server, session):
        assert (await post(session, server, embed_body())).status == 200
        assert server.requests[0].fault == "slow"
        assert clock.sleeps == [32.0] and clock.now() == 1032.0  # no real wait
    clock = FakeClock()
    async with serving(latency=0.5, latency_per_input=0.25, clock=clock) as (server, session):
        assert (await post(session, server, embed_body(["a", "b"]))).status == 200
        assert clock.sleeps == [1.0]


async def test_a_retry_after_date_is_the_clock_plus_the_epoch_offset() -> None:
    clock = FakeClock()
    fault = Fault.status(503, retry_after=30, retry_after_date=True)
    async with serving(script=[fault], clock=clock) as (server, session):
        clock.advance(100)  # the date moves with the server's clock, not the machine's
        reply = await post(session, server, embed_body())
        when = email.utils.parsedate_to_datetime(reply.headers["Retry-After"]).timestamp()
        assert when == math.ceil(server.wall_time() + 30)
        assert abs(when - (time.time() + 130)) < 5


async def test_latency_jitter_varies_each_answer_within_its_bounds_repeatably() -> None:
    runs = []
    for _ in range(2):
        clock = FakeClock()
        async with serving(latency=1.0, latency_jitter=0.5, clock=clock) as (server, session):
            for _ in range(20):
                assert (await post(session, server, embed_body())).status == 200
        runs.append(clock.sleeps)
    assert runs[0] == runs[1]  # seeded: a run can be repeated
    assert all(0.5 <= s <= 1.5 for s in runs[0])
    assert max(runs[0]) - min(runs[0]) > 0.5  # they do vary


async def test_base64_ignored() -> None:
    async with serving(script=["base64_ignored"]) as (server, session):
        payload = (await post(session, server, embed_body(encoding_format="base64"))).json()
        assert all(isinstance(item["embedding"], list) for item in payload["data"])
        np.testing.assert_array_equal(vectors_of(payload)[1], expected_vector(MODEL, "b", 8))


@pytest.mark.parametrize("encoding", ["float", "base64"])
async def test_nan(encoding: str) -> None:
    async with serving(script=["nan"]) as (server, session):
        payload = (await post(session, server, embed_body(encoding_format=encoding))).json()
        if encoding == "float":
            assert payload["data"][0]["embedding"][0] is None
        vectors = vectors_of(payload)
        assert not np.isfinite(vectors[0]).all()
        assert np.isfinite(vectors[1]).all()


@pytest.mark.parametrize("mode", ["empty_data", "float"])
async def test_models_that_ignore_base64(mode: Any) -> None:
    options = {"base64_unsupported_models": {"nob64"}, "base64_unsupported_mode": mode}
    async with serving(**options) as (server, session):
        reply = await post(
            session, server, {"model": "nob64", "input": ["a", "b"], "encoding_format": "base64"}
        )
        data = reply.json()["data"]
        if mode == "empty_data":
            assert data == []
        else:
            assert [type(item["embedding"]) for item in data] == [list, list]
        floats = (await post(session, server, {"model": "nob64", "input": ["a", "b"]})).json()
        assert len(floats["data"]) == 2
        other = (await post(session, server, embed_body(encoding_format="base64"))).json()
        assert isinstance(other["data"][0]["embedding"], str)


ALL_FAULTS: list[tuple[Any, Any]] = [
    ("429", 429),
    ("500", 500),
    ("502", 502),
    ("503", 503),
    ("502_html", 502),
    ("error_200", 200),
    ("empty_data", 200),
    ("shuffled", 200),
    ("bad_index", 200),
    ("truncated", aiohttp.ClientPayloadError),
    ("reset", aiohttp.ServerDisconnectedError),
    ("base64_ignored", 200),
    ("nan", 200),
    ("ok", 200),
    (Fault(kind="slow", delay=0.001), 200),
    (Fault.status(524), 524),
]


@pytest.mark.parametrize(("name", "outcome"), ALL_FAULTS)
async def test_every_fault_at_rate_one(name: Any, outcome: Any) -> None:
    async with serving(faults=Faults(rates={name: 1.0}, seed=3)) as (server, session):
        for _ in range(2):
            if isinstance(outcome, int):
                assert (await post(session, server, embed_body())).status == outcome
            else:
                with pytest.raises(outcome):
                    await post(session, server, embed_body())
        expected = None if name == "ok" else Fault.parse(name).name
        assert [r.fault for r in server.requests] == [expected, expected]


async def test_random_faults_follow_the_seed() -> None:
    rates = {"429": 0.3, "503": 0.2}

    async def run() -> list[int]:
        async with serving(faults=Faults(rates=rates, seed=42)) as (server, session):
            return [(await post(session, server, embed_body("x"))).status for _ in range(40)]

    first = await run()
    assert first == await run()
    # The draws are exactly those of random.Random(seed): one per request.
    rng = random.Random(42)
    predicted = []
    for _ in range(40):
        draw = rng.random()
        predicted.append(429 if draw < 0.3 else 503 if draw < 0.5 else 200)
    assert first == predicted
    assert {429, 503, 200} <= set(first)


async def test_script_runs_before_random_faults_and_set_faults() -> None:
    async with serving(script=["ok"], faults=Faults(rates={"500": 1.0})) as (server, session):
        assert (await post(session, server, embed_body())).status == 200
        assert (await post(session, server, embed_body())).status == 500
        server.script(["502"])
        server.set_faults(None)
        assert server.script_remaining == 1
        assert (await post(session, server, embed_body())).status == 502
        assert (await post(session, server, embed_body())).status == 200


def test_fault_and_faults_validation() -> None:
    assert Fault.parse("429") == Fault.rate_limit(retry_after=1.0)
    assert Fault.parse(503) == Fault.status(503)
    assert Fault.parse(" 502_html ").kind == "html_502"
    assert Fault.parse("slow").name == "slow"
    assert Fault.status(524).name == "524"
    for bad in ("nope", "status", 399, 600, True):
        with pytest.raises(ValueError):
            Fault.parse(bad)
    with pytest.raises(ValueError, match="retry_after"):
        Fault.rate_limit(retry_after=-1)
    with pytest.raises(ValueError, match="delay"):
        Fault(kind="slow", delay=-0.1)
    with pytest.raises(ValueError, match="code is only"):
        Fault(kind="reset", code=500)
    with pytest.raises(ValueError, match="unknown fault kind"):
        Fault(kind="boom")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at most 1"):
        Faults(rates={"429": 0.7, "502": 0.4})
    with pytest.raises(ValueError, match=r"0\.\.1"):
        Faults(rates={"429": -0.1})
    assert Faults.uniform(0.3).fault_rates == {
        Fault.parse("429"): pytest.approx(0.1),
        Fault.status(502): pytest.approx(0.1),
        Fault.status(503): pytest.approx(0.1),
    }
    with pytest.raises(ValueError):
        Faults.uniform(0.1, kinds=())
    with pytest.raises(ValueError):
        Faults.uniform(1.5)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"port": -1}, "port"),
        ({"dimensions": 0}, "dimensions"),
        ({"models": {"m": 0}}, "models"),
        ({"latency": -1.0}, "latency"),
        ({"latency_per_input": -1.0}, "latency_per_input"),
        ({"latency_jitter": 1.5}, "latency_jitter"),
        ({"max_inputs": 0}, "max_inputs"),
        ({"rpm": 0}, "rpm"),
        ({"tpm": 0}, "tpm"),
        ({"price_per_token": -1.0}, "price_per_token"),
        ({"base64_unsupported_mode": "zeros"}, "base64_unsupported_mode"),
        ({"keepalive_timeout": 0.0}, "keepalive_timeout"),
        ({"max_body_bytes": 10}, "max_body_bytes"),
        ({"api_key": ""}, "api_key"),
        ({"script": ["nope"]}, "unknown fault"),
    ],
)
def test_constructor_validation(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LocalServer(**options)


def test_the_clock_is_a_clock_not_a_function() -> None:
    with pytest.raises(TypeError, match="clock must be a Clock"):
        LocalServer(clock=time.time)  # type: ignore[arg-type]


# -- recording -----------------------------------------------------------------------


async def test_records_and_stats() -> None:
    clock = FakeClock()
    async with serving(clock=clock) as (server, session):
        await post(session, server, embed_body(["a", "b"], encoding_format="base64", dimensions=4))
        clock.advance(1.5)
        await post(session, server, {"model": "m2", "input": [[1, 2]]}, headers={"X-Trace": "t1"})
        first, second = server.requests
        assert first.inputs == ["a", "b"]
        assert first.n_inputs == 2
        assert first.model == MODEL
        assert first.encoding_format == "base64"
        assert first.dimensions == 4
        assert first.status == 200
        assert first.path == "/api/v1/embeddings"
        assert first.arrived == clock.now() - 1.5
        assert second.inputs == [[1, 2]]
        assert second.encoding_format is None
        assert second.headers["X-Trace"] == "t1"
        assert second.arrived == clock.now()
        assert server.requests_count == 2
        assert server.inputs_count == 3
        stats = server.stats
        assert (stats.requests, stats.inputs, stats.embedded, stats.tokens) == (2, 3, 3, 4)
        assert stats.statuses == {200: 2}
        assert stats.in_flight == 0
        server.reset_stats()
        assert server.requests == []
        assert server.stats.requests == 0
        assert server.max_concurrent == 0


async def test_recording_can_be_turned_off() -> None:
    async with serving(record_inputs=False) as (server, session):
        await post(session, server, embed_body())
        assert server.requests[0].inputs is None
        assert server.requests[0].n_inputs == 3
    async with serving(record_requests=False) as (server, session):
        await post(session, server, embed_body())
        assert server.requests == []
        assert server.inputs_count == 3


async def test_max_concurrent_counts_overlapping_requests() -> None:
    # Only the five concurrent requests are slow; the wide margin keeps a busy CI honest.
    async with serving(script=[Fault(kind="slow", delay=0.25)] * 5) as (server, session):
        replies = await asyncio.gather(*(post(session, server, embed_body()) for _ in range(5)))
        assert [r.status for r in replies] == [200] * 5
        assert server.max_concurrent == 5
        assert server.stats.in_flight == 0
        await post(session, server, embed_body())
        assert server.max_concurrent == 5
        server.reset_stats()
        await post(session, server, embed_body())
        assert server.max_concurrent == 1


async def test_a_client_that_hangs_up_is_recorded_as_499() -> None:
    async with serving(latency=30.0) as (server, session):
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(post(session, server, embed_body()), timeout=0.05)
        # The server notices the hang-up by itself, well before the 30 s latency.
        await asyncio.wait_for(server.wait_idle(), timeout=5)
        assert server.stats.in_flight == 0
        assert [r.status for r in server.requests] == [499]


# -- connections ---------------------------------------------------------------------


async def _raw_request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int
) -> int:
    body = msgspec.json.encode(embed_body("x"))
    writer.write(
        b"POST /api/v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (port, len(body), body)
    )
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))  # type: ignore[union-attr]
    await reader.readexactly(length)
    return int(head.split()[1])


async def test_idle_keepalive_connections_are_closed() -> None:
    async with LocalServer(dimensions=4, keepalive_timeout=0.05) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            assert await _raw_request(reader, writer, server.port) == 200
            # The server hangs up by itself once the connection is idle: EOF arrives.
            assert await asyncio.wait_for(reader.read(), timeout=5) == b""
        finally:
            writer.close()


async def test_connections_are_kept_alive_by_default() -> None:
    async with LocalServer(dimensions=4) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            assert await _raw_request(reader, writer, server.port) == 200
            assert await _raw_request(reader, writer, server.port) == 200
        finally:
            writer.close()


# -- the official openai client --------------------------------------------------------


@pytest.mark.parametrize("encoding", [None, "float", "base64"])
async def test_openai_client_gets_the_expected_vectors(encoding: Any) -> None:
    async with LocalServer(dimensions=16, api_key="x") as server:
        async with openai.AsyncOpenAI(
            base_url=server.base_url, api_key="x", max_retries=0
        ) as client:
            kwargs: dict[str, Any] = {} if encoding is None else {"encoding_format": encoding}

            def vector(embedding: Any) -> Any:
                # openai decodes base64 itself only when it chose the format itself.
                if isinstance(embedding, str):
                    return np.frombuffer(base64.b64decode(embedding), dtype="<f4")
                return np.asarray(embedding, dtype=np.float32)

            one = await client.embeddings.create(model=MODEL, input="hello", **kwargs)
            np.testing.assert_array_equal(
                vector(one.data[0].embedding), expected_vector(MODEL, "hello", 16)
            )
            texts = ["alpha", "beta", "gamma"]
            many = await client.embeddings.create(model=MODEL, input=texts, **kwargs)
            assert many.usage.prompt_tokens == 3
            for item in many.data:
                np.testing.assert_array_equal(
                    vector(item.embedding), expected_vector(MODEL, texts[item.index], 16)
                )
        sent = [r.encoding_format for r in server.requests]
        # openai asks for base64 when no format is given.
        assert sent == [encoding or "base64"] * 2


async def test_openai_client_sees_faults_as_errors() -> None:
    async with LocalServer(dimensions=4, script=["429", 401, "reset"]) as server:
        async with openai.AsyncOpenAI(
            base_url=server.base_url, api_key="x", max_retries=0
        ) as client:
            with pytest.raises(openai.RateLimitError):
                await client.embeddings.create(model=MODEL, input="a")
            with pytest.raises(openai.AuthenticationError):
                await client.embeddings.create(model=MODEL, input="a")
            with pytest.raises(openai.APIConnectionError):
                await client.embeddings.create(model=MODEL, input="a")


# -- the serve entry point -----------------------------------------------------------


class _Lines(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.ready = asyncio.Event()

    def write(self, text: str) -> int:
        written = super().write(text)
        if "\n" in self.getvalue():
            self.ready.set()
        return written


def _serve_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    return parser.parse_args(list(argv))


async def test_run_serve_prints_the_real_url_and_serves_until_cancelled() -> None:
    args = _serve_args("--port", "0", "--dimensions", "6", "--api-key", "k", "--fault", "503=0.0")
    out = _Lines()
    task = asyncio.create_task(run_serve(args, out=out))
    try:
        await asyncio.wait_for(out.ready.wait(), timeout=5)
        line = out.getvalue()
        match = re.fullmatch(
            r"asyncembed local server listening on (http://127\.0\.0\.1:(\d+)/api/v1)\n", line
        )
        assert match is not None, line
        base_url, port = match.group(1), int(match.group(2))
        assert port > 0
        async with aiohttp.ClientSession() as session:
            async with session.post(
                base_url + "/embeddings",
                json=embed_body("x"),
                headers={"Authorization": "Bearer k"},
            ) as response:
                assert response.status == 200
                payload = await response.json()
        np.testing.assert_array_equal(vectors_of(payload)[0], expected_vector(MODEL, "x", 6))
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectionError):
            await session.post(base_url + "/embeddings", json={})


async def test_run_serve_fault_options() -> None:
    args = _serve_args(
        "--port", "0", "--fault", "502=1", "--max-inputs", "2", "--reject-input", "bad"
    )
    out = _Lines()
    task = asyncio.create_task(run_serve(args, out=out))
    try:
        await asyncio.wait_for(out.ready.wait(), timeout=5)
        base_url = out.getvalue().split()[-1]
        async with aiohttp.ClientSession() as session:
            async with session.post(base_url + "/embeddings", json=embed_body("x")) as response:
                assert response.status == 502
            async with session.post(
                base_url + "/embeddings", json=embed_body(["a", "b", "c"])
            ) as r:
                assert r.status == 400
            async with session.post(base_url + "/embeddings", json=embed_body(["bad"])) as r:
                assert r.status == 400
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def test_serve_main_reports_bad_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert serve_main(["--port", "0", "--dimensions", "0"]) == 2
    assert "dimensions" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        serve_main(["--fault", "nonsense"])


def test_public_names() -> None:
    assert testing.__all__ == sorted(testing.__all__)
    for name in testing.__all__:
        assert (getattr(testing, name).__doc__ or "").strip(), name
    assert math.isclose(float(np.linalg.norm(expected_vector("m", [1, 2], 3))), 1.0, rel_tol=1e-6)
