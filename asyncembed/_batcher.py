"""The Batcher: single-text calls coalesced into batches.

A batch is flushed when it holds ``max_size`` texts, when the next text would pass
``max_tokens``, or ``max_wait`` after its first text, whichever comes first. A text
already queued or in flight is not sent again: the new caller joins its waiters.

Callers wait on plain asyncio futures, not anyio primitives: one future per call is
the cheapest awaitable there is (about a microsecond), and this is the per-text hot
path. Cancelling a caller cancels its future; the batch skips texts nobody waits
for any more when it is sent, and drops results nobody waits for when they arrive.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import anyio

from ._clock import Clock
from ._config import Batching
from ._exceptions import EmbedderClosedError
from ._inputs import TokenEstimator
from ._sender import Outcome
from ._stats import Counters
from ._types import Vector

__all__ = ["Batcher"]

Deliver = Callable[[list[str], float | None], Awaitable[Outcome]]
Spawn = Callable[[Callable[[], Awaitable[None]]], None]


class _Batch:
    __slots__ = ("deadline", "request", "texts", "timer", "tokens", "unbounded")

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.tokens = 0
        self.deadline: float | None = None
        self.unbounded = False  # some caller has no deadline
        # Cancel scopes of the max_wait timer (cancelled once the batch is sent) and of
        # the request (cancelled when every caller has left); made inside the event loop.
        self.timer: anyio.CancelScope | None = None
        self.request: anyio.CancelScope | None = None


class Batcher:
    """Coalesces ``submit(text)`` calls into batches handed to ``deliver``.

    Args:
        batching: Size, token and time limits of a batch.
        estimator: Token estimate per text.
        clock: Time for the batch window.
        spawn: Starts a background task (the Embedder's task group).
        deliver: Sends one batch and returns its :class:`Outcome`.
        counters: Where deduplicated calls are counted.
    """

    def __init__(
        self,
        batching: Batching,
        estimator: TokenEstimator,
        clock: Clock,
        spawn: Spawn,
        deliver: Deliver,
        counters: Counters,
    ) -> None:
        self._max_size = batching.max_size
        self._max_tokens = batching.max_tokens
        self._max_wait = batching.max_wait
        self._estimator = estimator
        self._clock = clock
        self._spawn = spawn
        self._deliver = deliver
        self._counters = counters
        self._batch = _Batch()
        # text -> futures of every caller waiting for it, queued or in flight.
        self._waiting: dict[str, list[asyncio.Future[Vector]]] = {}
        # text -> the batch carrying it, while in flight.
        self._sending: dict[str, _Batch] = {}

    @property
    def queued(self) -> int:
        """Texts in the batch being filled."""
        return len(self._batch.texts)

    @property
    def waiting(self) -> int:
        """Distinct texts queued or in flight."""
        return len(self._waiting)

    def submit(self, text: str, deadline: float | None) -> asyncio.Future[Vector]:
        """Queue one (validated) text; the future gets its vector or its error."""
        # The per-text hot path: local names, no helper calls.
        future: asyncio.Future[Vector] = asyncio.get_running_loop().create_future()
        waiting = self._waiting
        waiters = waiting.get(text)
        if waiters is not None:
            waiters.append(future)
            self._counters.deduplicated += 1
            return future
        waiting[text] = [future]
        tokens = int(len(text) / self._estimator.chars_per_token) + 1  # = estimate(text)
        batch = self._batch
        texts = batch.texts
        if texts and batch.tokens + tokens > self._max_tokens:
            self.flush()
            batch = self._batch
            texts = batch.texts
        texts.append(text)
        batch.tokens += tokens
        if deadline is None:
            batch.unbounded = True
        elif batch.deadline is None or deadline > batch.deadline:
            batch.deadline = deadline
        size = len(texts)
        if size >= self._max_size:
            self.flush()
        elif size == 1:
            batch.timer = anyio.CancelScope()
            self._spawn(lambda: self._flush_later(batch))
        return future

    def flush(self) -> None:
        """Send the batch being filled now (no-op when empty)."""
        batch = self._batch
        if batch.texts:
            self._batch = _Batch()
            if batch.timer is not None:
                batch.timer.cancel()
            self._spawn(lambda: self._send(batch))

    def abandoned(self, text: str) -> None:
        """A caller of ``text`` was cancelled: stop its request if nobody else waits."""
        batch = self._sending.get(text)
        if batch is None:
            return  # still queued: skipped when the batch is sent
        waiting = self._waiting
        if batch.request and all(f.done() for t in batch.texts for f in waiting.get(t, ())):
            batch.request.cancel()

    def fail_queued(self, exc: BaseException) -> None:
        """Fail every caller of the batch being filled (closing without sending)."""
        batch, self._batch = self._batch, _Batch()
        if batch.timer is not None:
            batch.timer.cancel()
        for text in batch.texts:
            for future in self._waiting.pop(text, ()):
                if not future.done():
                    future.set_exception(exc)

    async def _flush_later(self, batch: _Batch) -> None:
        assert batch.timer is not None
        with batch.timer:
            await self._clock.sleep(self._max_wait)
            if self._batch is batch:
                self.flush()

    async def _send(self, batch: _Batch) -> None:
        waiting = self._waiting
        texts = []
        for text in batch.texts:
            callers = waiting[text]
            if not callers[0].done() or any(not f.done() for f in callers):
                texts.append(text)
            else:
                del waiting[text]  # every caller left before the batch was sent
        if not texts:
            return
        batch.texts = texts
        sending = self._sending
        for text in texts:
            sending[text] = batch
        deadline = None if batch.unbounded else batch.deadline
        scope = batch.request = anyio.CancelScope()
        try:
            with scope:
                outcome = await self._deliver(texts, deadline)
            if scope.cancelled_caught:
                for text in texts:
                    waiting.pop(text, None)
                return
        except BaseException as exc:
            failure: BaseException = exc
            if not isinstance(exc, Exception):  # cancelled: the Embedder is shutting down
                failure = EmbedderClosedError("the Embedder closed before this text was embedded")
            for text in texts:
                for future in waiting.pop(text, ()):
                    if not future.done():
                        future.set_exception(failure)
            if failure is not exc:
                raise  # let cancellation through; errors went to the callers
            return
        finally:
            for text in texts:
                sending.pop(text, None)
        vectors, errors = outcome.vectors, outcome.errors
        for i, text in enumerate(texts):
            futures = waiting.pop(text, ())
            error = errors.get(i)
            if error is None and vectors is not None:
                # A copy per text, so a vector kept by a caller does not pin the batch.
                vector = vectors[i].copy()
                for future in futures:
                    if not future.done():
                        future.set_result(vector)
            else:
                for future in futures:
                    if not future.done():
                        future.set_exception(error or RuntimeError("no vector returned"))
