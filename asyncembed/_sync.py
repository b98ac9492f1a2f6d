"""``SyncEmbedder``: one :class:`Embedder` on a background event-loop thread, for code
that is not async (scripts, WSGI views, thread pools, notebooks without ``await``).

Every call is a coroutine of the one Embedder, scheduled on the background loop with
``asyncio.run_coroutine_threadsafe``; the calling thread blocks on its future. Calls
made at the same time from many threads therefore meet in the Embedder's batcher and
share requests, exactly as concurrent tasks do. Nothing here batches, retries or
decodes: that all stays in the Embedder.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import enum
import itertools
import os
import threading
import warnings
import weakref
from collections.abc import Callable, Coroutine, Generator, Iterable, Sequence
from types import TracebackType
from typing import Any, TypeVar, Unpack, overload

from ._config import Batching
from ._embedder import Embedder
from ._exceptions import EmbedderClosedError
from ._loop_thread import END, Host, Pump, close_unstarted, run_loop
from ._options import EmbedderOptions
from ._stats import Stats
from ._types import Matrix, Vector

__all__ = ["SyncEmbedder"]

T = TypeVar("T")
K = TypeVar("K")

# How long interpreter exit waits for an open SyncEmbedder to cancel its work and
# close its HTTP session; its thread is a daemon, so a stuck loop cannot hang exit.
_EXIT_GRACE = 5.0
_names = itertools.count(1)


class _State(enum.Enum):
    UNSTARTED = 1
    RUNNING = 2
    CLOSED = 3


class SyncEmbedder:
    """A blocking, thread-safe face of :class:`Embedder`, with the same options.

    It runs one Embedder on an event loop in a background daemon thread, started on
    the first call. Calls from any number of threads at the same time share requests::

        with asyncembed.SyncEmbedder("openai/text-embedding-3-small") as embedder:
            vector = embedder.embed("hello")          # float32, shape (d,)
            matrix = embedder.embed_many(["a", "b"])  # float32, shape (2, d)

    Ctrl-C (``KeyboardInterrupt``) while a call waits ends that call at once: its
    coroutine is cancelled on the loop, and other callers' texts in the same request
    are unharmed. A call made from inside a running event loop works too, but blocks
    that loop like any blocking call until it returns (in async code, use
    :class:`Embedder` instead).

    After ``os.fork()`` (gunicorn ``--preload``), the child gets it back unstarted with
    an Embedder of its own, built from the same options; a ``cache`` given as a path is
    reopened there, a :class:`Cache` object is shared with the parent (do not fork with
    one in use: pass a path).

    Args:
        model: The model id, e.g. ``"openai/text-embedding-3-small"``.
        **options: Any keyword option of :class:`Embedder` (``api_key``, ``base_url``,
            ``batching``, ``limits``, ``retry``, ``timeouts``, ``dimensions``,
            ``cache``...), with the same meaning, except ``session``: an
            ``aiohttp.ClientSession`` belongs to one event loop (use ``transport``).

    Raises:
        ValueError: a bad option, as :class:`Embedder` raises it (checked here,
            before any thread starts).
        TypeError: an unknown keyword, or ``session``.
    """

    def __init__(self, model: str, **options: Unpack[EmbedderOptions]) -> None:
        if "session" in options:
            raise TypeError(
                "SyncEmbedder takes no session=: an aiohttp session belongs to one event "
                "loop, and SyncEmbedder runs its own (pass transport= to customise HTTP)"
            )
        self._embedder = Embedder(model, **options)
        # Kept to build a fresh Embedder in a forked child (see _after_fork_in_child).
        self._model, self._options = model, options.copy()
        self._lock = threading.Lock()
        self._state = _State.UNSTARTED
        self._host: Host | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        _ALL.add(self)

    @property
    def model(self) -> str:
        """The model id."""
        return self._embedder.model

    @property
    def base_url(self) -> str:
        """The API root in force."""
        return self._embedder.base_url

    @property
    def dimensions(self) -> int | None:
        """The ``dimensions`` asked for, or ``None``."""
        return self._embedder.dimensions

    @property
    def batching(self) -> Batching:
        """The batching settings in force."""
        return self._embedder.batching

    @property
    def stats(self) -> Stats:
        """A snapshot of the Embedder's counters and live gauges (:class:`Stats`)."""
        return self._embedder.stats

    def __repr__(self) -> str:
        stats = self._embedder.stats
        return (
            f"<SyncEmbedder model={self.model!r} state={self._state.name} "
            f"in_flight={stats.in_flight} queued={stats.queued}>"
        )

    def __enter__(self) -> SyncEmbedder:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self, _warn: Any = warnings.warn) -> None:
        if getattr(self, "_state", None) is _State.RUNNING:
            _warn(f"unclosed {self!r}", ResourceWarning, stacklevel=1, source=self)
            self._stop(cancel_pending=True, abort=False)

    # -- calls -----------------------------------------------------------------

    def embed(self, text: str, *, timeout: float | None = None) -> Vector:
        """Embed one text; calls made at the same time, from any threads, share requests.

        Args:
            text: A non-empty string.
            timeout: Seconds to wait at most (``None``: until the retry policy gives up).

        Returns:
            A float32 vector, shape ``(d,)``.

        Raises:
            KeyboardInterrupt: Ctrl-C while waiting; this call is cancelled, others go on.
            EmbedderClosedError: the SyncEmbedder is closed.
            RuntimeError: called from the SyncEmbedder's own loop thread.
            The errors of :meth:`Embedder.embed` (``TypeError``,
                ``InvalidInputError``, ``APITimeoutError``, ``APIStatusError``...),
                with their types.
        """
        return self._call(lambda: self._embedder.embed(text, timeout=timeout))

    def embed_many(
        self, texts: Sequence[str] | Sequence[Sequence[int]], *, timeout: float | None = None
    ) -> Matrix:
        """Embed a list of texts (or token-id lists) in batches sent concurrently.

        Args:
            texts: The texts, or token-id lists.
            timeout: Seconds to wait at most (``None``: until the retry policy gives up).

        Returns:
            A float32 matrix, shape ``(len(texts), d)``, in input order.

        Raises:
            KeyboardInterrupt: Ctrl-C while waiting; the batches of this call are cancelled.
            EmbedderClosedError: the SyncEmbedder is closed.
            RuntimeError: called from the SyncEmbedder's own loop thread.
            The errors of :meth:`Embedder.embed_many` (``PartialResultError``...).
        """
        return self._call(lambda: self._embedder.embed_many(texts, timeout=timeout))

    @overload
    def stream(
        self, items: Iterable[str], *, window: int | None = None
    ) -> Generator[tuple[int, Matrix]]: ...
    @overload
    def stream(
        self, items: Iterable[tuple[K, str]], *, window: int | None = None
    ) -> Generator[tuple[list[K], Matrix]]: ...
    def stream(self, items: Iterable[Any], *, window: int | None = None) -> Generator[Any]:
        """Embed a corpus of any size with bounded memory, yielding blocks in input order.

        A generator over :meth:`Embedder.stream`: ``(start, matrix)`` blocks for texts,
        ``(ids, matrix)`` for ``(id, text)`` pairs. ``items`` is read in helper threads,
        one batch at a time and ``window`` batches ahead of what you have consumed, so a
        slow iterable (a database cursor, a network file) delays only this stream, not
        other threads' calls. Stopping early (``break``, ``close()``, Ctrl-C) cancels
        the batches in flight before the generator returns; a read in progress then
        finishes in its thread, unused.

        Args:
            items: An iterable of texts or of ``(id, text)`` pairs.
            window: Batches in flight at most (default ``2 * max_concurrency``).

        Raises:
            EmbedderClosedError: the SyncEmbedder is closed (on the first ``next()``).
            The errors of :meth:`Embedder.stream`, with their types, while iterating.
        """
        pump = Pump()
        with pump.receive:
            try:
                done = self._submit(lambda: pump.run(self._embedder, items, window), stream=True)
            except BaseException:
                pump.send.close()
                raise
            try:
                while (block := self._call(pump.next)) is not END:
                    yield block
                self._wait(done)  # the stream's own error, if it ended with one
            finally:
                if not done.done():
                    try:
                        self._call(pump.stop)
                    except EmbedderClosedError:
                        concurrent.futures.wait([done])  # close() cancels the stream
                pump.send.close()  # in case the pump never ran (idempotent)

    # -- lifecycle -------------------------------------------------------------

    def close(self) -> None:
        """Send what is queued, wait for the requests in flight, stop the thread.

        Idempotent and callable from any thread (not from the SyncEmbedder's own loop
        thread); a second caller waits for the first. Later calls raise
        :class:`EmbedderClosedError`.

        Raises:
            RuntimeError: called from the SyncEmbedder's own loop thread.
        """
        self._check_thread()
        if self._stop(cancel_pending=False, abort=False) is _State.UNSTARTED:
            close_unstarted(self._embedder)
        if self._thread is not None:
            self._thread.join()

    def _discard(self) -> None:
        """Stop without a warning or waiting, for owners that are being collected."""
        self._stop(cancel_pending=False, abort=False)

    def _stop(self, *, cancel_pending: bool, abort: bool) -> _State:
        """Mark closed and ask the loop to close the Embedder; the state it was in."""
        with self._lock:
            state, self._state = self._state, _State.CLOSED
        if state is _State.RUNNING and self._host is not None and self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(self._host.request_stop, cancel_pending, abort)
            except RuntimeError:  # the loop has stopped already
                pass
        return state

    def _reset_after_fork(self) -> None:
        _INHERITED.append((self._embedder, self._host, self._loop, self._thread))
        self._lock = threading.Lock()
        self._host = self._loop = self._thread = None
        if self._state is not _State.CLOSED:
            self._state = _State.UNSTARTED
            self._embedder = Embedder(self._model, **self._options)

    def _start(self) -> tuple[Host, asyncio.AbstractEventLoop]:
        # Called with the lock held, so two first calls start one thread. The Embedder
        # starts on its first call, on this loop; the host task is scheduled first.
        host = Host(self._embedder)
        loop = asyncio.new_event_loop()
        thread = threading.Thread(
            target=run_loop, args=(loop,), name=f"asyncembed-sync-{next(_names)}", daemon=True
        )
        self._host, self._loop, self._thread = host, loop, thread
        asyncio.run_coroutine_threadsafe(host.serve(), loop)
        thread.start()
        self._state = _State.RUNNING
        _LIVE.add(self)
        return host, loop

    def _check_thread(self) -> None:
        # Identity, not thread ids: an id is reused once its thread has ended.
        if threading.current_thread() is self._thread:
            raise RuntimeError("a SyncEmbedder cannot be called from its own event loop thread")

    def _submit(
        self, make: Callable[[], Coroutine[Any, Any, T]], *, stream: bool = False
    ) -> concurrent.futures.Future[T]:
        self._check_thread()
        # Under the lock, so that a call is either scheduled before close()'s stop
        # request (and then served) or refused: never left on a stopped loop.
        with self._lock:
            if self._state is _State.CLOSED:
                raise EmbedderClosedError("the SyncEmbedder is closed")
            if self._state is _State.UNSTARTED:
                host, loop = self._start()
            else:
                assert self._host is not None and self._loop is not None
                host, loop = self._host, self._loop
            return asyncio.run_coroutine_threadsafe(host.run(make, stream=stream), loop)

    def _call(self, make: Callable[[], Coroutine[Any, Any, T]]) -> T:
        return self._wait(self._submit(make))

    @staticmethod
    def _wait(future: concurrent.futures.Future[T]) -> T:
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            raise EmbedderClosedError("the SyncEmbedder was closed during this call") from None
        except BaseException:
            # Ctrl-C (or another exception raised in this thread while waiting): the
            # coroutine on the loop is cancelled; a finished future ignores this.
            future.cancel()
            raise


