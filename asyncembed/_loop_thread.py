"""The background event loop of a :class:`SyncEmbedder`: the task that closes its
Embedder, the wrapper that counts calls, the pump that drives a stream, and the
thread's main function."""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import AsyncGenerator, Callable, Coroutine, Iterable, Iterator
from contextlib import aclosing
from typing import Any, TypeVar

import anyio

from ._embedder import Embedder

__all__ = ["END", "Host", "Pump", "close_unstarted", "read_in_threads", "run_loop"]

T = TypeVar("T")
END: Any = object()
"""The end of a stream, passed through the pump's rendezvous channel."""


class Host:
    """What runs on the background loop: it closes the Embedder when asked and counts
    the calls in progress.

    The loop is stopped only once the Embedder is closed and every call wrapper has
    returned, so no caller's result is lost to the loop's final cancellation.
    """

    def __init__(self, embedder: Embedder) -> None:
        self.embedder = embedder
        # asyncio's events bind to a loop on first use: safe to create in any thread.
        self.stop_requested = asyncio.Event()
        self.idle = asyncio.Event()
        self.cancel_pending = False
        self.abort = False
        self.calls: dict[asyncio.Task[Any], bool] = {}  # task -> is a stream's pump

    async def serve(self) -> None:
        try:
            await self.stop_requested.wait()
            if self.abort:
                # Interpreter exit: nobody waits for these any more.
                for task in self.calls:
                    task.cancel()
            await self.embedder.aclose(cancel_pending=self.cancel_pending or self.abort)
            # A stream may wait for a consumer that is gone; the other calls return
            # promptly now that the Embedder is closed.
            for task, is_stream in self.calls.items():
                if is_stream:
                    task.cancel()
            while self.calls:
                self.idle.clear()
                await self.idle.wait()
        finally:
            asyncio.get_running_loop().stop()

    def request_stop(self, cancel_pending: bool, abort: bool) -> None:
        """Close the Embedder (``abort``: cancelling every call in progress first)."""
        self.cancel_pending = self.cancel_pending or cancel_pending
        self.abort = self.abort or abort
        self.stop_requested.set()

    async def run(self, make: Callable[[], Coroutine[Any, Any, T]], *, stream: bool) -> T:
        task = asyncio.current_task()
        assert task is not None
        self.calls[task] = stream
        try:
            return await make()
        finally:
            del self.calls[task]
            if not self.calls:
                self.idle.set()


class Pump:
    """One task that drives an Embedder's stream from start to end, whatever thread
    consumes it, handing blocks over a rendezvous channel (so nothing is read ahead
    beyond the stream's own window)."""

    def __init__(self) -> None:
        self.send, self.receive = anyio.create_memory_object_stream[Any]()
        self.task: asyncio.Task[Any] | None = None
        self.stopped = False

    async def run(self, embedder: Embedder, items: Iterable[Any], window: int | None) -> None:
        self.task = asyncio.current_task()
        async with self.send:
            if self.stopped:
                return
            source: Any = items
            if not isinstance(items, str | bytes):  # Embedder.stream rejects those
                source = read_in_threads(items, embedder.batching.max_size)
            async with aclosing(embedder.stream(source, window=window)) as blocks:
                async for block in blocks:
                    await self.send.send(block)

    async def next(self) -> Any:
        try:
            return await self.receive.receive()
        except anyio.EndOfStream:
            return END

    async def stop(self) -> None:
        """Cancel the stream (and so its batches in flight) and wait until it is done."""
        self.stopped = True
        task = self.task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait([task])


async def read_in_threads(items: Iterable[Any], size: int) -> AsyncGenerator[Any]:
    """The items of a plain iterable, read ``size`` at a time in a helper thread.

    The background loop serves every thread's calls: an iterable that blocks (a
    database cursor, a network file) must not stall it. One block is read ahead of
    what the stream has taken, so backpressure holds. Each block gets a daemon thread
    of its own rather than the loop's executor: a read that never returns must not
    hold up close() or interpreter exit, which wait for that executor.
    """
    loop = asyncio.get_running_loop()
    iterator = iter(items)
    while True:
        future: asyncio.Future[list[Any]] = loop.create_future()
        threading.Thread(
            target=_read_block, args=(iterator, size, loop, future), daemon=True
        ).start()
        block = await future
        for item in block:
            yield item
        if len(block) < size:
            return


def _read_block(
    iterator: Iterator[Any], size: int, loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any]
) -> None:
    def settle(result: list[Any] | None, exc: BaseException | None) -> None:
        if future.done():  # the stream was stopped while this thread read
            return
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)

    try:
        result: list[Any] | None = list(itertools.islice(iterator, size))
        exc: BaseException | None = None
    except BaseException as error:
        result, exc = None, error
    try:
        loop.call_soon_threadsafe(settle, result, exc)
    except RuntimeError:  # the loop is closed: nobody waits for this block
        pass


def run_loop(loop: asyncio.AbstractEventLoop) -> None:
    """The background thread: run the loop until the host stops it, then tidy up."""
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        # Running the loop once more also delivers results whose callbacks the
        # loop's stop left in the ready queue.
        leftovers = asyncio.all_tasks(loop)
        for task in leftovers:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*leftovers, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
        asyncio.set_event_loop(None)
        loop.close()


def close_unstarted(embedder: Embedder) -> None:
    """Release what a never-used Embedder holds (a cache opened from a path).

    Its ``aclose()`` sends nothing, but is a coroutine: run it on a loop of its own, in
    a helper thread if this thread already runs one.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(embedder.aclose())
        return
    helper = threading.Thread(target=asyncio.run, args=(embedder.aclose(),))
    helper.start()
    helper.join()
