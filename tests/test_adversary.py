"""The adversary server itself: each fault does what it claims, and vectors are deterministic."""

from __future__ import annotations

import base64
import email.utils
import json
import math
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from adversary import (
    FAULT_KINDS,
    POISON_MESSAGE,
    RETRYABLE_MIX,
    SIZE_CAP_MESSAGE,
    Adversary,
    tokens_for,
    vector_for,
)

pytestmark = pytest.mark.anyio

MODEL = "test/adversary"
TEXTS = [f"text number {i}" for i in range(5)]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def post(
    session: aiohttp.ClientSession,
    adv: Adversary,
    body: dict[str, Any],
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    async with session.post(f"{adv.base_url}/embeddings", json=body, headers=headers) as r:
        return r.status, dict(r.headers), await r.read()


def embed_body(texts: object, **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "input": texts, **extra}


def decode(item: dict[str, Any]) -> np.ndarray:
    embedding = item["embedding"]
    if isinstance(embedding, str):
        return np.frombuffer(base64.b64decode(embedding), dtype="<f4").copy()
    return np.asarray(embedding, dtype=np.float32)


def parse(raw: bytes) -> Any:
    return json.loads(raw)  # accepts the NaN/Infinity literals of the non-finite faults


# -- vectors and the normal answer ----------------------------------------------------------


def test_vectors_are_a_pure_function_of_model_text_and_width() -> None:
    a = vector_for(MODEL, "hello", 32)
    assert a.dtype == np.float32 and a.shape == (32,) and not a.flags.writeable
    vector_for.cache_clear()
    np.testing.assert_array_equal(vector_for(MODEL, "hello", 32), a)
    assert not np.array_equal(vector_for(MODEL, "hellp", 32), a)
    assert not np.array_equal(vector_for("other/model", "hello", 32), a)
    assert vector_for(MODEL, "hello", 8).shape == (8,)
    assert math.isclose(float(np.linalg.norm(a.astype(np.float64))), 1.0, rel_tol=1e-6)


@pytest.mark.parametrize("encoding", [None, "float", "base64"])
async def test_a_normal_answer_is_exact_in_every_encoding(
    session: aiohttp.ClientSession, encoding: str | None
) -> None:
    extra = {} if encoding is None else {"encoding_format": encoding}
    async with Adversary() as adv:
        status, headers, raw = await post(session, adv, embed_body(TEXTS, **extra))
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    body = parse(raw)
    assert body["object"] == "list" and body["model"] == MODEL and body["id"].startswith("gen-")
    assert [item["index"] for item in body["data"]] == list(range(len(TEXTS)))
    for item, text in zip(body["data"], TEXTS, strict=True):
        assert item["object"] == "embedding"
        assert isinstance(item["embedding"], str) == (encoding == "base64")
        np.testing.assert_array_equal(decode(item), adv.vector(MODEL, text))
    tokens = sum(tokens_for(t) for t in TEXTS)
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] == tokens
    assert math.isclose(body["usage"]["cost"], tokens * 2e-8)


async def test_the_same_text_gets_the_same_vector_in_any_batch(
    session: aiohttp.ClientSession,
) -> None:
    async with Adversary() as adv:
        _, _, one = await post(session, adv, embed_body("text number 3"))
        _, _, many = await post(session, adv, embed_body(TEXTS, encoding_format="base64"))
    np.testing.assert_array_equal(decode(parse(one)["data"][0]), decode(parse(many)["data"][3]))
    np.testing.assert_array_equal(adv.matrix(MODEL, TEXTS)[3], vector_for(MODEL, TEXTS[3], 32))


async def test_dimensions_and_model_widths(session: aiohttp.ClientSession) -> None:
    async with Adversary(models={MODEL: 16, "b": 24}) as adv:
        _, _, native = await post(session, adv, embed_body(["x"]))
        _, _, asked = await post(session, adv, embed_body(["x"], dimensions=8))
    assert len(parse(native)["data"][0]["embedding"]) == 16
    np.testing.assert_array_equal(decode(parse(asked)["data"][0]), adv.vector(MODEL, "x", 8))
    async with Adversary(ignore_dimensions=True) as adv:
        _, _, ignored = await post(session, adv, embed_body(["x"], dimensions=8))
    assert len(parse(ignored)["data"][0]["embedding"]) == 32


# -- request checks -------------------------------------------------------------------------


