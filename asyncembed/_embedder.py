"""The public face: :class:`Embedder` wires batcher, scheduler, sender and transport.

Over 400 lines for a reason: it is the API reference of the main class (about half of
the lines are its docstrings); the machinery lives in the modules it wires together.
"""

from __future__ import annotations

import asyncio
import os
import warnings
from collections.abc import AsyncGenerator, AsyncIterable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar, overload
from urllib.parse import urlsplit

import aiohttp
import anyio
import msgspec

from ._batch_runner import BatchRunner
from ._batcher import Batcher
from ._cache import Cache
from ._clock import Clock, SystemClock
from ._codec import Embeddings
from ._config import Batching, Limits, Retry, Timeouts
from ._exceptions import APITimeoutError, EmbedderClosedError
from ._inputs import TokenEstimator, check_many, check_tokens
from ._lifecycle import Lifecycle, State
from ._limiter import Limiter
from ._models import ProviderPreferences
from ._outcome import Outcome
from ._scheduler import BULK, LIVE, Scheduler
from ._sender import Deadline, RequestOptions, Sender
from ._stats import Counters, Stats
from ._stream import stream_blocks
from ._transport import HTTPTransport, Transport, resolve_api_key, resolve_base_url
from ._types import EncodingFormat, Input, Matrix, Vector

__all__ = ["Embedder"]

K = TypeVar("K")


