"""Decoding one embeddings response body with one library, in-process.

Each library turns the same body into what its users get: a float32 ``(n, d)`` matrix,
except the ``openai`` client, whose users get its pydantic objects (base64 decoded to
``list[float]`` by the client itself, as ``embeddings.create`` does by default).

Config: ``lib``, ``n`` (embeddings per body), ``dims`` (list), ``encodings`` (list),
``rounds``; with ``base_url`` and ``model``, the body is fetched from that server
instead of built here. Mode ``block`` decodes one huge body (``n`` x ``dims[0]``) and reports the
single longest decode: the loop would be blocked that long if it ran on the loop.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from benchmarks.peers._peer import config, emit

Decoder = Callable[[bytes, int], Any]


def build_body(n: int, dims: int, encoding: str) -> bytes:
    """An OpenAI-shaped response with ``n`` random unit vectors, as a server sends it."""
    rng = np.random.default_rng(0)
    block = rng.standard_normal((n, dims), dtype=np.float32)
    block /= np.linalg.norm(block, axis=1, keepdims=True)
    if encoding == "base64":
        rows: list[Any] = [base64.b64encode(row.tobytes()).decode() for row in block]
    else:
        # 10 decimals, as OpenAI prints them (-0.0069292834), not float64's 17 digits
        rows = np.round(block.astype(np.float64), 10).tolist()
    body = {
        "object": "list",
        "data": [{"object": "embedding", "embedding": r, "index": i} for i, r in enumerate(rows)],
        "model": "openai/text-embedding-3-small",
        "usage": {"prompt_tokens": 10 * n, "total_tokens": 10 * n},
    }
    return json.dumps(body, separators=(",", ":")).encode()


def fetch_body(base_url: str, model: str, n: int, encoding: str) -> bytes:
    """The raw body the server answers to one request of ``n`` texts."""
    import urllib.request

    request = urllib.request.Request(
        base_url + "/embeddings",
        data=json.dumps(
            {
                "model": model,
                "input": [f"stall text {i} about the sea at night" for i in range(n)],
                "encoding_format": encoding,
            }
        ).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=300) as response:
        body: bytes = response.read()
    return body


def _to_matrix(data: list[Any], key: Callable[[Any], Any]) -> np.ndarray[Any, Any]:
    first = key(data[0])
    if isinstance(first, str):
        raw = b"".join([base64.b64decode(key(item)) for item in data])
        return np.frombuffer(raw, dtype="<f4").reshape(len(data), -1)
    return np.array([key(item) for item in data], dtype=np.float32)


def decoder(lib: str, encoding: str) -> Decoder:
    """The decode function of ``lib`` (imports happen here, outside the timing)."""
    if lib == "asyncembed":
        from asyncembed._codec import decode_response

        return lambda body, n: decode_response(200, {}, body, expected=n, encoding=encoding).vectors  # type: ignore[arg-type]
    if lib == "json":
        return lambda body, n: _to_matrix(json.loads(body)["data"], lambda d: d["embedding"])
    if lib == "orjson":
        import orjson

        return lambda body, n: _to_matrix(orjson.loads(body)["data"], lambda d: d["embedding"])
    if lib == "pydantic":
        import pydantic

        class Item(pydantic.BaseModel):
            embedding: list[float] | str
            index: int

        class Response(pydantic.BaseModel):
            data: list[Item]
            model: str

        return lambda body, n: _to_matrix(
            Response.model_validate_json(body).data, lambda d: d.embedding
        )
    if lib == "openai":
        from openai import omit
        from openai._models import construct_type
        from openai.lib._parsing._embeddings import parse_embedding_response
        from openai.types import CreateEmbeddingResponse

        def parse(body: bytes, n: int) -> Any:
            # what the client does with a 200: json.loads (httpx's response.json()),
            # then construct_type (no validation by default), then the base64 post-parser
            # that embeddings.create installs when encoding_format is left at its default
            data = json.loads(body)
            response = construct_type(type_=CreateEmbeddingResponse, value=data)
            return parse_embedding_response(response, encoding_format=omit)  # type: ignore[arg-type]

        return parse
    raise SystemExit(f"unknown lib {lib!r}")


def best(fn: Decoder, body: bytes, n: int, rounds: int) -> float:
    """The fastest of ``rounds`` decodes, in seconds (after one warm-up decode)."""
    fn(body, n)
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn(body, n)
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    cfg = config()
    lib, n, rounds = cfg["lib"], cfg["n"], cfg["rounds"]
    results: dict[str, float] = {}
    sizes: dict[str, int] = {}
    for encoding in cfg["encodings"]:
        fn = decoder(lib, encoding)
        for dims in cfg["dims"]:
            body = (
                fetch_body(cfg["base_url"], cfg["model"], n, encoding)
                if cfg.get("base_url")
                else build_body(n, dims, encoding)
            )
            key = f"{encoding}-{dims}"
            sizes[key] = len(body)
            seconds = best(fn, body, n, rounds)
            results[key] = seconds if cfg.get("mode") == "block" else seconds / n * 1e6
    unit = "s_per_body" if cfg.get("mode") == "block" else "us_per_embedding"
    emit(peer=lib, n=n, unit=unit, results=results, body_bytes=sizes)


if __name__ == "__main__":
    main()