async def test_bearer_auth_is_optional_and_checked_when_set(
    session: aiohttp.ClientSession,
) -> None:
    async with Adversary() as adv:
        assert (await post(session, adv, embed_body(["a"])))[0] == 200
    async with Adversary(api_key="k1") as adv:
        missing = await post(session, adv, embed_body(["a"]))
        wrong = await post(session, adv, embed_body(["a"]), {"Authorization": "Bearer k2"})
        right = await post(session, adv, embed_body(["a"]), {"Authorization": "Bearer k1"})
    assert missing[0] == wrong[0] == 401 and right[0] == 200
    assert parse(missing[2])["error"] == {
        "code": 401,
        "message": "No auth credentials found",
        "metadata": None,
    }
    assert parse(wrong[2])["error"]["message"] == "User not found."
    assert adv.statuses == {401: 2, 200: 1} and adv.texts_billed == 1


@pytest.mark.parametrize(
    "body",
    [
        embed_body(""),
        embed_body([]),
        embed_body(["a", ""]),
        embed_body([1, 2]),
        embed_body(["a"], encoding_format="int8"),
        embed_body(["a"], dimensions=0),
        {"input": ["a"]},
    ],
)
async def test_invalid_requests_get_400(
    session: aiohttp.ClientSession, body: dict[str, Any]
) -> None:
    async with Adversary() as adv:
        status, _, raw = await post(session, adv, body)
    assert status == 400
    error = parse(raw)["error"]
    assert error["code"] == 400 and error["metadata"] == {"error_type": "invalid_request"}


async def test_unknown_model_is_400_model_not_found(session: aiohttp.ClientSession) -> None:
    async with Adversary(models={"known": 8}) as adv:
        status, _, raw = await post(session, adv, embed_body(["a"]))
    error = parse(raw)["error"]
    assert status == 400 and error["code"] == 400
    assert error["availability"]["code"] == "model_not_found"
    assert error["availability"]["retryable"] is False


async def test_size_cap_has_one_message_whatever_the_batch(
    session: aiohttp.ClientSession,
) -> None:
    texts = [f"t{i}" for i in range(300)]
    async with Adversary(size_cap=32, size_cap_status=413) as adv:
        at_cap = await post(session, adv, embed_body(texts[:32]))
        answers = [await post(session, adv, embed_body(texts[:n])) for n in (33, 64, 300)]
    assert at_cap[0] == 200
    assert {a[0] for a in answers} == {413}
    assert {a[2] for a in answers} == {answers[0][2]}  # byte-identical bodies
    assert parse(answers[0][2])["error"]["message"] == SIZE_CAP_MESSAGE
    assert adv.faults == {"size_cap": 3} and adv.texts_billed == 32


async def test_poison_fails_every_request_containing_it_with_one_message(
    session: aiohttp.ClientSession,
) -> None:
    async with Adversary(poison={"poison a", "poison b"}) as adv:
        bad = [
            await post(session, adv, embed_body(batch))
            for batch in (["poison a"], ["x", "poison b", "y"], ["poison a", "poison b"])
        ]
        good = await post(session, adv, embed_body(["x", "y"]))
    assert {b[0] for b in bad} == {400} and {b[2] for b in bad} == {bad[0][2]}
    error = parse(bad[0][2])["error"]
    assert error["message"] == POISON_MESSAGE and "poison" not in json.dumps(error)
    assert good[0] == 200 and adv.faults == {"poison": 3}


# -- faults ---------------------------------------------------------------------------------


async def one_fault(
    session: aiohttp.ClientSession, kind: str, texts: list[str] = TEXTS, **options: Any
) -> tuple[Adversary, int, dict[str, str], bytes]:
    encoding = options.pop("encoding", "float")
    async with Adversary(script=[kind], **options) as adv:
        status, headers, raw = await post(session, adv, embed_body(texts, encoding_format=encoding))
    assert adv.faults == {kind: 1} and adv.requests == 1
    return adv, status, headers, raw