_LIVE: weakref.WeakSet[SyncEmbedder] = weakref.WeakSet()  # started, for atexit
_ALL: weakref.WeakSet[SyncEmbedder] = weakref.WeakSet()  # every one, for fork
# What a forked child inherited from its parent's SyncEmbedders: kept referenced, never
# closed or collected there (closing would act on the parent's session and SQLite file).
_INHERITED: list[object] = []


def _after_fork_in_child() -> None:
    # The child has only the forking thread: each started SyncEmbedder's loop thread is
    # gone and its locks may be held by threads that no longer exist. Each one goes
    # back to unstarted with a fresh Embedder (a cache given as a path is reopened).
    _LIVE.clear()
    for embedder in list(_ALL):
        try:
            embedder._reset_after_fork()
        except Exception:
            # Its options no longer build an Embedder here (say, its cache file went):
            # closed, its calls raise EmbedderClosedError instead of waiting forever.
            embedder._state = _State.CLOSED


os.register_at_fork(after_in_child=_after_fork_in_child)


@atexit.register
def _close_at_exit() -> None:
    # Daemon threads die mid-request at exit; closing first shuts the HTTP session
    # cleanly (no "unclosed" warnings), after failing what is still queued.
    threads = []
    for embedder in list(_LIVE):
        embedder._stop(cancel_pending=True, abort=True)
        threads.append(embedder._thread)
    for thread in threads:
        if thread is not None:
            thread.join(_EXIT_GRACE)
