"""One Embedder per event loop, plus a :class:`SyncEmbedder`, for framework adapters.

LangChain and LlamaIndex users call one embeddings object from many places: several
``asyncio.run()`` calls in a script, a notebook's loop, a web server's loop, worker
threads, and plain blocking code. An Embedder belongs to the loop it runs on, so each
loop gets its own, created on the first call from that loop; concurrent calls on one
loop share its batches. Blocking calls go to the SyncEmbedder's background loop and
share batches across threads.

Each loop's Embedder is held open by a small task on that loop, so that a loop that
shuts down the usual way (``asyncio.run()``, ``asyncio.Runner``, anyio's and pytest's
runners all cancel leftover tasks) closes its Embedder and HTTP session with it: no
warning at exit, nothing to call. ``close()``/``aclose()`` close them all sooner.
"""

from __future__ import annotations

import asyncio
import os
import threading
import weakref
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Self

from ._embedder import Embedder
from ._exceptions import EmbedderClosedError
from ._options import EmbedderOptions
from ._sync import _INHERITED, SyncEmbedder
from ._transport import resolve_api_key, resolve_base_url
from ._types import Matrix, Vector

__all__ = ["ClosesItsEmbedders", "PerLoop"]


class _LoopHost:
    """The Embedder of one loop, and the task on that loop that holds it open."""

    def __init__(self, embedder: Embedder, loop: asyncio.AbstractEventLoop) -> None:
        self.embedder = embedder
        self.opened: asyncio.Future[None] = loop.create_future()
        self.stop = asyncio.Event()
        self.task = loop.create_task(self._serve(), name=f"asyncembed host of {embedder!r}")

    async def _serve(self) -> None:
        try:
            async with self.embedder:
                self.opened.set_result(None)
                await self.stop.wait()
        except Exception as exc:
            # The Embedder could not open: its callers get the error from opened.
            if not self.opened.done():
                self.opened.set_exception(exc)
        finally:
            if not self.opened.done():  # cancelled while opening
                self.opened.cancel()

    async def close(self) -> None:
        """Close the Embedder (sending what is queued) and wait for it; in its loop."""
        self.stop.set()
        await asyncio.wait([self.task])


class PerLoop:
    """The Embedders of one integration object: one per event loop, one for threads.

    Args:
        model: The model id.
        options: :class:`Embedder` options, shared by every Embedder made here.

    Raises:
        ValueError, TypeError: a bad option (checked now, by building the SyncEmbedder).
    """

    def __init__(self, model: str, options: EmbedderOptions) -> None:
        options = options.copy()
        # Settle the environment's base URL and key now: every Embedder made later,
        # on whatever loop, talks to the same server as the first.
        base_url = options["base_url"] = resolve_base_url(options.get("base_url"))
        options["api_key"] = resolve_api_key(options.get("api_key"), base_url)
        self.model = model
        self.sync = SyncEmbedder(model, **options)
        self._options = options
        self._lock = threading.Lock()
        self._hosts: dict[asyncio.AbstractEventLoop, _LoopHost] = {}
        self._closed = False
        # Dropped without close() (frameworks never close their embeddings objects):
        # stop the background thread quietly; the loops close their own Embedders.
        weakref.finalize(self, _discard, self.sync, self._hosts)
        _ALL.add(self)

    def _reset_after_fork(self) -> None:
        # The parent's loops do not run in a forked child: their hosts are kept, unused
        # (see _sync._INHERITED); the child's loops make their own on first use.
        _INHERITED.append(list(self._hosts.values()))
        self._hosts.clear()
        self._lock = threading.Lock()

    @property
    def options(self) -> EmbedderOptions:
        """The options every Embedder here is built with (a copy; holds the key)."""
        return self._options.copy()

    @property
    def base_url(self) -> str:
        """The API root every Embedder here uses."""
        return self.sync.base_url

    @property
    def dimensions(self) -> int | None:
        """The ``dimensions`` asked for, or ``None``."""
        return self.sync.dimensions

    async def embedder(self) -> Embedder:
        """The running loop's Embedder, opened on first use.

        Raises:
            EmbedderClosedError: after :meth:`close` or :meth:`aclose`.
        """
        loop = asyncio.get_running_loop()
        if self._closed:  # also on a loop whose Embedder close() found idle
            raise EmbedderClosedError("the embeddings object is closed")
        host = self._hosts.get(loop)
        if host is None or host.task.done():
            with self._lock:
                if self._closed:
                    raise EmbedderClosedError("the embeddings object is closed")
                host = self._hosts.get(loop)
                if host is None or host.task.done():
                    host = self._hosts[loop] = _LoopHost(
                        Embedder(self.model, **self._options), loop
                    )
                    host.task.add_done_callback(_forget(self._hosts, self._lock, loop, host))
        if not host.opened.done():
            await asyncio.shield(host.opened)
        host.opened.result()
        return host.embedder

    async def embed(self, text: str) -> Vector:
        """Embed one text on the running loop's Embedder (concurrent calls coalesce)."""
        return await (await self.embedder()).embed(text)

    async def embed_many(self, texts: Sequence[str]) -> Matrix:
        """Embed a list of texts on the running loop's Embedder, in batches."""
        return await (await self.embedder()).embed_many(texts)

    async def embed_chunk(self, texts: Sequence[str]) -> list[Vector]:
        """Embed a list that a framework cut out of a larger one.

        A chunk smaller than one request (``Batching.max_size``) goes through the
        coalescer with the other chunks in flight, so a framework's small chunks
        gathered at once still fill requests; a larger one goes to ``embed_many``.
        """
        if len(texts) >= self.sync.batching.max_size:
            return list(await self.embed_many(texts))
        embedder = await self.embedder()
        return await asyncio.gather(*(embedder.embed(text) for text in texts))

    def _take_hosts(self) -> list[tuple[asyncio.AbstractEventLoop, _LoopHost]]:
        with self._lock:
            self._closed = True
            return list(self._hosts.items())

    async def aclose(self) -> None:
        """Close every Embedder made here: this loop's, other running loops', the sync one.

        Queued texts are sent first. A loop that is not running closes its Embedder
        when it shuts down.
        """
        current = asyncio.get_running_loop()
        for loop, host in self._take_hosts():
            if loop is current:
                await host.close()
            elif loop.is_running():
                await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(host.close(), loop))
            else:
                await asyncio.to_thread(_close_idle, loop, host)
        # SyncEmbedder.close() blocks until its thread stops: not on this loop.
        await asyncio.to_thread(self.sync.close)

    def close(self) -> None:
        """The blocking :meth:`aclose`, for any thread.

        Called from inside a running loop, that loop's Embedder is asked to close but
        not waited for (waiting would block the loop it needs).
        """
        try:
            current: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        for loop, host in self._take_hosts():
            if loop is current:
                host.stop.set()
            elif loop.is_running():
                asyncio.run_coroutine_threadsafe(host.close(), loop).result()
            elif current is None:
                _close_idle(loop, host)
            else:  # this thread runs a loop already: the idle one runs in a helper
                helper = threading.Thread(target=_close_idle, args=(loop, host))
                helper.start()
                helper.join()
        self.sync.close()


