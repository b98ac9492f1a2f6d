"""``LocalServer``: an OpenRouter-compatible embeddings server on aiohttp.web, for tests.

It answers ``POST /api/v1/embeddings`` (also ``/v1/embeddings`` and ``/embeddings``)
with deterministic vectors (see :func:`expected_vector`), validates requests as the
real service does, enforces an optional API key and RPM/TPM limits, simulates latency,
injects faults (scripted or random), and records what it received.

Time comes from one :class:`~asyncembed.Clock` (``clock=``), the same object the
:class:`~asyncembed.Embedder` takes: the RPM/TPM windows, the simulated latency and
``RequestRecord.arrived`` use it, so one :class:`~asyncembed.testing.FakeClock` drives the
client and the server and no test waits for the latency for real. The headers that
carry wall time (``X-RateLimit-Reset`` in epoch milliseconds, ``Retry-After`` as an HTTP
date) are the clock's reading plus an epoch offset fixed when the server is created
(:meth:`LocalServer.wall_time`).

Over 400 lines: one class whose parts (lifecycle, validation, faults, recording) all sit
on the one request path; split, the path would be harder to follow, not easier.
"""

from __future__ import annotations

import asyncio
import email.utils
import hmac
import logging
import math
import random
import time
from collections.abc import Collection, Iterable, Mapping
from types import MappingProxyType, TracebackType
from typing import Any, Literal

import msgspec
from aiohttp import web

from .._clock import Clock, SystemClock
from .._types import Vector
from ._faults import Fault, FaultPlan, Faults, FaultSpec
from ._ratelimit import WindowLimiter
from ._records import Recorder, RequestRecord, ServerStats
from ._vectors import MAX_DIMENSIONS, count_tokens, expected_vector
from ._wire import BadRequest, ParsedRequest, embeddings_body, error_body, parse_request

__all__ = ["LocalServer", "RequestRecord", "ServerStats"]

_log = logging.getLogger("asyncembed.testing")
_ENCODER = msgspec.json.Encoder()
_PATHS = ("/api/v1/embeddings", "/v1/embeddings", "/embeddings")
# Faults answered with a (possibly altered) embeddings body.
_BODY_FAULTS = frozenset(
    {
        "empty_data",
        "shuffled",
        "bad_index",
        "truncated",
        "slow",
        "base64_ignored",
        "nan",
        "wrong_width",
        "missing_item",
    }
)
_HTML_502 = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n</body>\r\n</html>\r\n"
)


