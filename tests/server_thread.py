"""A LocalServer on its own event loop in a daemon thread, for tests of blocking code
(SyncEmbedder, the sync methods of the framework integrations)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from asyncembed.testing import LocalServer

T = TypeVar("T")


class ServerThread:
    """``with ServerThread(dimensions=8) as st:`` serves ``st.server`` until the block ends.

    Args:
        **options: Passed to :class:`LocalServer`.
    """

    def __init__(self, **options: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server = LocalServer(**options)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 20.0) -> T:
        """Run ``coro`` on the server's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        self.run(self.server.start())
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.run(self.server.aclose())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
