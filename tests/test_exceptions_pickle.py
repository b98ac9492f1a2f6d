"""Errors cross processes (Ray workers, process pools) with their attributes intact."""

from __future__ import annotations

import pickle

import numpy as np

import asyncembed
from asyncembed._exceptions import InputFileError


def roundtrip(exc: BaseException) -> BaseException:
    return pickle.loads(pickle.dumps(exc))  # type: ignore[no-any-return]


def test_status_errors_keep_their_message_and_fields() -> None:
    exc = asyncembed.RateLimitError("slow down", status=429, retry_after=2.5, request_id="r1")
    back = roundtrip(exc)
    assert type(back) is asyncembed.RateLimitError and str(back) == str(exc) == "429 slow down"
    assert isinstance(back, asyncembed.RateLimitError)
    assert (back.status, back.retry_after, back.request_id) == (429, 2.5, "r1")


def test_a_partial_result_keeps_its_vectors_and_failures() -> None:
    bad = asyncembed.BadRequestError("no", status=400)
    exc = asyncembed.PartialResultError(
        "1 of 2 failed", vectors=np.ones((2, 3), np.float32), errors={1: bad}, start=10
    )
    back = roundtrip(exc)
    assert isinstance(back, asyncembed.PartialResultError) and str(back) == "1 of 2 failed"
    assert back.failed == [1] and back.start == 10 and str(back.errors[1]) == "400 no"
    np.testing.assert_array_equal(back.vectors, exc.vectors)


def test_file_errors_keep_their_path_and_line() -> None:
    exc = InputFileError("corpus.txt", "empty text", line=3)
    back = roundtrip(exc)
    assert isinstance(back, InputFileError) and str(back) == "corpus.txt: line 3: empty text"
    assert back.line == 3
