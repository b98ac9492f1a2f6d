"""An Embedder's life: UNOPENED → OPENED (on first use) → CLOSED, and the work in progress.

The Embedder binds to the event loop of its first use, not to a task: web frameworks
open clients in a startup hook and close them in a shutdown hook, and notebooks run
each cell in a task of its own. So background work (batch timers and sends) runs as
plain asyncio tasks kept in a set, not in a task group: a task group's cancel scope
belongs to the task that entered it, and leaving it from another task is an error.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any

import anyio

from ._exceptions import EmbedderClosedError

__all__ = ["Lifecycle", "State"]


class State(enum.Enum):
    """Where an Embedder is in its life."""

    UNOPENED = 1
    OPENED = 2
    CLOSED = 3


class Lifecycle:
    """The state, the event loop of first use, and the work ``close`` must wait for.

    "Work" is every background task started with :meth:`spawn` and every public call
    inside :meth:`active`; :meth:`drain` returns once none is left.
    """

    __slots__ = ("_background", "_calls", "_closing", "_idle", "_loop", "state", "work")

    def __init__(self) -> None:
        self.state = State.UNOPENED
        self._loop: asyncio.AbstractEventLoop | None = None
        # The loop holds only weak references to tasks: this set keeps them alive.
        self._background: set[asyncio.Task[None]] = set()
        self.work = 0  # background tasks and public calls in progress
        self._idle: asyncio.Future[None] | None = None
        self._calls: set[anyio.CancelScope] = set()  # the public calls in progress
        self._closing: asyncio.Task[None] | None = None

    def open(self) -> None:
        """Start now, bound to the running event loop."""
        self._loop = asyncio.get_running_loop()
        self.state = State.OPENED

    def check_open(self) -> None:
        """Start on first use; refuse once closed, or from another event loop.

        Raises:
            EmbedderClosedError: closed.
            RuntimeError: called from another event loop than the one of first use.
        """
        state = self.state
        if state is State.OPENED:
            if asyncio.get_running_loop() is not self._loop:
                raise RuntimeError(
                    "this Embedder belongs to the event loop it was first used in; "
                    "create one per event loop (or use asyncembed.SyncEmbedder from threads)"
                )
        elif state is State.UNOPENED:
            self.open()
        else:
            raise EmbedderClosedError("the Embedder is closed")

    @contextmanager
    def active(self) -> Iterator[None]:
        """Run a public call (``embed_many``, a stream block, ``create``) as work.

        Closing waits for it, and an abort cancels it: it then raises
        :class:`EmbedderClosedError`. Refused once closed.

        Raises:
            EmbedderClosedError: closed, or aborted while the call was in progress.
        """
        self.check_open()
        self.work += 1
        # The scope lives in the caller's own task, for the call only: nothing
        # task-bound outlives the call.
        scope = anyio.CancelScope()
        self._calls.add(scope)
        try:
            with scope:
                yield
        finally:
            self._calls.discard(scope)
            self._done()
        if scope.cancelled_caught:
            raise EmbedderClosedError("the Embedder was closed while this call was in progress")

    def spawn(self, job: Callable[[], Awaitable[None]]) -> None:
        """Run ``job()`` as a background task that closing waits for (or cancels)."""
        assert self._loop is not None
        self.work += 1
        task = self._loop.create_task(self._run(job))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self, shut_down: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Mark closed and run ``shut_down()`` once; every caller returns when it is done.

        ``shut_down`` runs in a task of its own, shielded: a caller cancelled while it
        waits (``asyncio.wait_for(aclose(), ...)``) cannot cut the close short and leave
        the session open, and the next caller waits for the same close.

        Raises:
            RuntimeError: called from another event loop than the one of first use.
        """
        if self._closing is None:
            if self.state is State.CLOSED:
                return
            if self.state is State.OPENED:
                self.check_open()  # the right event loop
            self.state = State.CLOSED
            self._closing = asyncio.get_running_loop().create_task(shut_down())
        await asyncio.shield(self._closing)

    async def drain(self, *, cancel: bool) -> None:
        """Wait until no work is left; with ``cancel``, cancel all of it first.

        Cancelled public calls raise :class:`EmbedderClosedError` in their callers.
        """
        if cancel:
            for scope in self._calls:
                scope.cancel()
            tasks = list(self._background)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        loop = asyncio.get_running_loop()
        while self.work:  # the batches in flight, and public calls winding down
            self._idle = loop.create_future()
            await self._idle

    async def _run(self, job: Callable[[], Awaitable[None]]) -> None:
        try:
            await job()
        except asyncio.CancelledError:
            pass  # drain(cancel=True): the callers were failed; nobody awaits this task
        finally:
            self._done()

    def _done(self) -> None:
        self.work -= 1
        if not self.work and self._idle is not None and not self._idle.done():
            self._idle.set_result(None)  # wake drain()
