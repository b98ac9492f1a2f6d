"""A fault-injecting, OpenRouter-compatible ``POST /embeddings`` server for adversarial tests.

Written from the wire spec (``spec/openrouter-embeddings-openapi.md``) and the facts notes
(``notes/openrouter-facts.md``) alone, independently of ``asyncembed``'s own test server, so that
the client is checked against a second reading of the protocol.

Usage, inside a test's event loop::

    async with Adversary(fault_rate=0.25, seed=7) as adv:
        ...  # point a client at adv.base_url
        assert adv.requests == ...

or, from synchronous code, on its own event loop in a background thread::

    with Adversary(script=["503"]).running_in_thread() as adv:
        ...

or as a separate process (prints ``listening on <base_url>`` once ready)::

    python tests/adversary.py --port 0 --fault-rate 0.25 --seed 7

Vectors are a pure function of ``(model, text, width)``: :func:`vector_for`. Every answer that
is not a fault is exact, over float JSON (float32 values written as their exact doubles) and
base64 (little-endian float32) alike.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import email.utils
import functools
import hashlib
import json
import math
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from aiohttp import web

Vector = npt.NDArray[np.float32]

DEFAULT_WIDTH = 32
PROVIDER = "FakeProvider"
DOCS_URL = "https://openrouter.ai/docs/api/reference/errors-and-debugging"

#: Every fault kind the server can produce (besides "ok", a normal answer).
FAULT_KINDS: tuple[str, ...] = (
    # 429s: Retry-After in seconds (``retry_after``), as an HTTP date, very long, or absent.
    "429",
    "429_date",
    "429_long",
    "429_long_date",
    "429_bare",
    # 5xx: OpenRouter's JSON envelope, an empty body, or a proxy's HTML page.
    "500",
    "502",
    "502_empty",
    "502_html",
    "503",
    "503_empty",
    "503_html",
    # HTTP 200 that carries an error, or data that cannot be trusted.
    "error_200",
    "wrong_width",
    "missing_item",
    "empty_data",
    "duplicate_index",
    "index_gap",
    "index_negative",
    "nan",
    "inf",
    "null_value",
    # Legal oddities: a correct client must accept these without a retry.
    "shuffled",
    "base64_as_float",
    # Transport trouble.
    "stall",
    "malformed_json",
    "drop_mid_body",
    "reset",
    # Request-wide, not retryable.
    "bad_key",
    "unknown_model",
    "no_endpoints",
    "payment_required",
)

#: Answers a correct client must accept as they are (no retry, exact vectors).
LEGAL_KINDS: frozenset[str] = frozenset({"ok", "shuffled", "base64_as_float"})

#: The retryable mix of the chaos tests: every one of these costs a correct client one request.
RETRYABLE_MIX: tuple[str, ...] = (
    "429",
    "502",
    "503",
    "error_200",
    "wrong_width",
    "missing_item",
    "duplicate_index",
    "nan",
    "malformed_json",
    "drop_mid_body",
    "reset",
    "stall",
)

#: The one message of every size-cap rejection, whatever the batch (like infinity's cap).
SIZE_CAP_MESSAGE = "Request too large: the number of inputs exceeds the provider's batch limit"
#: The one message of every poison rejection: like the real service, it does not say which input.
POISON_MESSAGE = "Provider returned error"
POISON_RAW = '{"error":{"message":"Invalid input: the input could not be processed","code":400}}'

_HTML_PAGE = (
    "<html>\r\n<head><title>{code} {reason}</title></head>\r\n<body>\r\n"
    "<center><h1>{code} {reason}</h1></center>\r\n<hr><center>cloudflare</center>\r\n"
    "</body>\r\n</html>\r\n"
)


@functools.lru_cache(maxsize=262_144)
def vector_for(model: str, text: str, width: int) -> Vector:
    """The server's vector for ``text``: a read-only unit float32 vector of ``width`` values."""
    digest = hashlib.blake2b(f"{model}\0{width}\0{text}".encode(), digest_size=8).digest()
    rng = np.random.default_rng(int.from_bytes(digest, "little"))
    raw = rng.standard_normal(width)
    vector = (raw / np.linalg.norm(raw)).astype(np.float32)
    vector.flags.writeable = False
    return vector