def _close_idle(loop: asyncio.AbstractEventLoop, host: _LoopHost) -> None:
    """Close a host on a loop that is not running (kept for later run_until_complete
    calls): run that loop until its Embedder is closed, so nothing is left pending."""
    if loop.is_closed() or host.task.done():
        return
    closing = host.close()
    try:
        loop.run_until_complete(closing)
    except RuntimeError:
        # Another thread started the loop meanwhile: ask it instead.
        closing.close()  # never started: no "never awaited" warning
        try:
            loop.call_soon_threadsafe(host.stop.set)
        except RuntimeError:  # closed meanwhile
            pass


def _forget(
    hosts: dict[asyncio.AbstractEventLoop, _LoopHost],
    lock: threading.Lock,
    loop: asyncio.AbstractEventLoop,
    host: _LoopHost,
) -> Callable[[object], None]:
    # A function of the dict, not of the PerLoop: a loop's task must not keep the
    # integration object alive.
    def forget(_: object) -> None:
        with lock:
            if hosts.get(loop) is host:
                del hosts[loop]

    return forget


def _discard(sync: SyncEmbedder, hosts: dict[asyncio.AbstractEventLoop, _LoopHost]) -> None:
    sync._discard()
    for loop, host in list(hosts.items()):
        if not loop.is_closed():
            try:
                loop.call_soon_threadsafe(host.stop.set)
            except RuntimeError:  # closed meanwhile
                pass


_ALL: weakref.WeakSet[PerLoop] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for per_loop in list(_ALL):
        per_loop._reset_after_fork()


# Registered after _sync's handler (imported above), so the SyncEmbedders are reset too.
os.register_at_fork(after_in_child=_after_fork_in_child)


class ClosesItsEmbedders:
    """``close``/``aclose`` and both context managers, for the classes holding a PerLoop.

    The framework integrations each keep their Embedders in ``self._embedders``.
    """

    _embedders: PerLoop

    def close(self) -> None:
        """Close every Embedder this object made (queued texts are sent first).

        Idempotent; later calls raise :class:`asyncembed.EmbedderClosedError`.
        """
        self._embedders.close()

    async def aclose(self) -> None:
        """Close every Embedder this object made, without blocking the running loop.

        Idempotent; later calls raise :class:`asyncembed.EmbedderClosedError`.
        """
        await self._embedders.aclose()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
