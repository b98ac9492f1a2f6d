"""The HTTP transport against the local server: headers, errors, ownership."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import aiohttp.abc
import anyio
import anyio.lowlevel
import numpy as np
import pytest

import asyncembed
from asyncembed import Embedder, Retry, Timeouts
from asyncembed._exceptions import redact_secret
from asyncembed._transport import HTTPTransport, is_loopback, resolve_api_key, shown_url
from asyncembed.testing import FakeClock, LocalServer, expected_vector, no_backoff

pytestmark = pytest.mark.anyio


async def test_headers_sent_with_every_request() -> None:
    async with LocalServer(dimensions=4, api_key="k-123") as server:
        async with Embedder(
            "m",
            base_url=server.base_url + "/",  # a trailing slash is fine
            api_key="k-123",
            app_url="https://example.org/app",
            app_title="My App",
        ) as embedder:
            await embedder.embed("x")
        headers = server.requests[0].headers
        assert headers["User-Agent"].startswith(f"asyncembed/{asyncembed.__version__} ")
        assert headers["HTTP-Referer"] == "https://example.org/app"
        assert headers["X-OpenRouter-Title"] == "My App"
        assert headers["Content-Type"] == "application/json"
        assert "Authorization" not in headers  # the server never records it


def test_the_environment_key_goes_only_to_openrouter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENROUTER_API_KEY", "env-key")
    assert resolve_api_key(None, "https://openrouter.ai/api/v1") == "env-key"
    for other in (
        "https://api.openai.com/v1",
        "http://openrouter.ai/api/v1",
        "https://openrouter.ai.evil.example/v1",
        "http://127.0.0.1:8000/v1",
    ):
        assert resolve_api_key(None, other) is None, other
    assert resolve_api_key("given", "https://api.openai.com/v1") == "given"
    assert resolve_api_key("", "https://openrouter.ai/api/v1") == ""  # explicitly none


async def test_another_endpoint_gets_no_environment_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENROUTER_API_KEY", "env-key")
    async with LocalServer(dimensions=4, api_key="env-key") as server:
        monkeypatch.setenv("OPENROUTER_BASE_URL", server.base_url)
        async with Embedder("m", retry=no_backoff(1)) as embedder:
            assert embedder.base_url == server.base_url
            with pytest.raises(asyncembed.AuthenticationError, match="api_key=") as info:
                await embedder.embed("x")
            assert "env-key" not in str(info.value)
        async with Embedder("m", api_key="env-key") as embedder:
            await embedder.embed("x")  # given explicitly, it is sent


@contextlib.asynccontextmanager
async def raw_server(answer: Callable[[bytes], bytes]) -> AsyncIterator[str]:
    """A bare TCP server on 127.0.0.1 that reads one request head and writes ``answer(head)``."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        writer.write(answer(head))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"
    finally:
        server.close()


def chain(exc: BaseException) -> str:
    """Everything reachable from an exception: its text, repr, causes and contexts."""
    parts: list[str] = []
    seen: BaseException | None = exc
    while seen is not None:
        parts += [str(seen), repr(seen), repr(getattr(seen, "__dict__", ""))]
        seen = seen.__cause__ or seen.__context__
    return "\n".join(parts)


KEY = "sk-or-v1-0123456789abcdef"


async def error_401_from(answer: Callable[[bytes], bytes]) -> asyncembed.AuthenticationError:
    """The error of one ``embed()`` against a server whose 401 body is ``answer(head)``."""

    def reply(head: bytes) -> bytes:
        body = answer(head)
        length = str(len(body)).encode()
        return b"HTTP/1.1 401 Unauthorized\r\nContent-Length: " + length + b"\r\n\r\n" + body

    async with raw_server(reply) as url:
        async with Embedder("m", base_url=url, api_key=KEY, retry=no_backoff(1)) as embedder:
            with pytest.raises(asyncembed.AuthenticationError) as info:
                await embedder.embed("x")
    return info.value


