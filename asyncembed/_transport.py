"""One POST to ``{base_url}/embeddings``: bytes in, status/headers/bytes out.

The transport knows the URL, the key and the HTTP session, and nothing about
batches or retries. Every aiohttp error is mapped to our tree here, in one place.
"""

from __future__ import annotations

import ipaddress
import os
import platform
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

import aiohttp

from ._config import Timeouts
from ._exceptions import APIConnectionError, APITimeoutError, EmbedderClosedError
from ._version import __version__

__all__ = [
    "DEFAULT_BASE_URL",
    "shown_url",
    "HTTPTransport",
    "RawResponse",
    "Transport",
    "is_loopback",
    "is_openrouter",
    "resolve_api_key",
    "resolve_base_url",
]

USER_AGENT = (
    f"asyncembed/{__version__} aiohttp/{aiohttp.__version__} python/{platform.python_version()}"
)


@dataclass(frozen=True, slots=True)
class RawResponse:
    """An HTTP answer before decoding: status, headers (case-insensitive) and body."""

    status: int
    headers: Mapping[str, str]
    content: bytes


class Transport(Protocol):
    """Anything that can POST an embeddings request body and return the raw answer.

    ``Embedder(transport=...)`` accepts any object with these two methods.
    """

    async def post(self, content: bytes) -> RawResponse:
        """Send one JSON request body.

        Raises:
            APIConnectionError: no complete answer (refused, reset, truncated body).
            APITimeoutError: the request timed out.
        """
        ...

    async def aclose(self) -> None:
        """Release what the transport created."""
        ...


