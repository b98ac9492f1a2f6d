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
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

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

    __slots__ = ("_background", "_closing", "_idle", "_loop", "state", "work")

    def __init__(self) -> None:
        self.state = State.UNOPENED
        self._loop: asyncio.AbstractEventLoop | None = None
        # The loop holds only weak references to tasks: this set keeps them alive.
        self._background: set[asyncio.Task[None]] = set()
        self.work = 0  # background tasks and public calls in progress
        self._idle: asyncio.Future[None] | None = None
        self._closing: asyncio.Future[None] | None = None

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
        """Count a public call in progress, so closing waits for it (refused once closed)."""
        self.check_open()
        self.work += 1
        try:
            yield
        finally:
            self._done()

    def spawn(self, job: Callable[[], Awaitable[None]]) -> None:
        """Run ``job()`` as a background task that closing waits for (or cancels)."""
        assert self._loop is not None
        self.work += 1
        task = self._loop.create_task(self._run(job))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def begin_close(self) -> bool:
        """Mark closed; ``False`` if it already was (after waiting for a close at work).

        Raises:
            RuntimeError: called from another event loop than the one of first use.
        """
        if self._closing is not None:
            await asyncio.shield(self._closing)  # another close is at work: wait for it
            return False
        if self.state is State.CLOSED:
            return False
        if self.state is State.OPENED:
            self.check_open()  # the right event loop
        self.state = State.CLOSED
        self._closing = asyncio.get_running_loop().create_future()
        return True

    async def drain(self, *, cancel: bool) -> None:
        """Wait until no work is left; with ``cancel``, cancel the background tasks first."""
        if cancel:
            tasks = list(self._background)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        loop = asyncio.get_running_loop()
        while self.work:  # the batches in flight, and public calls winding down
            self._idle = loop.create_future()
            await self._idle

    def end_close(self) -> None:
        """Wake the other callers of close waiting in :meth:`begin_close`."""
        if self._closing is not None and not self._closing.done():
            self._closing.set_result(None)

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