async def test_a_key_echoed_by_the_server_is_redacted() -> None:
    def echo(head: bytes) -> bytes:
        auth = next(line for line in head.split(b"\r\n") if line.lower().startswith(b"auth"))
        return b'{"error": {"code": 401, "message": "bad header: ' + auth + b'"}}'

    error = await error_401_from(echo)
    assert KEY not in chain(error)
    assert "Bearer [redacted]" in str(error)


async def test_a_malformed_reply_keeps_no_request_headers_reachable() -> None:
    async with raw_server(lambda head: b"HTTP/1.1 abc\r\nX: \x00\r\n\r\n") as url:
        async with Embedder("m", base_url=url, api_key=KEY, retry=no_backoff(1)) as embedder:
            with pytest.raises(asyncembed.APIConnectionError) as info:
                await embedder.embed("x")
    assert KEY not in chain(info.value)


@pytest.mark.parametrize("bad", ["sk-abc\n", "sk-a\rbc", "sk abc", "sk-\x00", "sk-é"])
def test_a_key_with_control_characters_is_refused_unseen(bad: str) -> None:
    with pytest.raises(ValueError, match="API key holds") as info:
        Embedder("m", base_url="https://example.org/v1", api_key=bad)
    assert bad not in str(info.value) and bad.strip() not in str(info.value)


async def test_no_key_means_no_authorization_header() -> None:
    async with LocalServer(dimensions=4, api_key="needed") as server:
        async with Embedder("m", base_url=server.base_url, retry=no_backoff(1)) as embedder:
            with pytest.raises(asyncembed.AuthenticationError):
                await embedder.embed("x")


async def test_request_timeout_is_an_api_timeout_error() -> None:
    async with LocalServer(dimensions=4, latency=5.0) as server:
        transport = HTTPTransport(
            base_url=server.base_url, api_key=None, timeouts=Timeouts(request=0.05)
        )
        try:
            with pytest.raises(asyncembed.APITimeoutError) as info:
                await transport.post(b'{"input": "x", "model": "m"}')
            assert isinstance(info.value, TimeoutError)
            assert info.value.retryable
        finally:
            await transport.aclose()


async def test_truncated_body_is_a_connection_error() -> None:
    async with LocalServer(dimensions=4, script=["truncated"]) as server:
        transport = HTTPTransport(base_url=server.base_url, api_key=None)
        try:
            with pytest.raises(asyncembed.APIConnectionError, match=r"cut short|closed"):
                await transport.post(b'{"input": "x", "model": "m"}')
        finally:
            await transport.aclose()


def test_base_url_must_be_http() -> None:
    with pytest.raises(ValueError, match="http"):
        HTTPTransport(base_url="ftp://example.org", api_key=None)
    assert "url=" in repr(HTTPTransport(base_url="https://x.invalid/v1", api_key="secret-1"))
    assert "secret-1" not in repr(
        HTTPTransport(base_url="https://x.invalid/v1", api_key="secret-1")
    )


@pytest.mark.parametrize(
    ("url", "loopback"),
    [
        ("http://127.0.0.1:8000/v1", True),
        ("http://127.5.6.7/v1", True),
        ("http://[::1]:80/v1", True),
        ("http://localhost/v1", True),
        ("http://10.0.0.1/v1", False),
        ("http://example.org/v1", False),
    ],
)
def test_is_loopback(url: str, loopback: bool) -> None:
    assert is_loopback(url) is loopback


async def test_custom_transport_is_used_and_not_closed() -> None:
    async with LocalServer(dimensions=4) as server:
        transport = HTTPTransport(base_url=server.base_url, api_key=None)
        async with Embedder("m", transport=transport) as embedder:
            await embedder.embed("x")
        # Still usable: the Embedder closes only what it created.
        raw = await transport.post(b'{"input": "y", "model": "m"}')
        assert raw.status == 200
        await transport.aclose()
        await anyio.lowlevel.checkpoint()