@pytest.mark.parametrize(
    ("kind", "delay"), [("429", 0.25), ("429", 2.0), ("429_long", 3600.0), ("429_date", 30.0)]
)
async def test_429_carries_retry_after(
    session: aiohttp.ClientSession, kind: str, delay: float
) -> None:
    before = time.time()
    _, status, headers, raw = await one_fault(session, kind, retry_after=delay)
    assert status == 429
    if kind == "429_date":
        when = email.utils.parsedate_to_datetime(headers["Retry-After"]).timestamp()
        assert before + delay - 1 <= when <= time.time() + delay + 1
    else:
        assert float(headers["Retry-After"]) == delay
        assert headers["Retry-After"] == ("0.25" if delay == 0.25 else str(int(delay)))
    reset_ms = int(headers["X-RateLimit-Reset"])
    assert before + delay - 1 <= reset_ms / 1000 <= time.time() + delay + 1
    error = parse(raw)["error"]
    assert error["code"] == 429 and error["metadata"]["headers"]["X-RateLimit-Remaining"] == "0"


async def test_429_long_date_is_an_hour_away(session: aiohttp.ClientSession) -> None:
    _, status, headers, _ = await one_fault(session, "429_long_date")
    when = email.utils.parsedate_to_datetime(headers["Retry-After"]).timestamp()
    assert status == 429 and 3590 < when - time.time() < 3610


async def test_429_bare_has_no_hint_at_all(session: aiohttp.ClientSession) -> None:
    _, status, headers, raw = await one_fault(session, "429_bare")
    assert status == 429
    assert not {"retry-after", "retry-after-ms", "x-ratelimit-reset"} & {h.lower() for h in headers}
    error = parse(raw)["error"]
    assert error["code"] == 429 and "headers" not in error["metadata"]
    assert "availability" not in error


@pytest.mark.parametrize("code", [500, 502, 503])
async def test_5xx_with_the_json_envelope(session: aiohttp.ClientSession, code: int) -> None:
    _, status, _, raw = await one_fault(session, str(code))
    error = parse(raw)["error"]
    assert status == code and error["code"] == code and error["message"]
    if code == 503:
        assert error["availability"]["retryable"] is True


@pytest.mark.parametrize("kind", ["502_empty", "503_empty", "502_html", "503_html"])
async def test_5xx_without_json(session: aiohttp.ClientSession, kind: str) -> None:
    _, status, headers, raw = await one_fault(session, kind)
    assert status == int(kind[:3])
    if kind.endswith("empty"):
        assert raw == b""
    else:
        assert headers["Content-Type"].startswith("text/html") and raw.startswith(b"<html>")


async def test_error_inside_a_200(session: aiohttp.ClientSession) -> None:
    adv, status, _, raw = await one_fault(session, "error_200")
    body = parse(raw)
    assert status == 200 and "data" not in body
    assert body["error"]["code"] == 502 and body["error"]["message"] == "Provider returned error"
    assert adv.texts_billed == 0


@pytest.mark.parametrize("encoding", ["float", "base64"])
async def test_wrong_width_is_the_whole_response(
    session: aiohttp.ClientSession, encoding: str
) -> None:
    adv, status, _, raw = await one_fault(session, "wrong_width", encoding=encoding)
    data = parse(raw)["data"]
    assert status == 200 and len(data) == len(TEXTS)
    assert {decode(item).shape for item in data} == {(64,)}
    np.testing.assert_array_equal(decode(data[1]), vector_for(MODEL, TEXTS[1], 64))
    assert adv.texts_billed == len(TEXTS)


async def test_missing_item(session: aiohttp.ClientSession) -> None:
    _, status, _, raw = await one_fault(session, "missing_item")
    indices = [item["index"] for item in parse(raw)["data"]]
    assert status == 200 and len(indices) == len(TEXTS) - 1 and len(set(indices)) == len(indices)


async def test_empty_data(session: aiohttp.ClientSession) -> None:
    _, status, _, raw = await one_fault(session, "empty_data")
    body = parse(raw)
    assert status == 200 and body["data"] == [] and body["usage"]["prompt_tokens"] > 0


@pytest.mark.parametrize("texts", [TEXTS, ["alone"]])
async def test_duplicate_index(session: aiohttp.ClientSession, texts: list[str]) -> None:
    _, _, _, raw = await one_fault(session, "duplicate_index", texts)
    indices = [item["index"] for item in parse(raw)["data"]]
    assert len(set(indices)) < len(indices)
    assert len(indices) == max(len(texts), 2)


