"""The Batcher: single-text calls coalesced into batches.

A batch is flushed when it holds ``max_size`` texts, when the next text would pass
``max_tokens``, or ``max_wait`` after its first text, whichever comes first. A text
already queued or in flight is not sent again: the new caller joins its entry, and
the entry's batch takes on the caller's deadline (none, if the caller has none).

Callers wait on plain asyncio futures, not anyio primitives: one future per call is
the cheapest awaitable there is (about a microsecond), and this is the per-text hot
path. Cancelling a caller cancels its future; the batch skips texts nobody waits
for any more when it is sent, and a request every caller has left is cancelled.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator

import anyio

from ._clock import Clock
from ._config import Batching
from ._exceptions import EmbedderClosedError
from ._inputs import TokenEstimator
from ._outcome import Outcome
from ._sender import Deadline
from ._stats import Counters
from ._types import Matrix, Vector

__all__ = ["Batcher"]

Deliver = Callable[[list[str], Deadline], Awaitable[Outcome]]
Spawn = Callable[[Callable[[], Awaitable[None]]], None]


class _Batch:
    """Texts queued (then in flight) together, with the futures of their callers.

    No object per text (this is the per-text hot path, and every object that lives as
    long as a batch makes the garbage collector's passes longer): ``futures[i]`` is the
    first caller of ``texts[i]``; later callers of the same text, rare, are in ``joined``.
    """

    __slots__ = (
        "deadline",
        "dropped",
        "futures",
        "joined",
        "request",
        "texts",
        "timer",
        "tokens",
        "unbounded",
    )

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.futures: list[asyncio.Future[Vector]] = []
        self.joined: dict[str, list[asyncio.Future[Vector]]] = {}
        self.tokens = 0
        self.dropped = 0  # callers that left while queued (the batch skips their texts)
        self.deadline: float | None = None
        self.unbounded = False  # some caller has no deadline
        # Cancel scopes of the max_wait timer (cancelled once the batch is sent) and of
        # the request (cancelled when every caller has left); made inside the event loop.
        self.timer: anyio.CancelScope | None = None
        self.request: anyio.CancelScope | None = None

    def admit(self, deadline: float | None) -> None:
        """Widen the batch's deadline to cover one more caller."""
        if deadline is None:
            self.unbounded = True
        elif self.deadline is None or deadline > self.deadline:
            self.deadline = deadline

    def latest(self) -> float | None:
        """The latest deadline of any caller, read at each retry (``None``: no limit)."""
        return None if self.unbounded else self.deadline

    def live(self, i: int) -> bool:
        """Whether any caller of ``texts[i]`` still waits."""
        if not self.futures[i].done():
            return True
        others = self.joined.get(self.texts[i]) if self.joined else None
        return others is not None and any(not f.done() for f in others)

    def any_live(self) -> bool:
        """Whether any caller of any text still waits."""
        return any(not f.done() for f in self.futures) or any(
            not f.done() for futures in self.joined.values() for f in futures
        )

    def all_futures(self) -> Iterator[asyncio.Future[Vector]]:
        """Every caller's future."""
        yield from self.futures
        for futures in self.joined.values():
            yield from futures


class Batcher:
    """Coalesces ``submit(text)`` calls into batches handed to ``deliver``.

    Args:
        batching: Size, token and time limits of a batch.
        estimator: Token estimate per text.
        clock: Time for the batch window.
        spawn: Starts a background task that closing the Embedder waits for.
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
        self._eager = batching.flush_when_idle
        self._sent = 0  # batches handed to deliver and not finished
        self._estimator = estimator
        self._clock = clock
        self._spawn = spawn
        self._deliver = deliver
        self._counters = counters
        self._batch = _Batch()
        # text -> its batch, while queued or in flight.
        self._waiting: dict[str, _Batch] = {}

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
        # The per-text hot path: local names, no helper calls, no object but the future.
        future: asyncio.Future[Vector] = asyncio.get_running_loop().create_future()
        batch = self._waiting.get(text)
        if batch is not None:
            batch.joined.setdefault(text, []).append(future)
            batch.admit(deadline)
            self._counters.deduplicated += 1
            return future
        tokens = int(len(text) / self._estimator.chars_per_token) + 1  # = estimate(text)
        batch = self._batch
        if batch.texts and batch.tokens + tokens > self._max_tokens:
            self.flush()
            batch = self._batch
        self._waiting[text] = batch
        texts = batch.texts
        texts.append(text)
        batch.futures.append(future)
        batch.tokens += tokens
        if deadline is None:
            batch.unbounded = True
        else:
            batch.admit(deadline)
        size = len(texts)
        if size >= self._max_size:
            self.flush()
        elif size == 1:
            batch.timer = anyio.CancelScope()
            if self._eager and not self._sent:
                self._spawn(lambda: self._flush_soon(batch))
            else:
                self._spawn(lambda: self._flush_later(batch))
        return future

    def flush(self) -> None:
        """Send the batch being filled now (no-op when empty)."""
        batch = self._batch
        if batch.texts:
            self._batch = _Batch()
            if batch.timer is not None:
                batch.timer.cancel()
            self._sent += 1
            self._spawn(lambda: self._send(batch))

    def abandoned(self, text: str) -> None:
        """A caller of ``text`` was cancelled: stop its request if nobody else waits."""
        batch = self._waiting.get(text)
        if batch is None:
            return
        if batch.request is None:
            batch.dropped += 1  # still queued: skipped when the batch is sent
            return
        if not batch.any_live():
            # Forget the texts now, so a caller arriving before the request has wound
            # down starts afresh instead of joining a request that will never answer.
            self._release(batch)
            batch.request.cancel()

    def fail_queued(self, exc: BaseException) -> None:
        """Fail every caller of the batch being filled (closing without sending)."""
        batch, self._batch = self._batch, _Batch()
        if batch.timer is not None:
            batch.timer.cancel()
        self._release(batch)
        for future in batch.all_futures():
            if not future.done():
                future.set_exception(exc)

    def _release(self, batch: _Batch) -> None:
        """Remove the batch's texts from the waiting map (only those still its own)."""
        waiting = self._waiting
        for text in batch.texts:
            if waiting.get(text) is batch:
                del waiting[text]

    async def _flush_soon(self, batch: _Batch) -> None:
        # Idle: send once the callers already scheduled in this tick have joined (this
        # task runs after them), so a burst started together still shares requests.
        assert batch.timer is not None
        with batch.timer:
            await anyio.lowlevel.checkpoint()
            if self._batch is batch:
                self.flush()

    async def _flush_later(self, batch: _Batch) -> None:
        assert batch.timer is not None
        with batch.timer:
            await self._clock.sleep(self._max_wait)
            if self._batch is batch:
                self.flush()

    async def _send(self, batch: _Batch) -> None:
        try:
            await self._send_batch(batch)
        finally:
            self._sent -= 1

    async def _send_batch(self, batch: _Batch) -> None:
        if batch.dropped:
            self._drop_abandoned(batch)
            if not batch.texts:
                return
        texts, futures = batch.texts, batch.futures
        scope = batch.request = anyio.CancelScope()
        try:
            with scope:
                outcome = await self._deliver(texts, batch.latest)
        except BaseException as exc:
            failure: BaseException = exc
            if not isinstance(exc, Exception):  # cancelled: the Embedder is shutting down
                failure = EmbedderClosedError("the Embedder closed before this text was embedded")
            self._release(batch)
            for future in batch.all_futures():
                if not future.done():
                    future.set_exception(failure)
            if failure is not exc:
                raise  # let cancellation through; errors went to the callers
            return
        self._release(batch)
        if scope.cancelled_caught:
            return  # every caller had left (see abandoned)
        vectors, errors, rows = outcome.vectors, outcome.errors, outcome.rows
        if rows is not None:
            # Each row is its own buffer already: the first caller takes it as it is.
            for future, vector in zip(futures, rows, strict=True):
                if not future.done():
                    future.set_result(vector)
            vectors = None
        elif vectors is not None and not errors:
            # A copy per caller, so a kept vector does not pin the batch and one
            # caller changing its array in place cannot change another's.
            for i, future in enumerate(futures):
                if not future.done():
                    future.set_result(vectors[i].copy())
        else:
            for i, future in enumerate(futures):
                _settle(future, i, vectors, errors)
        if batch.joined:
            position = {text: i for i, text in enumerate(texts)}
            for text, others in batch.joined.items():
                i = position[text]
                for future in others:
                    if rows is not None:
                        if not future.done():
                            future.set_result(rows[i].copy())  # never the first's own
                    else:
                        _settle(future, i, vectors, errors)

    def _drop_abandoned(self, batch: _Batch) -> None:
        """Leave out of the request the texts whose callers all left while queued."""
        keep = [i for i in range(len(batch.texts)) if batch.live(i)]
        waiting = self._waiting
        for i in set(range(len(batch.texts))) - set(keep):
            text = batch.texts[i]
            if waiting.get(text) is batch:
                del waiting[text]
            batch.joined.pop(text, None)
        batch.texts = [batch.texts[i] for i in keep]
        batch.futures = [batch.futures[i] for i in keep]


def _settle(
    future: asyncio.Future[Vector], i: int, vectors: Matrix | None, errors: dict[int, BaseException]
) -> None:
    """Give one caller the vector of input ``i`` (a copy) or its error."""
    if future.done():
        return
    error = errors.get(i) if errors else None
    if error is None and vectors is not None:
        future.set_result(vectors[i].copy())
    else:
        future.set_exception(error or RuntimeError("no vector returned"))