class Recorder:
    """A Transport that keeps the bodies it is given and answers from a LocalServer."""

    def __init__(self, inner: HTTPTransport) -> None:
        self.inner = inner
        self.bodies: list[dict[str, object]] = []

    async def post(self, content: bytes) -> asyncembed.RawResponse:
        self.bodies.append(json.loads(content))
        return await self.inner.post(content)

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.mark.parametrize(
    ("base_url", "provider", "expected"),
    [
        ("https://openrouter.ai/api/v1", None, {"require_parameters": True}),
        (
            "https://openrouter.ai/api/v1",
            asyncembed.ProviderPreferences(order=["openai"], require_parameters=False),
            {"order": ["openai"], "require_parameters": False},
        ),
        ("https://api.openai.com/v1", None, None),
    ],
)
async def test_dimensions_on_openrouter_require_parameters(
    base_url: str, provider: asyncembed.ProviderPreferences | None, expected: object
) -> None:
    async with LocalServer(dimensions=4) as server:
        recorder = Recorder(HTTPTransport(base_url=server.base_url, api_key=None))
        async with Embedder(
            "m", base_url=base_url, transport=recorder, dimensions=4, provider=provider
        ) as embedder:
            await embedder.embed("x")
        await recorder.aclose()
        assert recorder.bodies[0].get("provider") == expected
        assert recorder.bodies[0]["dimensions"] == 4


