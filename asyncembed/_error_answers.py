"""Error answers: a non-2xx status, or an error body inside a 200, as its typed exception.

The codec (``_codec.py``) decodes the good answers; what an error answer says (its
message, code, retry delay and availability flag, in the body or in the headers) is
read here, so that the same :class:`~asyncembed.APIStatusError` comes out whichever
way the server put it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from ._exceptions import APIStatusError, error_for_status, parse_retry_after
from ._models import ErrorBody, ErrorDetail

__all__ = ["detail_error", "error_in_200", "excerpt", "status_error"]

_ERROR = msgspec.json.Decoder(ErrorBody)


def error_in_200(content: bytes) -> ErrorDetail | None:
    """The ``error`` of a 200 body that is not an embeddings answer, if it is one."""
    try:
        return _ERROR.decode(content).error
    except msgspec.DecodeError:
        return None


def detail_error(
    status: int, error: ErrorDetail, headers: Mapping[str, str], request_id: str | None
) -> APIStatusError:
    """The exception for an error body: by its own code when it has one (it may be a 200)."""
    code = error.code
    if isinstance(code, str) and code.isdigit():
        code = int(code)
    effective = code if isinstance(code, int) and 400 <= code < 600 else status
    if effective < 400:
        effective = 502  # an error inside a 200 with no usable code: treat as upstream failure
    return _build(effective, error, headers, request_id)


def status_error(status: int, headers: Mapping[str, str], content: bytes) -> APIStatusError:
    """The exception for a non-2xx answer, its message from whatever the body holds."""
    try:
        body = _ERROR.decode(content)
    except msgspec.DecodeError:
        body = None
    if body is not None and body.error is not None:
        return _build(status, body.error, headers, None)
    if body is not None and body.detail is not None:
        message = _detail_message(body.detail)
    else:
        message = excerpt(content) or "(empty body)"
    return _build(status, ErrorDetail(message=message), headers, None)


def _build(
    status: int, error: ErrorDetail, headers: Mapping[str, str], request_id: str | None
) -> APIStatusError:
    metadata = error.metadata or {}
    availability = error.availability
    lookup: dict[str, str] = {}
    meta_headers = metadata.get("headers")
    if isinstance(meta_headers, dict):
        lookup.update({str(k).lower(): str(v) for k, v in meta_headers.items()})
    lookup.update({k.lower(): v for k, v in headers.items()})
    retry_after = parse_retry_after(
        _Lower(lookup), body_delay=availability.retry_after if availability else None
    )
    return error_for_status(
        status,
        error.message or "(no message)",
        metadata=metadata,
        request_id=request_id or headers.get("x-request-id") or headers.get("x-generation-id"),
        retry_after=retry_after,
        retryable=availability.retryable if availability else None,
    )


class _Lower(dict[str, str]):
    """A dict whose lookups ignore case (keys are stored lower-case)."""

    def get(self, key: str, default: Any = None) -> Any:
        return super().get(key.lower(), default)


def _detail_message(detail: Any) -> str:
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list):  # FastAPI-style [{"msg": ...}, ...]
        parts = [str(d.get("msg", d)) if isinstance(d, dict) else str(d) for d in detail]
        return "; ".join(parts)
    return str(detail)[:300]


def excerpt(content: bytes, limit: int = 200) -> str:
    """The start of a body, whitespace collapsed, for a message."""
    text = " ".join(content[: limit * 4].decode("utf-8", "replace").split())
    return text if len(text) <= limit else text[:limit] + "…"