def tokens_for(text: str) -> int:
    """The server's token count for one text."""
    return max(1, len(text) // 4)


def _format_seconds(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else repr(float(seconds))


def _http_date(epoch: float) -> str:
    return email.utils.formatdate(epoch, usegmt=True)


@dataclass(frozen=True)
class RequestLog:
    """What the server did with one request."""

    n_inputs: int
    status: int  # the HTTP status line sent; 0 when the connection was closed without one
    kind: str  # "ok", a fault kind, "size_cap", "poison", "auth", "invalid", "unknown_model"
    inputs: tuple[str, ...] = ()
    encoding_format: str | None = None
    dimensions: int | None = None


@dataclass
class Counters:
    """The server's counters; :meth:`Adversary.reset_counters` starts a fresh set."""

    requests: int = 0  # requests that reached the handler
    texts_seen: int = 0  # inputs of every parsed request
    texts_billed: int = 0  # inputs of requests answered 200 with embeddings (damaged or not)
    texts_ok: int = 0  # inputs of requests answered 200 with correct embeddings
    statuses: Counter[int] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    batch_sizes: list[int] = field(default_factory=list)
    log: list[RequestLog] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0


class _Reject(Exception):
    def __init__(self, response: web.StreamResponse, kind: str) -> None:
        super().__init__(kind)
        self.response = response
        self.kind = kind


class Adversary:
    """A fault-injecting embeddings server on 127.0.0.1 (a free port unless ``port`` is given).

    Checks, in order: the bearer key (``api_key``; 401), the JSON body and fields (400),
    the model (``models``; 400 ``model_not_found``), the size cap (``size_cap`` inputs at
    most, else ``size_cap_status`` with :data:`SIZE_CAP_MESSAGE`), poison texts (400 with
    :data:`POISON_MESSAGE`, naming no input), then a fault: the next entry of the script,
    else with probability ``fault_rate`` one of ``kinds`` drawn with a ``random.Random(seed)``.
    """

    def __init__(
        self,
        *,
        dimensions: int = DEFAULT_WIDTH,
        models: Mapping[str, int] | None = None,
        api_key: str | None = None,
        fault_rate: float = 0.0,
        kinds: Sequence[str] = RETRYABLE_MIX,
        seed: int = 0,
        script: Iterable[str] = (),
        retry_after: float = 0.0,
        stall: float = 2.0,
        size_cap: int | None = None,
        size_cap_status: int = 413,
        poison: Iterable[str] = (),
        ignore_dimensions: bool = False,
        price_per_token: float = 2e-8,
        record_inputs: bool = True,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        if dimensions < 1:
            raise ValueError(f"dimensions must be >= 1, got {dimensions}")
        if size_cap is not None and size_cap < 1:
            raise ValueError(f"size_cap must be >= 1, got {size_cap}")
        if size_cap_status not in (400, 413, 422):
            raise ValueError(f"size_cap_status must be 400, 413 or 422, got {size_cap_status}")
        if stall < 0 or retry_after < 0:
            raise ValueError("stall and retry_after must be >= 0")
        self.dimensions = dimensions
        self.models = dict(models) if models is not None else None
        self.api_key = api_key
        self.retry_after = retry_after
        self.stall = stall
        self.size_cap = size_cap
        self.size_cap_status = size_cap_status
        self.poison = frozenset(poison)
        self.ignore_dimensions = ignore_dimensions
        self.price_per_token = price_per_token
        self.record_inputs = record_inputs
        self.host = host
        self._port = port
        self._script: list[str] = []
        self.script(script)
        self.fault_rate = 0.0
        self.kinds: tuple[str, ...] = ()
        self._rng = random.Random(seed)
        self.set_faults(fault_rate, kinds)
        self.counters = Counters()
        self._runner: web.AppRunner | None = None
        self._closing: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ids = 0

    # -- configuration -------------------------------------------------------------------

    def script(self, kinds: Iterable[str]) -> None:
        """Give the next requests (that pass the checks) these faults, in order ("ok": none)."""
        for kind in kinds:
            if kind != "ok" and kind not in FAULT_KINDS:
                raise ValueError(f"unknown fault kind {kind!r}")
            self._script.append(kind)

    @property
    def script_remaining(self) -> int:
        return len(self._script)

    def set_faults(
        self, fault_rate: float, kinds: Sequence[str] | None = None, *, seed: int | None = None
    ) -> None:
        """Change the random faults (and optionally reseed) while the server runs."""
        if not 0.0 <= fault_rate <= 1.0:
            raise ValueError(f"fault_rate must be in [0, 1], got {fault_rate}")
        if kinds is not None:
            unknown = [k for k in kinds if k not in FAULT_KINDS]
            if unknown:
                raise ValueError(f"unknown fault kinds {unknown}")
            if not kinds and fault_rate > 0:
                raise ValueError("a fault_rate needs at least one kind")
            self.kinds = tuple(kinds)
        self.fault_rate = fault_rate
        if seed is not None:
            self._rng.seed(seed)

    def reset_counters(self) -> Counters:
        """Start new counters; returns the old ones."""
        old, self.counters = self.counters, Counters()
        self.counters.in_flight = old.in_flight
        return old

    # -- counters, as properties --------------------------------------------------------

    @property
    def requests(self) -> int:
        return self.counters.requests

    @property
    def texts_billed(self) -> int:
        return self.counters.texts_billed

    @property
    def statuses(self) -> Counter[int]:
        return self.counters.statuses

    @property
    def faults(self) -> Counter[str]:
        return self.counters.faults

    @property
    def log(self) -> list[RequestLog]:
        return self.counters.log

    # -- vectors --------------------------------------------------------------------------

    def width_for(self, model: str, dimensions: int | None = None) -> int:
        """The width of a correct answer for ``model`` (and a requested ``dimensions``)."""
        if dimensions is not None and not self.ignore_dimensions:
            return dimensions
        if self.models is not None and model in self.models:
            return self.models[model]
        return self.dimensions

    def vector(self, model: str, text: str, dimensions: int | None = None) -> Vector:
        """The exact vector a correct answer carries for ``text``."""
        return vector_for(model, text, self.width_for(model, dimensions))

    def matrix(self, model: str, texts: Sequence[str], dimensions: int | None = None) -> Vector:
        """The exact ``(len(texts), width)`` matrix for ``texts``, in order."""
        width = self.width_for(model, dimensions)
        return np.stack([vector_for(model, t, width) for t in texts]).astype(np.float32)

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._runner is None:
            raise RuntimeError("the server is not running")
        return self._port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The API root to give a client: requests go to ``{base_url}/embeddings``."""
        return f"{self.url}/api/v1"

    async def start(self) -> None:
        if self._runner is not None:
            raise RuntimeError("the server is already running")
        app = web.Application(client_max_size=256 * 1024 * 1024)
        for path in ("/api/v1/embeddings", "/v1/embeddings", "/embeddings"):
            app.router.add_post(path, self._handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self._port)
        await site.start()
        self._port = int(runner.addresses[0][1])
        self._closing = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._runner = runner

    async def aclose(self) -> None:
        if self._runner is None:
            return
        assert self._closing is not None
        self._closing.set()  # stalled handlers end now
        runner, self._runner = self._runner, None
        await runner.cleanup()

    async def __aenter__(self) -> Adversary:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @contextlib.contextmanager
    def running_in_thread(self) -> Iterator[Adversary]:
        """Run the server on its own event loop in a daemon thread for the ``with`` block."""
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="adversary", daemon=True)
        thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self.start(), loop).result(timeout=10)
            try:
                yield self
            finally:
                asyncio.run_coroutine_threadsafe(self.aclose(), loop).result(timeout=10)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            loop.close()

    # -- the handler ----------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        counters = self.counters
        counters.requests += 1
        counters.in_flight += 1
        counters.max_in_flight = max(counters.max_in_flight, counters.in_flight)
        try:
            return await self._answer(request, counters)
        finally:
            counters.in_flight -= 1

    def _record(
        self,
        counters: Counters,
        *,
        status: int,
        kind: str,
        inputs: Sequence[str] = (),
        encoding_format: str | None = None,
        dimensions: int | None = None,
    ) -> None:
        counters.statuses[status] += 1
        if kind != "ok":
            counters.faults[kind] += 1
        counters.log.append(
            RequestLog(
                n_inputs=len(inputs),
                status=status,
                kind=kind,
                inputs=tuple(inputs) if self.record_inputs else (),
                encoding_format=encoding_format,
                dimensions=dimensions,
            )
        )

    async def _answer(self, request: web.Request, counters: Counters) -> web.StreamResponse:
        try:
            body = await self._parse(request)
        except _Reject as reject:
            self._record(counters, status=reject.response.status, kind=reject.kind)
            return reject.response
        model: str = body["model"]
        inputs: list[str] = body["input"]
        encoding: str | None = body.get("encoding_format")
        dimensions: int | None = body.get("dimensions")
        counters.texts_seen += len(inputs)
        counters.batch_sizes.append(len(inputs))

        def record(status: int, kind: str) -> None:
            self._record(
                counters,
                status=status,
                kind=kind,
                inputs=inputs,
                encoding_format=encoding,
                dimensions=dimensions,
            )

        if self.models is not None and model not in self.models:
            record(400, "unknown_model")
            return self._unknown_model(model)
        if self.size_cap is not None and len(inputs) > self.size_cap:
            record(self.size_cap_status, "size_cap")
            return _error(self.size_cap_status, SIZE_CAP_MESSAGE, {"error_type": "invalid_request"})
        if self.poison and not self.poison.isdisjoint(inputs):
            record(400, "poison")
            return _error(
                400,
                POISON_MESSAGE,
                {"provider_name": PROVIDER, "raw": POISON_RAW, "error_type": "invalid_request"},
            )

        kind = self._draw()
        width = self.width_for(model, dimensions)
        if kind in ("ok", "shuffled", "base64_as_float"):
            record(200, kind)
            counters.texts_billed += len(inputs)
            counters.texts_ok += len(inputs)
            return self._embeddings(model, inputs, width, encoding, kind)
        response = await self._fault(request, kind, model, inputs, width, encoding)
        status = response.status if response is not None else 0
        record(status, kind)
        if status == 200 and kind != "error_200":
            counters.texts_billed += len(inputs)
        return response if response is not None else web.Response(status=499)

    async def _parse(self, request: web.Request) -> dict[str, Any]:
        if self.api_key is not None:
            header = request.headers.get("Authorization")
            if header is None:
                raise _Reject(_error(401, "No auth credentials found"), "auth")
            if header != f"Bearer {self.api_key}":
                raise _Reject(_error(401, "User not found."), "auth")
        try:
            body = json.loads(await request.read())
        except ValueError:
            raise _Reject(_invalid("Invalid JSON in request body"), "invalid") from None
        if not isinstance(body, dict):
            raise _Reject(_invalid("Request body must be a JSON object"), "invalid")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise _Reject(_invalid("model: a non-empty string is required"), "invalid")
        raw = body.get("input")
        inputs = [raw] if isinstance(raw, str) else raw
        if not isinstance(inputs, list) or not inputs:
            raise _Reject(_invalid("input: a string or a non-empty array is required"), "invalid")
        for i, item in enumerate(inputs):
            if not isinstance(item, str):
                raise _Reject(_invalid(f"input[{i}]: only strings are supported here"), "invalid")
            if not item:
                raise _Reject(
                    _invalid(f"input[{i}]: String must contain at least 1 character(s)"),
                    "invalid",
                )
        body["input"] = inputs
        encoding = body.get("encoding_format")
        if encoding not in (None, "float", "base64"):
            raise _Reject(_invalid("encoding_format: must be 'float' or 'base64'"), "invalid")
        dimensions = body.get("dimensions")
        if dimensions is not None and (
            not isinstance(dimensions, int) or isinstance(dimensions, bool) or dimensions < 1
        ):
            raise _Reject(_invalid("dimensions: an integer >= 1 is required"), "invalid")
        return body

    def _draw(self) -> str:
        if self._script:
            return self._script.pop(0)
        if self.fault_rate > 0 and self._rng.random() < self.fault_rate:
            return self._rng.choice(self.kinds)
        return "ok"

    # -- answers --------------------------------------------------------------------------

    def _next_id(self) -> str:
        self._ids += 1
        return f"gen-emb-{self._ids:08d}"

    def _usage(self, inputs: Sequence[str]) -> dict[str, Any]:
        tokens = sum(tokens_for(t) for t in inputs)
        return {
            "prompt_tokens": tokens,
            "total_tokens": tokens,
            "cost": tokens * self.price_per_token,
            "is_byok": False,
        }

    def _body(
        self,
        model: str,
        inputs: Sequence[str],
        items: list[dict[str, Any]],
    ) -> dict[str, Any]:
        return {
            "id": self._next_id(),
            "object": "list",
            "model": model,
            "provider": PROVIDER,
            "data": items,
            "usage": self._usage(inputs),
        }

    def _items(
        self, model: str, inputs: Sequence[str], width: int, as_base64: bool
    ) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        for i, text in enumerate(inputs):
            vector = vector_for(model, text, width)
            embedding: str | list[float] = (
                base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
                if as_base64
                else vector.tolist()
            )
            items.append({"object": "embedding", "embedding": embedding, "index": i})
        return items

    def _embeddings(
        self, model: str, inputs: Sequence[str], width: int, encoding: str | None, kind: str
    ) -> web.Response:
        items = self._items(
            model, inputs, width, encoding == "base64" and kind != "base64_as_float"
        )
        if kind == "shuffled" and len(items) > 1:
            original = list(items)
            while items == original:
                self._rng.shuffle(items)
        return _json(200, self._body(model, inputs, items))

    async def _fault(
        self,
        request: web.Request,
        kind: str,
        model: str,
        inputs: Sequence[str],
        width: int,
        encoding: str | None,
    ) -> web.StreamResponse | None:
        as_base64 = encoding == "base64"
        n = len(inputs)
        now = time.time()
        if kind.startswith("429"):
            return self._rate_limited(kind, model, now)
        if kind == "500":
            return _error(500, "Internal Server Error", {"error_type": "server"})
        if kind == "502":
            return _error(
                502,
                "Provider returned error",
                {
                    "provider_name": PROVIDER,
                    "raw": "upstream connect error or disconnect/reset before headers",
                    "error_type": "provider_unavailable",
                },
            )
        if kind == "503":
            return _error(
                503,
                "No available model provider that meets your routing requirements",
                {"error_type": "provider_overloaded"},
                availability={
                    "code": "temporarily_unavailable",
                    "retryable": True,
                    "requested_models": [model],
                    "docs_url": DOCS_URL,
                },
            )
        if kind in ("502_empty", "503_empty"):
            return web.Response(status=int(kind[:3]), body=b"")
        if kind in ("502_html", "503_html"):
            code = int(kind[:3])
            reason = "Bad Gateway" if code == 502 else "Service Temporarily Unavailable"
            return web.Response(
                status=code,
                text=_HTML_PAGE.format(code=code, reason=reason),
                content_type="text/html",
            )
        if kind == "error_200":
            return _json(
                200,
                {
                    "error": {
                        "code": 502,
                        "message": "Provider returned error",
                        "metadata": {
                            "provider_name": PROVIDER,
                            "raw": "upstream returned an empty response",
                        },
                    },
                    "user_id": "user_adversary",
                },
            )
        if kind == "bad_key":
            return _error(401, "User not found.")
        if kind == "unknown_model":
            return self._unknown_model(model)
        if kind == "no_endpoints":
            return _error(
                404,
                f"No endpoints found for {model}.",
                availability={
                    "code": "no_endpoints",
                    "retryable": False,
                    "requested_models": [model],
                    "docs_url": DOCS_URL,
                },
            )
        if kind == "payment_required":
            return _error(402, "Insufficient credits. Add more using https://openrouter.ai/credits")
        if kind == "reset":
            _close(request)
            return None
        if kind == "stall":
            assert self._closing is not None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), self.stall)
            if self._closing.is_set():
                _close(request)
                return None
            return self._embeddings(model, inputs, width, encoding, "ok")

        # The rest are 200s whose data cannot be trusted.
        items = self._items(model, inputs, width, as_base64 and kind != "null_value")
        body = self._body(model, inputs, items)
        if kind == "wrong_width":
            other = width * 2
            body["data"] = self._items(model, inputs, other, as_base64)
        elif kind == "missing_item":
            del items[self._rng.randrange(n)]
        elif kind == "empty_data":
            body["data"] = []
        elif kind == "duplicate_index":
            if n == 1:
                items.append(dict(items[0]))
            else:
                j, k = self._rng.sample(range(n), 2)
                items[j]["index"] = items[k]["index"]
        elif kind == "index_gap":
            items[self._rng.randrange(n)]["index"] = n  # one past the end; one index missing
        elif kind == "index_negative":
            items[self._rng.randrange(n)]["index"] = -1
        elif kind in ("nan", "inf", "null_value"):
            j = self._rng.randrange(n)
            bad = {"nan": math.nan, "inf": math.inf, "null_value": None}[kind]
            vector = vector_for(model, inputs[j], width).astype(np.float32)
            pos = self._rng.randrange(width)
            if as_base64 and kind != "null_value":
                vector[pos] = np.float32(bad)
                items[j]["embedding"] = base64.b64encode(vector.astype("<f4").tobytes()).decode()
            else:
                values: list[float | None] = list(vector.tolist())
                values[pos] = bad
                items[j]["embedding"] = values
        elif kind == "malformed_json":
            raw = json.dumps(body).encode()
            return web.Response(
                status=200, body=raw[: max(1, len(raw) * 3 // 5)], content_type="application/json"
            )
        elif kind == "drop_mid_body":
            raw = json.dumps(body).encode()
            response = web.StreamResponse(status=200)
            response.content_type = "application/json"
            response.content_length = len(raw)
            await response.prepare(request)
            await response.write(raw[: len(raw) // 2])
            _close(request)
            return response
        else:  # pragma: no cover - every kind is handled above
            raise AssertionError(kind)
        return _json(200, body)

    def _rate_limited(self, kind: str, model: str, now: float) -> web.Response:
        delay = 3600.0 if kind.startswith("429_long") else self.retry_after
        if kind == "429_bare":
            return _error(
                429,
                "Provider returned error",
                {"provider_name": PROVIDER, "raw": "Too many requests, please slow down"},
            )
        reset_ms = str(int((now + delay) * 1000))
        rate_headers = {
            "X-RateLimit-Limit": "20",
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": reset_ms,
        }
        retry_after = _http_date(now + delay) if kind.endswith("date") else _format_seconds(delay)
        response = _error(
            429,
            f"Rate limit exceeded: limit_rpm/{model}",
            {"headers": rate_headers, "provider_name": None},
        )
        response.headers.update(rate_headers)
        response.headers["Retry-After"] = retry_after
        return response

    def _unknown_model(self, model: str) -> web.Response:
        return _error(
            400,
            f"{model} is not a valid model ID",
            availability={
                "code": "model_not_found",
                "retryable": False,
                "requested_models": [model],
                "docs_url": DOCS_URL,
            },
        )


def _json(status: int, body: Mapping[str, Any]) -> web.Response:
    # json.dumps writes NaN/Infinity literals for the non-finite faults, as broken servers do.
    return web.Response(
        status=status, body=json.dumps(body).encode(), content_type="application/json"
    )


def _error(
    status: int,
    message: str,
    metadata: Mapping[str, Any] | None = None,
    *,
    availability: Mapping[str, Any] | None = None,
) -> web.Response:
    error: dict[str, Any] = {"code": status, "message": message, "metadata": metadata}
    if availability is not None:
        error["availability"] = dict(availability)
    return _json(status, {"error": error})


def _invalid(message: str) -> web.Response:
    return _error(400, message, {"error_type": "invalid_request"})


def _close(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        transport.close()


# -- as a process -----------------------------------------------------------------------


async def _serve(args: argparse.Namespace) -> None:
    adversary = Adversary(
        dimensions=args.dimensions,
        fault_rate=args.fault_rate,
        kinds=args.kinds.split(",") if args.kinds else RETRYABLE_MIX,
        seed=args.seed,
        retry_after=args.retry_after,
        stall=args.stall,
        size_cap=args.size_cap,
        poison=args.poison or (),
        api_key=args.api_key,
        record_inputs=False,
        host=args.host,
        port=args.port,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with adversary:
        print(f"listening on {adversary.base_url}", flush=True)  # noqa: T201
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--dimensions", type=int, default=DEFAULT_WIDTH)
    parser.add_argument("--fault-rate", type=float, default=0.0)
    parser.add_argument("--kinds", default="", help="comma-separated fault kinds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--retry-after", type=float, default=0.0)
    parser.add_argument("--stall", type=float, default=2.0)
    parser.add_argument("--size-cap", type=int, default=None)
    parser.add_argument("--poison", action="append")
    parser.add_argument("--api-key", default=None)
    asyncio.run(_serve(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