async def test_redirects_are_not_followed_so_the_key_stays_put() -> None:
    from aiohttp import web

    hits: list[str] = []

    async def redirect(request: web.Request) -> web.Response:
        hits.append(request.path)
        raise web.HTTPTemporaryRedirect("/elsewhere/embeddings")

    async def elsewhere(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.json_response({"data": []})

    app = web.Application()
    app.router.add_post("/v1/embeddings", redirect)
    app.router.add_post("/elsewhere/embeddings", elsewhere)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        transport = HTTPTransport(base_url=f"http://127.0.0.1:{port}/v1", api_key="k")
        async with Embedder("m", transport=transport, retry=no_backoff(1)) as embedder:
            with pytest.raises(asyncembed.APIStatusError) as info:
                await embedder.embed("x")
        await transport.aclose()
        assert info.value.status == 307 and not info.value.retryable
        assert hits == ["/v1/embeddings"]
    finally:
        await runner.cleanup()


async def test_closed_transport_refuses_instead_of_reopening() -> None:
    async with LocalServer(dimensions=4) as server:
        transport = HTTPTransport(base_url=server.base_url, api_key=None)
        await transport.post(b'{"input": "x", "model": "m"}')
        await transport.aclose()
        with pytest.raises(asyncembed.EmbedderClosedError):
            await transport.post(b'{"input": "x", "model": "m"}')
        assert transport._session is None


async def test_a_closed_caller_session_is_a_connection_error() -> None:
    import aiohttp

    async with LocalServer(dimensions=4) as server:
        session = aiohttp.ClientSession()
        await session.close()
        transport = HTTPTransport(base_url=server.base_url, api_key=None, session=session)
        with pytest.raises(asyncembed.APIConnectionError, match="closed"):
            await transport.post(b'{"input": "x", "model": "m"}')


async def test_a_short_placeholder_key_does_not_mangle_answers() -> None:
    async with LocalServer(dimensions=4, api_key="x") as server:
        async with Embedder("m", base_url=server.base_url, api_key="x") as embedder:
            vector = await embedder.embed("text with x in it")
    np.testing.assert_array_equal(vector, expected_vector("m", "text with x in it", 4))
    # ...nor the server's error texts: a short key cannot be told from ordinary text.
    error = redact_secret(asyncembed.BadRequestError("max x exceeded", status=400), "x")
    assert isinstance(error, asyncembed.BadRequestError) and str(error) == "400 max x exceeded"
    assert error.message == "max x exceeded"


async def test_a_json_escaped_echo_of_the_key_is_redacted_too() -> None:
    escaped = KEY.replace("-", "\\u002d").encode()  # the same text once decoded

    def echo(head: bytes) -> bytes:
        body = b'{"error": {"code": 401, "message": "bad key ' + escaped + b'",'
        return body + b' "metadata": {"raw": "Bearer ' + escaped + b'"}}}'

    error = await error_401_from(echo)
    assert KEY not in chain(error) and "[redacted]" in str(error)
    assert error.metadata == {"raw": "Bearer [redacted]"}


# -- a server never reached fails fast; one that answered before is retried as usual ------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_a_refused_server_never_reached_fails_within_the_unreachable_timeout() -> None:
    clock = FakeClock()
    url = f"http://user:pw@127.0.0.1:{free_port()}/api/v1"  # nothing listens there
    retry = Retry(attempts=100, timeout=180.0)
    async with Embedder("m", base_url=url, retry=retry, clock=clock) as embedder:
        start = clock.now()
        with pytest.raises(asyncembed.APIConnectionError) as info:
            await embedder.embed("x")
    assert info.value.unreachable
    assert clock.now() - start <= retry.unreachable_timeout
    assert embedder.stats.requests < 100  # gave up long before the attempts ran out
    message = str(info.value)
    assert f"127.0.0.1:{url.rsplit(':', 1)[1].split('/')[0]}/api/v1/embeddings" in message
    assert "pw" not in message and "user" not in message


class _NoSuchHost(aiohttp.abc.AbstractResolver):
    """A resolver for which no name exists: DNS failure without any DNS traffic."""

    async def resolve(self, host: str, port: int = 0, family: int = 0) -> list[Any]:
        raise OSError(socket.EAI_NONAME, "Name or service not known")

    async def close(self) -> None:
        pass


async def test_a_name_that_does_not_resolve_fails_fast_too() -> None:
    clock = FakeClock()
    connector = aiohttp.TCPConnector(resolver=_NoSuchHost())
    async with aiohttp.ClientSession(connector=connector) as session:
        retry = Retry(attempts=100, timeout=180.0)
        embedder = Embedder(
            "m",
            base_url="https://no-such-host.invalid/v1",
            session=session,
            retry=retry,
            clock=clock,
        )
        with pytest.raises(asyncembed.APIConnectionError, match=r"no-such-host\.invalid") as info:
            await embedder.embed("x")
        await embedder.aclose()
    assert info.value.unreachable and clock.now() - 1000.0 <= retry.unreachable_timeout


async def test_a_server_that_answered_before_is_retried_past_the_unreachable_timeout() -> None:
    clock = FakeClock()
    retry = Retry(attempts=30, timeout=600.0, initial_delay=1.0, max_delay=5.0)
    server = LocalServer(dimensions=4)
    await server.__aenter__()
    embedder = Embedder("m", base_url=server.base_url, retry=retry, clock=clock)
    await embedder.embed("first")  # it answered once
    await server.__aexit__(None, None, None)  # then it went away
    with pytest.raises(asyncembed.APIConnectionError) as info:
        await embedder.embed("second")
    await embedder.aclose()
    assert not info.value.unreachable
    assert embedder.stats.requests == 1 + retry.attempts  # every attempt was spent
    assert clock.now() - 1000.0 > retry.unreachable_timeout


async def test_a_tls_failure_says_so() -> None:
    clock = FakeClock()
    async with LocalServer(dimensions=4) as server:  # plain http: the handshake fails
        url = server.base_url.replace("http://", "https://")
        async with Embedder("m", base_url=url, clock=clock) as embedder:
            with pytest.raises(asyncembed.APIConnectionError, match=r"embeddings: TLS: ") as info:
                await embedder.embed("x")
    assert info.value.unreachable and "not permitted" not in str(info.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://u:p@example.com/v1?key=s#f", "https://example.com/v1"),
        ("http://u:p@[::1]:8080/v1", "http://[::1]:8080/v1"),
        ("http://127.0.0.1:9/v1", "http://127.0.0.1:9/v1"),
    ],
)
def test_urls_are_shown_without_credentials(url: str, shown: str) -> None:
    assert shown_url(url) == shown
    assert "u:p" not in repr(HTTPTransport(base_url=url, api_key=None))
