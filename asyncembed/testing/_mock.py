"""MockTransport: answers requests from a function, for unit tests without sockets."""

from __future__ import annotations

import inspect
import random
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import msgspec

from .._transport import RawResponse
from ._vectors import count_tokens
from ._wire import BadRequest, embeddings_body, error_body, parse_request

__all__ = ["MockTransport", "json_response"]

Handler = Callable[[dict[str, Any]], RawResponse | Awaitable[RawResponse]]

_JSON = {"Content-Type": "application/json"}


def json_response(
    body: Any, *, status: int = 200, headers: Mapping[str, str] | None = None
) -> RawResponse:
    """A :class:`asyncembed.RawResponse` whose body is ``body`` as JSON.

    Args:
        body: Anything msgspec can encode (dicts, lists, Structs).
        status: The HTTP status.
        headers: Extra headers (``Retry-After``...), added to ``Content-Type``.
    """
    return RawResponse(status, {**_JSON, **(headers or {})}, msgspec.json.encode(body))


class MockTransport:
    """A :class:`asyncembed.Transport` that answers from a function (httpx-style).

    With no handler it answers like :class:`LocalServer` would (the same deterministic
    vectors, :func:`expected_vector`, in the encoding asked for). With a handler, each
    request body is decoded to a dict and passed to it; it returns (or awaits to) a
    :class:`asyncembed.RawResponse`, e.g. from :func:`json_response`, or calls
    :meth:`answer` to build the normal answer. Every request body is kept in
    :attr:`requests`.

    Usage::

        def handler(request):
            if "poison" in request["input"]:
                return json_response({"error": {"code": 400, "message": "no"}}, status=400)
            return transport.answer(request)

        transport = MockTransport(handler)
        async with Embedder("m", transport=transport) as embedder:
            ...

    Args:
        handler: The function that answers, or ``None`` for correct answers.
        dimensions: The vector length of answers built by :meth:`answer` (a request's
            own ``dimensions`` wins).
    """

    __test__ = False

    def __init__(self, handler: Handler | None = None, *, dimensions: int = 8) -> None:
        self.handler = handler
        self.dimensions = dimensions
        self.requests: list[dict[str, Any]] = []
        self.closed = False

    def __repr__(self) -> str:
        return f"<MockTransport requests={len(self.requests)} closed={self.closed}>"

    async def post(self, content: bytes) -> RawResponse:
        """Decode the body, record it, and return the handler's answer."""
        request: dict[str, Any] = msgspec.json.decode(content)
        self.requests.append(request)
        if self.handler is None:
            return self.answer(request)
        result = self.handler(request)
        if inspect.isawaitable(result):
            result = await result
        return result

    async def aclose(self) -> None:
        """Mark the transport closed (there is nothing to release)."""
        self.closed = True

    def answer(self, request: Mapping[str, Any]) -> RawResponse:
        """The answer the local server gives to ``request``: vectors, or a 400 envelope."""
        try:
            parsed = parse_request(
                msgspec.json.encode(request), models=None, max_inputs=None, reject_inputs=()
            )
        except BadRequest as exc:
            return json_response(error_body(exc.status, exc.message), status=exc.status)
        tokens = count_tokens(parsed.items)
        body = embeddings_body(
            parsed,
            response_id=f"embd-mock-{len(self.requests)}",
            dimensions=parsed.dimensions or self.dimensions,
            base64=parsed.encoding_format == "base64",
            empty=False,
            fault=None,
            tokens=tokens,
            cost=0.0,
            rng=random.Random(0),
        )
        return RawResponse(200, _JSON, body)