@pytest.mark.parametrize(("kind", "bad"), [("index_gap", len(TEXTS)), ("index_negative", -1)])
async def test_index_out_of_range(session: aiohttp.ClientSession, kind: str, bad: int) -> None:
    _, _, _, raw = await one_fault(session, kind)
    indices = sorted(item["index"] for item in parse(raw)["data"])
    assert len(indices) == len(TEXTS) and bad in indices
    assert set(indices) != set(range(len(TEXTS)))


@pytest.mark.parametrize("encoding", ["float", "base64"])
async def test_shuffled_is_legal_and_exact_by_index(
    session: aiohttp.ClientSession, encoding: str
) -> None:
    texts = [f"s{i}" for i in range(20)]
    adv, status, _, raw = await one_fault(session, "shuffled", texts, encoding=encoding)
    data = parse(raw)["data"]
    assert status == 200 and [item["index"] for item in data] != list(range(20))
    assert {type(item["embedding"]) for item in data} == {str if encoding == "base64" else list}
    assert sorted(item["index"] for item in data) == list(range(20))
    for item in data:
        np.testing.assert_array_equal(decode(item), adv.vector(MODEL, texts[item["index"]]))
    assert adv.counters.texts_ok == 20


@pytest.mark.parametrize("encoding", ["float", "base64"])
@pytest.mark.parametrize(("kind", "check"), [("nan", math.isnan), ("inf", math.isinf)])
async def test_non_finite_values(
    session: aiohttp.ClientSession, encoding: str, kind: str, check: Any
) -> None:
    _, status, _, raw = await one_fault(session, kind, encoding=encoding)
    if encoding == "float":
        assert (b"NaN" if kind == "nan" else b"Infinity") in raw  # not valid JSON
    vectors = [decode(item) for item in parse(raw)["data"]]
    bad = [(i, j) for i, v in enumerate(vectors) for j, x in enumerate(v) if check(float(x))]
    assert status == 200 and len(bad) == 1
    i, j = bad[0]
    vectors[i][j] = vector_for(MODEL, TEXTS[i], 32)[j]
    for vector, text in zip(vectors, TEXTS, strict=True):
        np.testing.assert_array_equal(vector, vector_for(MODEL, text, 32))


async def test_null_value(session: aiohttp.ClientSession) -> None:
    _, status, _, raw = await one_fault(session, "null_value", encoding="base64")
    values = [x for item in parse(raw)["data"] for x in item["embedding"]]
    assert status == 200 and values.count(None) == 1


async def test_base64_answered_with_floats_is_exact(session: aiohttp.ClientSession) -> None:
    adv, status, _, raw = await one_fault(session, "base64_as_float", encoding="base64")
    data = parse(raw)["data"]
    assert status == 200 and all(isinstance(item["embedding"], list) for item in data)
    for item, text in zip(data, TEXTS, strict=True):
        np.testing.assert_array_equal(decode(item), adv.vector(MODEL, text))


async def test_malformed_json(session: aiohttp.ClientSession) -> None:
    adv, status, headers, raw = await one_fault(session, "malformed_json")
    assert status == 200 and int(headers["Content-Length"]) == len(raw)
    with pytest.raises(json.JSONDecodeError):
        json.loads(raw)
    assert adv.texts_billed == len(TEXTS)


async def test_drop_mid_body(session: aiohttp.ClientSession) -> None:
    with pytest.raises(aiohttp.ClientPayloadError):
        await one_fault(session, "drop_mid_body")


async def test_reset_closes_without_an_answer(session: aiohttp.ClientSession) -> None:
    async with Adversary(script=["reset"]) as adv:
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await post(session, adv, embed_body(TEXTS))
        assert (await post(session, adv, embed_body(TEXTS)))[0] == 200
    assert adv.statuses == {0: 1, 200: 1} and adv.texts_billed == len(TEXTS)


async def test_stall_outlasts_a_client_timeout_and_ends_on_close(
    session: aiohttp.ClientSession,
) -> None:
    started = time.monotonic()
    async with Adversary(script=["stall"], stall=30.0) as adv:
        timeout = aiohttp.ClientTimeout(total=0.2)
        with pytest.raises(TimeoutError):
            async with session.post(
                f"{adv.base_url}/embeddings", json=embed_body(TEXTS), timeout=timeout
            ) as r:
                await r.read()
    assert time.monotonic() - started < 5  # closing ends the 30 s stall at once


