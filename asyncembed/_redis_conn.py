"""What a ``RedisLimiter`` connects with: its URL, checked and redacted, and one client
per event loop.

A redis-py asyncio client belongs to the loop it connected on, and one limiter is
often used from several loops: the LangChain and LlamaIndex integrations give the same
``limiter=`` to one Embedder per caller loop and to a SyncEmbedder's thread. So each
loop gets its own client, scripts and background sends (a :class:`Link`), made on
first use there, under a lock (threads make them at the same time).

A loop's client is closed when that loop shuts down: an async generator started on
the loop and left suspended at its ``yield`` is closed by ``loop.shutdown_asyncgens()``,
which ``asyncio.run()``, ``asyncio.Runner``, anyio and a SyncEmbedder's thread all call
once the loop's tasks are cancelled, and its ``finally`` closes the client. A loop
closed without that (``loop.close()`` alone) cannot run anything any more: its link is
dropped untouched.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import AsyncGenerator, Callable, Coroutine
from contextlib import suppress
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

__all__ = ["Link", "Links", "check_url", "redact_url", "secrets_of"]

_SCHEME = re.compile(r"[a-z][a-z0-9+.-]{0,15}")


def check_url(url: object) -> str:
    """``url`` if it is a well-formed ``redis://``, ``rediss://`` or ``unix://`` URL.

    redis-py reads a malformed URL its own way (``redis:/:pw@host`` connects to
    localhost:6379), so only the plain forms pass: a host for ``redis``/``rediss``
    (and a numeric db, if any), a socket path for ``unix``.

    Raises:
        ValueError: anything else. The message shows at most the scheme: the rest of a
            malformed URL may be a password.
    """
    if not isinstance(url, str):
        raise ValueError(f"url must be a redis URL string, got {type(url).__name__}")
    scheme, sep, _ = url.partition("://")
    if sep and _SCHEME.fullmatch(scheme) and _well_formed(scheme, url):
        return url
    if not (sep and _SCHEME.fullmatch(scheme)):
        shown = "a malformed URL"
    elif scheme in ("redis", "rediss", "unix"):
        shown = f"a malformed {scheme}:// URL"
    else:
        shown = f"a URL with the scheme {scheme!r}"
    raise ValueError(
        "url must be redis://HOST[:PORT][/DB], rediss://HOST[:PORT][/DB] or "
        f"unix:///PATH, got {shown} (not shown: it may hold a password)"
    )


def _well_formed(scheme: str, url: str) -> bool:
    if any(c.isspace() or not c.isprintable() for c in url):
        return False  # urlsplit drops tabs and newlines silently
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        return False
    if parts.fragment:
        return False
    if scheme in ("redis", "rediss"):
        path = parts.path
        return bool(parts.hostname) and (path in ("", "/") or path[1:].isdigit())
    if scheme == "unix":
        return not parts.netloc.rpartition("@")[2] and parts.path not in ("", "/")
    return False


def redact_url(url: str) -> str:
    """``url`` with its password (in the authority or a ``password=`` query) masked."""
    parts = urlsplit(url)
    user, at, host = parts.netloc.rpartition("@")
    netloc = f"{user.partition(':')[0]}:***@{host}" if at and ":" in user else parts.netloc
    pairs = parts.query.split("&") if parts.query else []
    query = "&".join("password=***" if p.partition("=")[0] == "password" else p for p in pairs)
    # Not urlunsplit: it writes unix:///path as unix:/path.
    return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")


def secrets_of(url: str) -> list[str]:
    """The passwords in ``url``, as written and decoded, longest first (to mask)."""
    parts = urlsplit(url)
    found = [parts.password or ""]
    found += [
        v for k, _, v in (p.partition("=") for p in parts.query.split("&")) if k == "password"
    ]
    found += [unquote(s) for s in found]
    return sorted({s for s in found if s}, key=len, reverse=True)


class Link:
    """One loop's client, its scripts and the sends in the background on that loop.

    Args:
        client: A redis-py asyncio client not connected yet (it connects on this loop).
        scripts: Lua sources by name, registered on ``client``.
    """

    def __init__(self, client: Redis, scripts: dict[str, str]) -> None:
        self.client = client
        self.scripts: dict[str, AsyncScript] = {
            name: client.register_script(source) for name, source in scripts.items()
        }
        self.tasks: set[asyncio.Task[None]] = set()
        self._unsent: list[Callable[[Link], Coroutine[Any, Any, None]]] = []
        self.watch: AsyncGenerator[None, None] | None = None
        self._closing: asyncio.Task[None] | None = None

    def spawn(self, send: Callable[[Link], Coroutine[Any, Any, None]]) -> None:
        """Run ``send(self)`` in the background on the running loop (this link's).

        A send cancelled (by the loop's shutdown, which cancels every task before it
        closes the async generators) is run again by :meth:`close`: it must be
        idempotent, since the cancelled one may have reached Redis.
        """
        task = asyncio.get_running_loop().create_task(send(self))
        self.tasks.add(task)

        def done(task: asyncio.Task[None]) -> None:
            self.tasks.discard(task)
            if task.cancelled():
                self._unsent.append(send)

        task.add_done_callback(done)

    async def close(self) -> None:
        """Wait for the background sends, then close the client; on this link's loop.

        Idempotent: a second call (the loop's shutdown after ``aclose()``) waits for
        the first.
        """
        if self._closing is None:
            self._closing = asyncio.get_running_loop().create_task(self._close())
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        from redis.exceptions import RedisError

        while self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        unsent, self._unsent = self._unsent, []
        for send in unsent:
            await send(self)
        with suppress(RedisError, OSError):  # a dead connection is closed all the same
            await self.client.aclose()

    async def shut(self) -> None:
        """Close the client and stop watching for the loop's shutdown."""
        await self.close()
        if self.watch is not None:
            # RuntimeError: the loop's shutdown is closing it right now.
            with suppress(RuntimeError):
                await self.watch.aclose()


async def _until_shutdown(link: Link, forget: Callable[[], None]) -> AsyncGenerator[None, None]:
    try:
        yield
    finally:
        forget()
        await link.close()


class Links:
    """The :class:`Link` of each event loop a limiter is used on.

    Args:
        connect: Makes a new (unconnected) client.
        scripts: Lua sources by name, registered on each client.
    """

    def __init__(self, connect: Callable[[], Redis], scripts: dict[str, str]) -> None:
        self._connect = connect
        self._scripts = scripts
        self._lock = threading.Lock()
        self._links: dict[asyncio.AbstractEventLoop, Link] = {}

    def here(self) -> Link:
        """The running loop's link, made on first use."""
        loop = asyncio.get_running_loop()
        link = self._links.get(loop)
        if link is not None:
            return link
        with self._lock:
            link = self._links.get(loop)
            if link is None:
                for old in [old for old in self._links if old.is_closed()]:
                    del self._links[old]  # closed without shutting down: nothing runs there
                link = self._links[loop] = Link(self._connect(), self._scripts)
                link.watch = _until_shutdown(link, self._forget(loop, link))
                # One step on this loop runs it to its yield and registers it with the
                # loop (the first-iteration hook): shutdown_asyncgens() will close it.
                with suppress(StopIteration):
                    link.watch.asend(None).send(None)
        return link

    def sending(self) -> int:
        """How many background sends the running loop's link has not finished."""
        link = self._links.get(asyncio.get_running_loop())
        return 0 if link is None else len(link.tasks)

    def _forget(self, loop: asyncio.AbstractEventLoop, link: Link) -> Callable[[], None]:
        links, lock = self._links, self._lock

        def forget() -> None:
            with lock:
                if links.get(loop) is link:
                    del links[loop]

        return forget

    async def aclose(self, timeout: float) -> None:
        """Close every loop's link: this loop's here, each running loop's on that loop.

        A loop that is not running is left to close its own when it shuts down (or
        dropped, if it is closed). Waits at most ``timeout`` seconds for other loops.
        """
        current = asyncio.get_running_loop()
        with self._lock:
            taken = list(self._links.items())
            self._links.clear()
        mine: Link | None = None
        others: list[asyncio.Future[None]] = []
        for loop, link in taken:
            if loop is current:
                mine = link
            elif loop.is_running():
                with suppress(RuntimeError):  # it closed meanwhile
                    future = asyncio.run_coroutine_threadsafe(link.shut(), loop)
                    others.append(asyncio.wrap_future(future))
        if mine is not None:
            await mine.shut()
        if others:
            await asyncio.wait(others, timeout=timeout)