class LocalServer:
    """A local OpenRouter-compatible embeddings server (aiohttp.web on 127.0.0.1).

    Usage::

        async with LocalServer(dimensions=8, script=["429", "ok"]) as server:
            client = Embedder(base_url=server.base_url, api_key="x")
            ...
            assert server.stats.requests == 2

    Args:
        host: The interface to bind.
        port: The port; 0 picks a free one (see :attr:`port`).
        dimensions: The vector length of any model not named in ``models``.
        models: Model name → vector length. When given, other models get a 400
            (``model_not_found``); when ``None``, every model is accepted.
        api_key: When set, requests must send ``Authorization: Bearer <api_key>``
            (401 otherwise). ``None`` accepts any request.
        latency: Seconds added to every answer (slept on ``clock``).
        latency_per_input: Seconds added per input.
        latency_jitter: Each answer's added time is drawn uniformly from
            ``[1 - latency_jitter, 1 + latency_jitter]`` times the above, as a real
            API's latency varies (in 0..1; 0, the default, adds exactly the above).
            Draws come from a fixed seed, so a run is repeatable.
        max_inputs: Most inputs per request (400 beyond); ``None`` for no limit.
        rpm: Requests per minute (429 beyond), or ``None``.
        tpm: Tokens per minute (429 beyond; 413 for a request larger than the limit).
        price_per_token: ``usage.cost`` per token, in USD.
        faults: Random faults, drawn once the script is empty.
        script: Faults for the next requests, one per request, in order.
        reject_inputs: Texts that make any request containing them fail with 400.
        base64_unsupported_models: Models that do not honour ``encoding_format=base64``.
        base64_unsupported_mode: What those models answer to base64 requests:
            ``"empty_data"`` (200 with ``data: []``) or ``"float"`` (float arrays).
        keepalive_timeout: Seconds an idle keep-alive connection stays open.
        record_requests: Keep a :class:`RequestRecord` per request in :attr:`requests`
            (counters are kept either way).
        record_inputs: Keep each request's inputs in :attr:`requests` (turn off for
            big benchmarks to save memory).
        max_body_bytes: Largest request body accepted (413 beyond).
        clock: The :class:`~asyncembed.Clock` for the RPM/TPM windows, the latency and
            ``RequestRecord.arrived`` (``None``: the real clock). Pass the client's
            :class:`~asyncembed.testing.FakeClock` to move both by hand. Wall-clock
            headers are derived from it, see :meth:`wall_time`.

    Raises:
        ValueError: If a setting is out of range.
        TypeError: If ``clock`` is not a :class:`~asyncembed.Clock` (a function such as
            ``time.time``, as it used to be).
    """

    __test__ = False  # not a pytest test class, despite the name

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        dimensions: int = 1536,
        models: Mapping[str, int] | None = None,
        api_key: str | None = None,
        latency: float = 0.0,
        latency_per_input: float = 0.0,
        latency_jitter: float = 0.0,
        max_inputs: int | None = 2048,
        rpm: int | None = None,
        tpm: int | None = None,
        price_per_token: float = 2e-8,
        faults: Faults | None = None,
        script: Iterable[FaultSpec] = (),
        reject_inputs: Collection[str] = (),
        base64_unsupported_models: Collection[str] = (),
        base64_unsupported_mode: Literal["empty_data", "float"] = "empty_data",
        keepalive_timeout: float = 75.0,
        record_requests: bool = True,
        record_inputs: bool = True,
        max_body_bytes: int = 256 * 1024 * 1024,
        clock: Clock | None = None,
    ) -> None:
        if clock is not None and not callable(getattr(clock, "sleep", None)):
            # The clock used to be a time.time-like function: say what it is now.
            raise TypeError(f"clock must be a Clock, with now() and async sleep(), got {clock!r}")
        _check(0 <= port <= 65535, f"port must be in 0..65535, got {port}")
        _check(1 <= dimensions <= MAX_DIMENSIONS, f"dimensions must be in 1..{MAX_DIMENSIONS}")
        for name, dims in (models or {}).items():
            _check(1 <= dims <= MAX_DIMENSIONS, f"models[{name!r}] must be in 1..{MAX_DIMENSIONS}")
        _check(latency >= 0, f"latency must be >= 0, got {latency}")
        _check(latency_per_input >= 0, f"latency_per_input must be >= 0, got {latency_per_input}")
        _check(0 <= latency_jitter <= 1, f"latency_jitter must be in 0..1, got {latency_jitter}")
        _check(max_inputs is None or max_inputs >= 1, f"max_inputs must be >= 1, got {max_inputs}")
        _check(rpm is None or rpm >= 1, f"rpm must be >= 1 or None, got {rpm}")
        _check(tpm is None or tpm >= 1, f"tpm must be >= 1 or None, got {tpm}")
        _check(price_per_token >= 0, f"price_per_token must be >= 0, got {price_per_token}")
        _check(
            base64_unsupported_mode in ("empty_data", "float"),
            "base64_unsupported_mode must be 'empty_data' or 'float', "
            f"got {base64_unsupported_mode!r}",
        )
        _check(keepalive_timeout > 0, f"keepalive_timeout must be > 0, got {keepalive_timeout}")
        _check(max_body_bytes >= 1024, f"max_body_bytes must be >= 1024, got {max_body_bytes}")
        if api_key is not None and not api_key:
            raise ValueError("api_key must be a non-empty string or None")
        self.host = host
        self.dimensions = dimensions
        self.models: Mapping[str, int] | None = (
            MappingProxyType(dict(models)) if models is not None else None
        )
        self.latency = latency
        self.latency_per_input = latency_per_input
        self.latency_jitter = latency_jitter
        self.max_inputs = max_inputs
        self.price_per_token = price_per_token
        self.reject_inputs = frozenset(reject_inputs)
        self.base64_unsupported_models = frozenset(base64_unsupported_models)
        self.base64_unsupported_mode = base64_unsupported_mode
        self.keepalive_timeout = keepalive_timeout
        self.max_body_bytes = max_body_bytes
        self._port = port
        self._expected_auth = f"Bearer {api_key}".encode() if api_key is not None else None
        self.clock: Clock = clock or SystemClock()
        # Fixed once: the date headers move with the clock, fake or real, and a test
        # can compute them with wall_time().
        self._epoch_offset = time.time() - self.clock.now()
        self._jitter = random.Random(0)
        self._limiter = WindowLimiter(rpm=rpm, tpm=tpm, clock=self.clock.now)
        self._plan = FaultPlan(faults, script)
        self._runner: web.AppRunner | None = None
        self._closed = False
        self._ids = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._recorder = Recorder(record_requests=record_requests, record_inputs=record_inputs)

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Bind and start serving.

        Raises:
            RuntimeError: If the server was already started or closed.
            OSError: If the address cannot be bound.
        """
        if self._runner is not None or self._closed:
            raise RuntimeError("LocalServer can be started only once")
        app = web.Application(client_max_size=self.max_body_bytes)
        for path in _PATHS:
            app.router.add_post(path, self._handle)
        runner = web.AppRunner(
            app,
            access_log=None,
            keepalive_timeout=self.keepalive_timeout,
            handler_cancellation=True,  # a client that hangs up cancels the simulated work
            shutdown_timeout=0.5,
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self._port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = runner.addresses[0][1]
        _log.debug("local server listening on %s", self.base_url)

    async def aclose(self) -> None:
        """Stop serving and close every connection. Idempotent."""
        self._closed = True
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> LocalServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    @property
    def port(self) -> int:
        """The bound port (the real one once started with ``port=0``)."""
        return self._port

    @property
    def url(self) -> str:
        """``http://HOST:PORT``.

        Raises:
            RuntimeError: If the server is not running.
        """
        if self._runner is None:
            raise RuntimeError("LocalServer is not running: use 'async with' or start()")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self._port}"

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT/api/v1``, the value to give a client as its base URL.

        Raises:
            RuntimeError: If the server is not running.
        """
        return self.url + "/api/v1"

    def wall_time(self, at: float | None = None) -> float:
        """The epoch seconds the server's headers give for clock reading ``at``.

        Args:
            at: A reading of :attr:`clock` (``None``: now).
        """
        return (self.clock.now() if at is None else at) + self._epoch_offset

    async def wait_idle(self) -> None:
        """Wait until no request is being handled (e.g. after a client hung up)."""
        await self._idle.wait()

    # -- configuration at run time -------------------------------------------------

    def script(self, specs: Iterable[FaultSpec]) -> None:
        """Append faults for the next requests, one per request (``"ok"`` for none).

        Raises:
            ValueError: If an entry names no fault.
        """
        self._plan.extend(specs)

    @property
    def script_remaining(self) -> int:
        """How many scripted faults are still to be consumed."""
        return self._plan.remaining

    def set_faults(self, faults: Faults | None) -> None:
        """Replace the random faults (and re-seed their RNG); the script is kept."""
        pending = list(self._plan.drain())
        self._plan = FaultPlan(faults, pending)

    def dimensions_for(self, model: str) -> int:
        """The vector length the server uses for ``model`` when no ``dimensions`` is sent."""
        if self.models is not None and model in self.models:
            return self.models[model]
        return self.dimensions

    def vector_for(
        self, text: str | list[int], *, model: str | None = None, dimensions: int | None = None
    ) -> Vector:
        """The vector this server returns for ``text``; see :func:`expected_vector`.

        Args:
            text: The input text, or one token-id array.
            model: The request's model; ``None`` means the only model in ``models``.
            dimensions: The request's ``dimensions``; ``None`` uses the model's.

        Raises:
            ValueError: If ``model`` is ``None`` and ``models`` does not name exactly
                one model, or if ``dimensions`` is out of range.
        """
        if model is None:
            if self.models is None or len(self.models) != 1:
                raise ValueError("pass model=...: the server does not have exactly one model")
            (model,) = self.models
        return expected_vector(model, text, dimensions or self.dimensions_for(model))

    # -- request handling ----------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self._recorder.enter()
        self._idle.clear()
        try:
            return await self._serve(request, self.clock.now())
        finally:
            self._recorder.leave()
            if not self._recorder.in_flight:
                self._idle.set()

    async def _serve(self, request: web.Request, arrived: float) -> web.StreamResponse:
        if self._expected_auth is not None:
            sent = request.headers.get("Authorization", "")
            if not hmac.compare_digest(
                sent.encode("utf-8", "surrogateescape"), self._expected_auth
            ):
                # Never echo what was sent: it may be a real key.
                message = "User not found." if sent else "No auth credentials found"
                return self._error(request, arrived, None, 401, error_body(401, message))
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            message = f"Request body is larger than {self.max_body_bytes} bytes"
            return self._error(request, arrived, None, 413, error_body(413, message))
        try:
            parsed = parse_request(
                raw,
                models=self.models,
                max_inputs=self.max_inputs,
                reject_inputs=self.reject_inputs,
            )
        except BadRequest as exc:
            body = error_body(exc.status, exc.message, availability=exc.availability)
            return self._error(request, arrived, None, exc.status, body)
        n = len(parsed.items)
        self._recorder.inputs += n
        tokens = count_tokens(parsed.items)
        if self._limiter.too_large(tokens):
            message = (
                f"Request too large: {tokens} tokens, the limit is {self._limiter.tpm} per minute"
            )
            return self._error(request, arrived, parsed, 413, error_body(413, message), tokens)
        refusal = self._limiter.admit(tokens)
        if refusal is not None:
            headers = refusal.headers(self._epoch_offset)
            copy = {k: v for k, v in headers.items() if k.startswith("X-")}
            message = f"Rate limit exceeded: {refusal.limit} {refusal.kind} per minute"
            metadata = {"error_type": "rate_limit_exceeded", "headers": copy}
            body = error_body(429, message, metadata=metadata)
            return self._error(
                request, arrived, parsed, 429, body, tokens, headers=headers, fault="rate_limited"
            )
        fault = self._plan.next()
        name = fault.name if fault is not None else None
        delay = self.latency + self.latency_per_input * n
        if fault is not None:
            _log.debug("fault %s for a request of %d inputs", fault.name, n)
            self._recorder.faults[fault.name] += 1
            if fault.kind == "slow":
                delay += fault.delay
        if delay > 0:
            if self.latency_jitter:
                delay *= self._jitter.uniform(1 - self.latency_jitter, 1 + self.latency_jitter)
            try:
                await self.clock.sleep(delay)
            except asyncio.CancelledError:
                # The client hung up (aiohttp cancels the handler): 499, as nginx logs it.
                self._recorder.finish(request, arrived, parsed, 499, tokens, name)
                raise
        if fault is None or fault.kind in _BODY_FAULTS:
            return await self._embeddings(request, arrived, parsed, tokens, fault)
        if fault.kind == "status":
            headers = {}
            if fault.retry_after is not None and fault.retry_after_date:
                when = self.wall_time() + fault.retry_after
                headers["Retry-After"] = email.utils.formatdate(math.ceil(when), usegmt=True)
            elif fault.retry_after is not None:
                headers["Retry-After"] = _seconds(fault.retry_after)
            body = error_body(
                fault.code,
                fault.message,
                availability=fault.availability,
                retry_after=fault.retry_after,
                retryable=fault.retryable,
            )
            return self._error(
                request, arrived, parsed, fault.code, body, tokens, headers=headers, fault=name
            )
        if fault.kind == "html_502":
            self._recorder.finish(request, arrived, parsed, 502, tokens, name)
            return web.Response(status=502, body=_HTML_502, content_type="text/html")
        if fault.kind == "error_200":
            metadata = {"provider_name": "LocalServer", "raw": "upstream provider failed"}
            body = error_body(502, "Provider returned error", metadata=metadata)
            return self._error(request, arrived, parsed, 200, body, tokens, fault=name)
        # "reset": hang up without a word.
        self._recorder.finish(request, arrived, parsed, 0, tokens, name)
        if request.transport is not None:
            request.transport.close()
        return web.Response()

    async def _embeddings(
        self,
        request: web.Request,
        arrived: float,
        parsed: ParsedRequest,
        tokens: int,
        fault: Fault | None,
    ) -> web.StreamResponse:
        kind = fault.kind if fault is not None else None
        name = fault.name if fault is not None else None
        base64 = parsed.encoding_format == "base64"
        empty = kind == "empty_data"
        if base64 and parsed.model in self.base64_unsupported_models:
            if self.base64_unsupported_mode == "empty_data":
                empty = True
            base64 = False
        if kind == "base64_ignored":
            base64 = False
        self._ids += 1
        cost = tokens * self.price_per_token
        body = embeddings_body(
            parsed,
            response_id=f"embd-local-{self._ids:08d}",
            dimensions=(parsed.dimensions or self.dimensions_for(parsed.model))
            + (kind == "wrong_width"),
            base64=base64,
            empty=empty,
            fault=kind,
            tokens=tokens,
            cost=cost,
            rng=self._plan.rng,
        )
        self._recorder.finish(request, arrived, parsed, 200, tokens, name)
        if kind == "truncated":
            response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
            response.content_length = len(body)
            await response.prepare(request)
            await response.write(body[: len(body) // 2])
            if request.transport is not None:
                request.transport.close()
            return response
        self._recorder.billed(0 if empty else len(parsed.items), tokens, cost)
        return web.Response(body=body, content_type="application/json")

    def _error(
        self,
        request: web.Request,
        arrived: float,
        parsed: ParsedRequest | None,
        status: int,
        body: dict[str, Any],
        tokens: int = 0,
        *,
        headers: Mapping[str, str] | None = None,
        fault: str | None = None,
    ) -> web.Response:
        self._recorder.finish(request, arrived, parsed, status, tokens, fault)
        return web.Response(
            status=status,
            body=_ENCODER.encode(body),
            headers=headers,
            content_type="application/json",
        )

    # -- statistics ----------------------------------------------------------------

    def reset_stats(self) -> None:
        """Zero the counters and forget the recorded requests (not the rate limits)."""
        self._recorder.reset()

    @property
    def stats(self) -> ServerStats:
        """A snapshot of the counters."""
        return self._recorder.snapshot()

    @property
    def requests(self) -> list[RequestRecord]:
        """The requests received so far, oldest first (a copy)."""
        return list(self._recorder.records)

    @property
    def requests_count(self) -> int:
        """Embedding requests received."""
        return self._recorder.requests

    @property
    def inputs_count(self) -> int:
        """Inputs in requests that passed validation."""
        return self._recorder.inputs

    @property
    def max_concurrent(self) -> int:
        """The most requests handled at once."""
        return self._recorder.max_concurrent

    def __repr__(self) -> str:
        where = self.url if self._runner is not None else "not running"
        return (
            f"<LocalServer {where} requests={self._recorder.requests} "
            f"in_flight={self._recorder.in_flight} "
            f"script_remaining={self._plan.remaining}>"
        )


def _seconds(value: float) -> str:
    # "1", "0.25": plain decimals, never an exponent.
    return format(value, ".6f").rstrip("0").rstrip(".") or "0"


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)