class Embedder(anyio.AsyncContextManagerMixin):
    """An embeddings client that coalesces many small calls into few batched requests.

    Create it anywhere; it starts on first use, in the event loop of that use, and
    can then be used and closed from any task of that loop (like
    ``aiohttp.ClientSession``)::

        embedder = asyncembed.Embedder("openai/text-embedding-3-small")
        vector = await embedder.embed("hello")          # float32, shape (d,)
        matrix = await embedder.embed_many(["a", "b"])  # float32, shape (2, d)
        await embedder.aclose()                         # e.g. in a shutdown hook

    ``async with Embedder(...) as embedder:`` does the same and closes on exit; leaving
    it on an exception cancels the requests in flight instead of waiting for them. An
    Embedder garbage-collected after use without being closed emits a
    ``ResourceWarning``.

    Args:
        model: The model id, e.g. ``"openai/text-embedding-3-small"``.
        api_key: Bearer key. ``None``: ``$OPENROUTER_API_KEY`` when ``base_url`` is
            OpenRouter's (https on ``openrouter.ai``), and no ``Authorization`` header for
            any other endpoint: the environment's key goes only to OpenRouter. Never shown
            anywhere; the server's error texts are redacted of it.
        base_url: API root; default ``$OPENROUTER_BASE_URL`` or OpenRouter's.
        batching: How calls are coalesced (:class:`Batching`).
        limits: Concurrency, RPM/TPM budgets and spending cap (:class:`Limits`).
        retry: Retry policy (:class:`Retry`).
        timeouts: HTTP timeouts (:class:`Timeouts`).
        provider: OpenRouter routing preferences, sent with every request.
        dimensions: Ask for vectors of this length (models that support it); every
            response is checked against it. On OpenRouter this also sets
            ``provider.require_parameters=True`` unless you set it, so that a provider
            that would silently ignore ``dimensions`` is not chosen.
        encoding_format: ``"base64"`` (default, fast) or ``"float"``. A model that does
            not honour base64 is switched to float transparently.
        input_type: OpenRouter's ``input_type`` (e.g. ``"search_query"``).
        user: End-user id sent with requests.
        app_url: Sent as ``HTTP-Referer`` (OpenRouter app attribution).
        app_title: Sent as ``X-OpenRouter-Title``.
        session: An aiohttp session to use; it stays open after the Embedder closes.
        transport: Any :class:`Transport`; overrides ``base_url``, ``api_key``,
            ``session`` and ``timeouts``.
        allow_insecure: Allow sending the key over plain ``http://`` to another host.
        cache: A :class:`Cache` or a path to one (SQLite): texts embedded before with
            the same model and dimensions are answered from it, never paid twice.
            A path opened here is closed with the Embedder.
        clock: Time source (tests pass :class:`asyncembed.testing.FakeClock`).
        limiter: Where the RPM/TPM windows, the 429 pause and the spend live, to share
            them with other Embedders, e.g. :class:`RedisLimiter` for every worker on
            one key. Default: in this Embedder only.

    Attributes:
        model, dimensions, base_url, batching, limits, retry, cache: The settings in
            force (read-only by convention).

    Raises:
        ValueError: an empty model, a bad ``encoding_format`` or ``dimensions``, or a
            key that would be sent over plain HTTP to another machine.

    Every call raises :class:`EmbedderClosedError` once it is closed, and
    ``RuntimeError`` from an event loop other than the one it started in.
    """

    def __init__(
        self,
        model: str,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        batching: Batching | None = None,
        limits: Limits | None = None,
        retry: Retry | None = None,
        timeouts: Timeouts | None = None,
        provider: ProviderPreferences | None = None,
        dimensions: int | None = None,
        encoding_format: EncodingFormat = "base64",
        input_type: str | None = None,
        user: str | None = None,
        app_url: str | None = None,
        app_title: str | None = None,
        session: aiohttp.ClientSession | None = None,
        transport: Transport | None = None,
        allow_insecure: bool = False,
        cache: Cache | str | os.PathLike[str] | None = None,
        clock: Clock | None = None,
        limiter: Limiter | None = None,
    ) -> None:
        if not isinstance(model, str) or not model:
            raise ValueError("model must be a non-empty string")
        if encoding_format not in ("base64", "float"):
            raise ValueError(
                f"encoding_format must be 'base64' or 'float', got {encoding_format!r}"
            )
        if dimensions is not None and (type(dimensions) is not int or dimensions < 1):
            raise ValueError(f"dimensions must be a positive int, got {dimensions!r}")
        self.base_url = resolve_base_url(base_url)
        if (
            dimensions is not None
            and urlsplit(self.base_url).hostname == "openrouter.ai"
            and (provider is None or provider.require_parameters is None)
        ):
            provider = msgspec.structs.replace(
                provider or ProviderPreferences(), require_parameters=True
            )
        self.model = model
        self.dimensions = dimensions
        self.batching = batching or Batching()
        self.limits = limits or Limits()
        self.retry = retry or Retry()
        headers = {}
        if app_url:
            headers["HTTP-Referer"] = app_url
        if app_title:
            headers["X-OpenRouter-Title"] = app_title
        self._owns_transport = transport is None
        secret = resolve_api_key(api_key, self.base_url)
        self._transport: Transport = transport or HTTPTransport(
            base_url=self.base_url,
            api_key=secret,
            session=session,
            timeouts=timeouts or Timeouts(),
            headers=headers,
            allow_insecure=allow_insecure,
        )
        self._owns_cache = cache is not None and not isinstance(cache, Cache)
        self.cache: Cache | None = (
            cache if isinstance(cache, Cache) or cache is None else Cache(cache)
        )
        self._clock = clock or SystemClock()
        self._counters = Counters()
        self._estimator = TokenEstimator(self.batching)
        self._scheduler = Scheduler(self.limits, self._clock, limiter)
        self._sender = Sender(
            transport=self._transport,
            scheduler=self._scheduler,
            estimator=self._estimator,
            counters=self._counters,
            clock=self._clock,
            options=RequestOptions(
                model=model,
                dimensions=dimensions,
                input_type=input_type,
                user=user,
                provider=provider,
            ),
            retry=self.retry,
            encoding_format=encoding_format,
            secret=secret,
        )
        self._batches = BatchRunner(
            self._sender,
            batching=self.batching,
            estimator=self._estimator,
            counters=self._counters,
            cache=self.cache,
        )
        self._life = Lifecycle()
        self._batcher = Batcher(
            self.batching,
            self._estimator,
            self._clock,
            self._life.spawn,
            self._deliver,
            self._counters,
        )

    def __repr__(self) -> str:
        return (
            f"<Embedder model={self.model!r} state={self._life.state.name} "
            f"in_flight={self._scheduler.in_flight} queued={self._batcher.queued}>"
        )

    def __del__(self, _warn: Any = warnings.warn) -> None:
        life = getattr(self, "_life", None)
        if life is not None and life.state is State.OPENED:
            _warn(f"unclosed {self!r}", ResourceWarning, stacklevel=1, source=self)

    @asynccontextmanager
    async def __asynccontextmanager__(self) -> AsyncGenerator[Embedder]:
        if self._life.state is not State.UNOPENED:
            raise EmbedderClosedError(
                "an Embedder can be entered only once, before it is used; create a new one"
            )
        self._life.open()
        try:
            yield self
        except BaseException:
            # Leaving on an error or a cancellation: nothing more is sent, and the
            # requests in flight are cancelled (their callers get EmbedderClosedError)
            # instead of being waited for.
            with anyio.CancelScope(shield=True):
                await self._close(abort=True)
            raise
        with anyio.CancelScope(shield=True):
            await self.aclose()

    @property
    def stats(self) -> Stats:
        """A snapshot of counters and live gauges (:class:`Stats`)."""
        return self._counters.snapshot(
            queued=self._batcher.queued,
            waiting=self._scheduler.waiting,
            in_flight=self._scheduler.in_flight,
            concurrency=self._scheduler.concurrency,
            max_concurrency=self._scheduler.max_concurrency,
            encoding_format=self._sender.encoding_format,
            batch_cap=self._batches.learned_cap,
            pending=self._batcher.waiting,
            active=self._life.work,
            paused_for=max(0.0, self._scheduler.paused_until - self._clock.now()),
            chars_per_token=self._estimator.chars_per_token,
        )

    async def embed(self, text: str, *, timeout: float | None = None) -> Vector:
        """Embed one text; concurrent calls share requests.

        Args:
            text: A non-empty string.
            timeout: Seconds to wait at most (``None``: until the retry policy gives up).

        Returns:
            A float32 vector, shape ``(d,)``.

        Raises:
            TypeError: ``text`` is not a str.
            InvalidInputError: ``text`` is empty or only whitespace, or too long
                (:class:`InputTooLongError`).
            ValueError: ``timeout`` is not a positive number.
            BadRequestError: the server rejected this text (other texts are unaffected).
            APITimeoutError: ``timeout`` passed.
            EmbedderClosedError: the Embedder is not open.
            APIStatusError, APIConnectionError, ProtocolError: the request failed.
        """
        self._life.check_open()
        text = self._estimator.check_text(text)
        _check_timeout(timeout)
        if timeout is None:
            # The hot path: no cancel scope (entering one costs more than the future).
            future = self._batcher.submit(text, None)
            try:
                return await future
            except asyncio.CancelledError:
                self._batcher.abandoned(text)
                raise
        future = self._batcher.submit(text, self._clock.now() + timeout)
        with anyio.move_on_after(timeout):
            try:
                return await future
            except asyncio.CancelledError:
                self._batcher.abandoned(text)
                raise
        raise APITimeoutError(f"embed() did not finish within {timeout} s")

    async def embed_many(
        self, texts: Sequence[str] | Sequence[Sequence[int]], *, timeout: float | None = None
    ) -> Matrix:
        """Embed a list of texts (or token-id lists) in batches sent concurrently.

        Bulk work: it queues behind live :meth:`embed` calls. Repeated inputs are
        sent once.

        Returns:
            A float32 matrix, shape ``(len(texts), d)``, in input order.

        Raises:
            TypeError: not a list of str (or of int lists), or mixed.
            InvalidInputError: an empty list, or an item that is empty, only whitespace or
                too long (token lists too: over ``Batching.max_input_tokens``).
            PartialResultError: some items failed (the server rejected them, or their
                batch ran out of retries) and others got vectors, which it carries.
            BadRequestError: the server rejected an item and no item got a vector (its
                index is in the notes); likewise any other error of every batch.
            APITimeoutError: ``timeout`` passed.
            ValueError: ``timeout`` is not a positive number.
            EmbedderClosedError, APIStatusError, APIConnectionError, ProtocolError.
        """
        self._life.check_open()
        items = check_many(texts, self._estimator)
        _check_timeout(timeout)
        at = None if timeout is None else self._clock.now() + timeout
        with self._life.active(), anyio.move_on_after(timeout):
            return await self._batches.embed_all(items, priority=BULK, deadline=lambda: at)
        raise APITimeoutError(f"embed_many() did not finish within {timeout} s")

    @overload
    def stream(
        self, items: Iterable[str] | AsyncIterable[str], *, window: int | None = None
    ) -> AsyncGenerator[tuple[int, Matrix]]: ...
    @overload
    def stream(
        self,
        items: Iterable[tuple[K, str]] | AsyncIterable[tuple[K, str]],
        *,
        window: int | None = None,
    ) -> AsyncGenerator[tuple[list[K], Matrix]]: ...
    def stream(self, items: Any, *, window: int | None = None) -> AsyncGenerator[Any]:
        """Embed a corpus of any size with bounded memory, yielding blocks in input order.

        Texts are read only ``window`` batches ahead of what the caller has consumed
        (backpressure). For plain texts it yields ``(start, matrix)``; for
        ``(id, text)`` pairs it yields ``(ids, matrix)``. Close it with
        ``contextlib.aclosing`` if you stop early, so in-flight batches are cancelled.

        Args:
            items: An iterable or async iterable of texts or ``(id, text)`` pairs.
            window: Batches in flight at most (default ``2 * max_concurrency``).

        Raises:
            TypeError, InvalidInputError: a bad item (its position is in the message and,
                for InvalidInputError, in ``index``).
            The errors of :meth:`embed_many`.
        """
        self._life.check_open()
        return stream_blocks(
            items,
            embed_chunk=self._embed_block,
            check=self._estimator.check_text,
            size=self.batching.max_size,
            window=window or 2 * self.limits.max_concurrency,
        )

    async def create(
        self,
        input: Input,
        *,
        encoding_format: EncodingFormat | None = None,
    ) -> Embeddings:
        """Send exactly one request (no coalescing), retried per the policy.

        Args:
            input: A string, a list of strings, a token-id list, or a list of those.
            encoding_format: Force an encoding; ``None``: the Embedder's (with fallback).

        Returns:
            The decoded response: vectors in input order, model, usage, id.

        Raises:
            TypeError, InvalidInputError: malformed input, or an input over
                ``Batching.max_input_tokens`` (:class:`InputTooLongError`).
            APIStatusError, APIConnectionError, ProtocolError: the request failed.
        """
        self._life.check_open()
        if isinstance(input, str):
            input = self._estimator.check_text(input)
        elif isinstance(input, list) and input and isinstance(input[0], int):
            input = check_tokens(input, max_tokens=self._estimator.max_input_tokens)
        else:
            input = check_many(input, self._estimator)
        with self._life.active():
            return await self._sender.request(input, priority=LIVE, encoding_format=encoding_format)

    def flush(self) -> None:
        """Send the texts queued for the next batch now, without waiting for ``max_wait``.

        Does not wait for their vectors (their ``embed()`` calls do). A no-op when
        nothing is queued or the Embedder is not open.
        """
        if self._life.state is State.OPENED:
            self._batcher.flush()

    async def aclose(self, *, cancel_pending: bool = False) -> None:
        """Send what is queued (or fail it), wait for requests in flight, close the session.

        Callable from any task of the Embedder's event loop; idempotent; concurrent
        calls all return once it is closed. Called when leaving ``async with``. An
        Embedder never used just releases what it holds (a cache opened from a path).

        Args:
            cancel_pending: Fail queued texts with :class:`EmbedderClosedError` instead
                of sending them.
        """
        await self._close(cancel_pending=cancel_pending)

    async def _close(self, *, cancel_pending: bool = False, abort: bool = False) -> None:
        """aclose(), or with ``abort`` (leaving ``async with`` on an error) also cancel
        the requests and calls in flight instead of waiting for them."""
        life = self._life
        opened = life.state is State.OPENED

        async def shut_down() -> None:
            if opened:
                if cancel_pending or abort:
                    self._batcher.fail_queued(EmbedderClosedError("the Embedder was closed"))
                else:
                    self._batcher.flush()
                # Aborting, the batch tasks and the calls in progress are cancelled:
                # their callers get EmbedderClosedError.
                await life.drain(cancel=abort)
            await self._release()

        await life.close(shut_down)

    async def _release(self) -> None:
        """Close what this Embedder created (idempotent)."""
        if self._owns_transport:
            self._owns_transport = False
            await self._transport.aclose()
        if self._owns_cache and self.cache is not None:
            self._owns_cache = False
            self.cache.close()

    # -- internals -------------------------------------------------------------

    async def _deliver(self, texts: list[str], deadline: Deadline) -> Outcome:
        return await self._batches.run(texts, priority=LIVE, deadline=deadline, rows=True)

    async def _embed_block(self, texts: list[str], start: int) -> Matrix:
        # A stream's batches: refused once the Embedder is closed, waited for by aclose().
        with self._life.active():
            return await self._batches.embed_all(texts, priority=BULK, offset=start)


def _check_timeout(timeout: float | None) -> None:
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0
    ):
        raise ValueError(f"timeout must be a positive number of seconds or None, got {timeout!r}")