async def test_stall_then_answers_normally(session: aiohttp.ClientSession) -> None:
    started = time.monotonic()
    adv, status, _, raw = await one_fault(session, "stall", stall=0.2)
    assert status == 200 and time.monotonic() - started >= 0.2
    np.testing.assert_array_equal(decode(parse(raw)["data"][0]), adv.vector(MODEL, TEXTS[0]))


@pytest.mark.parametrize(
    ("kind", "code", "availability"),
    [
        ("bad_key", 401, None),
        ("unknown_model", 400, "model_not_found"),
        ("no_endpoints", 404, "no_endpoints"),
        ("payment_required", 402, None),
    ],
)
async def test_request_wide_errors(
    session: aiohttp.ClientSession, kind: str, code: int, availability: str | None
) -> None:
    _, status, _, raw = await one_fault(session, kind)
    error = parse(raw)["error"]
    assert status == code and error["code"] == code
    assert (error.get("availability") or {}).get("code") == availability


def test_every_kind_is_tested_here() -> None:
    source = Path(__file__).read_text()
    untested = [k for k in FAULT_KINDS if f'"{k}"' not in source]
    assert untested in ([], ["500", "502", "503"])  # those three via str(code)
    assert set(RETRYABLE_MIX) <= set(FAULT_KINDS)


def test_bad_options_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown fault"):
        Adversary(script=["nope"])
    with pytest.raises(ValueError, match="unknown fault"):
        Adversary(fault_rate=0.5, kinds=["nope"])
    with pytest.raises(ValueError, match="fault_rate"):
        Adversary(fault_rate=1.5)
    with pytest.raises(ValueError, match="size_cap"):
        Adversary(size_cap=0)


# -- the random mix -------------------------------------------------------------------------


async def test_random_faults_are_seeded_and_at_the_rate(session: aiohttp.ClientSession) -> None:
    kinds = ["502", "503", "missing_item"]
    runs = []
    for _ in range(2):
        async with Adversary(fault_rate=0.25, seed=42, kinds=kinds) as adv:
            for _ in range(400):
                await post(session, adv, embed_body(["a", "b"]))
        runs.append([entry.kind for entry in adv.log])
    assert runs[0] == runs[1]
    faults = sum(kind != "ok" for kind in runs[0])
    assert 70 <= faults <= 130  # 100 expected
    assert set(runs[0]) == {"ok", *kinds}
    assert adv.requests == 400 and adv.counters.texts_seen == 800


async def test_script_goes_first_then_set_faults_changes_the_mix(
    session: aiohttp.ClientSession,
) -> None:
    async with Adversary(script=["503", "ok"], fault_rate=1.0, kinds=["502"]) as adv:
        statuses = [(await post(session, adv, embed_body(["a"])))[0] for _ in range(3)]
        adv.set_faults(0.0)
        statuses.append((await post(session, adv, embed_body(["a"])))[0])
        old = adv.reset_counters()
        assert adv.requests == 0 and old.requests == 4
    assert statuses == [503, 200, 502, 200]
    assert old.statuses == {503: 1, 502: 1, 200: 2} and old.texts_billed == 2


# -- other ways to run it -------------------------------------------------------------------


def test_running_in_a_thread_from_sync_code() -> None:
    adversary = Adversary(script=["502"])
    with adversary.running_in_thread() as adv:
        request = urllib.request.Request(
            f"{adv.base_url}/embeddings",
            data=json.dumps(embed_body(["a"])).encode(),
            headers={"Content-Type": "application/json"},
        )
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(request, timeout=5)
        info.value.close()
        with urllib.request.urlopen(request, timeout=5) as answer:
            body = json.loads(answer.read())
    np.testing.assert_array_equal(decode(body["data"][0]), adv.vector(MODEL, "a"))
    assert adv.statuses == {502: 1, 200: 1}


def test_as_a_subprocess() -> None:
    script = Path(__file__).with_name("adversary.py")
    proc = subprocess.Popen(
        [sys.executable, str(script), "--fault-rate", "0", "--dimensions", "4"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("listening on http://127.0.0.1:")
        base_url = line.split()[-1]
        request = urllib.request.Request(
            f"{base_url}/embeddings",
            data=json.dumps(embed_body(["a"])).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=5) as answer:
            body = json.loads(answer.read())
        np.testing.assert_array_equal(decode(body["data"][0]), vector_for(MODEL, "a", 4))
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
        if proc.stdout is not None:
            proc.stdout.close()