def is_loopback(url: str) -> bool:
    """Whether ``url`` points at this machine (127.0.0.0/8, ::1 or ``localhost``)."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_key(api_key: str) -> None:
    for position, char in enumerate(api_key, 1):
        if not "!" <= char <= "~":
            # Name the position and kind, never the key (people paste it with a newline).
            kind = "a space" if char == " " else f"character U+{ord(char):04X}"
            raise ValueError(
                f"the API key holds {kind} at position {position} of {len(api_key)}: "
                "a key is printable ASCII without spaces (strip the line break?)"
            )


class HTTPTransport:
    """The aiohttp transport.

    Args:
        base_url: The API root, e.g. ``https://openrouter.ai/api/v1``.
        api_key: Sent as ``Authorization: Bearer``; never logged or shown.
        session: An aiohttp session to use; it is not closed by us. ``None``: one is
            created on first use and closed by :meth:`aclose`.
        timeouts: Connect and whole-request timeouts.
        headers: Extra headers (``HTTP-Referer``, ``X-OpenRouter-Title``...).
        allow_insecure: Send the key over plain ``http://`` to a non-loopback host.

    Raises:
        ValueError: the URL is not http(s), the key holds a space, line break or other
            control character, or a key would go over plain HTTP to another machine
            without ``allow_insecure``.
    """

    __slots__ = (
        "_answered",
        "_closed",
        "_headers",
        "_owns_session",
        "_session",
        "_timeout",
        "_url",
    )

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str | None,
        session: aiohttp.ClientSession | None = None,
        timeouts: Timeouts = Timeouts(),  # noqa: B008 - frozen, immutable default
        headers: Mapping[str, str] | None = None,
        allow_insecure: bool = False,
    ) -> None:
        scheme = urlsplit(base_url).scheme
        if scheme not in ("http", "https"):
            raise ValueError(f"base_url must be an http(s) URL, got {base_url!r}")
        if api_key:
            _check_key(api_key)
        if api_key and scheme == "http" and not is_loopback(base_url) and not allow_insecure:
            raise ValueError(
                "refusing to send the API key over plain http:// to a non-loopback host; "
                "use https:// or pass allow_insecure=True"
            )
        self._url = base_url.rstrip("/") + "/embeddings"
        self._headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
            **(headers or {}),
        }
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._session = session
        self._owns_session = session is None
        self._closed = False
        self._answered = False  # any HTTP answer yet: then connection errors are faults
        self._timeout = aiohttp.ClientTimeout(total=timeouts.request, sock_connect=timeouts.connect)

    def __repr__(self) -> str:
        return f"<HTTPTransport url={shown_url(self._url)!r}>"

    async def post(self, content: bytes) -> RawResponse:
        """POST one request body and read the whole answer.

        Raises:
            APIConnectionError: refused, reset, DNS failure, a truncated body, or a
                caller-owned session that was closed.
            APITimeoutError: the request did not finish within ``Timeouts.request``.
            EmbedderClosedError: this transport was closed.
        """
        if self._closed:
            raise EmbedderClosedError("the HTTP transport is closed")
        session = self._session
        if session is None:
            session = self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
                timeout=self._timeout,
            )
        try:
            # No redirects: an embeddings POST never needs one, and following one could
            # carry the key to another host.
            async with session.post(
                self._url,
                data=content,
                headers=self._headers,
                timeout=self._timeout,
                allow_redirects=False,
            ) as resp:
                self._answered = True
                body = await resp.read()
                return RawResponse(resp.status, resp.headers, body)
        except TimeoutError:
            error: Exception = APITimeoutError("request timed out")
        except aiohttp.ClientPayloadError as exc:
            error = APIConnectionError(f"response body was cut short: {exc}")
        except aiohttp.ClientConnectorError as exc:
            # Refused, unknown host, TLS failure: name the URL (never its userinfo).
            error = APIConnectionError(f"cannot connect to {shown_url(self._url)}: {_why(exc)}")
            error.unreachable = not self._answered
        except aiohttp.ClientError as exc:
            # str(exc) names the host and the OS error, never request headers.
            error = APIConnectionError(f"{type(exc).__name__}: {exc}")
        except RuntimeError:
            if not session.closed:
                raise
            error = APIConnectionError("the aiohttp session given to asyncembed is closed")
        # Raised outside the handler: aiohttp's exceptions carry the request's headers
        # (the key among them), so none may stay reachable as our error's __context__.
        raise error

    async def aclose(self) -> None:
        """Close the session if this transport created it; later posts are refused."""
        self._closed = True
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None


DEFAULT_BASE_URL = "https://openrouter.ai/api/v1"


def resolve_base_url(base_url: str | None) -> str:
    """The API root in force: the argument, else ``$OPENROUTER_BASE_URL``, else OpenRouter's."""
    return base_url or os.environ.get("OPENROUTER_BASE_URL") or DEFAULT_BASE_URL


def is_openrouter(base_url: str) -> bool:
    """Whether ``base_url`` is OpenRouter's own API (https on ``openrouter.ai``)."""
    parts = urlsplit(base_url)
    return parts.scheme == "https" and parts.hostname == "openrouter.ai"


def resolve_api_key(api_key: str | None, base_url: str) -> str | None:
    """The key to send: the argument, else ``$OPENROUTER_API_KEY`` for OpenRouter only.

    The environment's key is the user's OpenRouter key: another endpoint (a proxy, vLLM,
    a third party) gets a key only when one is passed explicitly.
    """
    if api_key is not None:
        return api_key
    return os.environ.get("OPENROUTER_API_KEY") if is_openrouter(base_url) else None


def shown_url(url: str) -> str:
    """``url`` fit for a message or a repr: no ``user:password@``, query or fragment."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]  # keeps an IPv6 host's brackets
    return parts._replace(netloc=netloc, query="", fragment="").geturl()


def _why(exc: aiohttp.ClientConnectorError) -> str:
    """The reason a connection failed, in the OS's (or TLS's) words ("Connection refused")."""
    cause = exc.os_error
    if isinstance(cause, ssl.SSLError):  # its errno is the library's, not the OS's
        return f"TLS: {getattr(cause, 'verify_message', None) or cause.reason or cause}"
    if cause.errno and cause.errno > 0 and not isinstance(cause, socket.gaierror):
        return os.strerror(cause.errno)
    return cause.strerror or str(cause) or type(exc).__name__
