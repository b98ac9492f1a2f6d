"""SyncEmbedder: a blocking, thread-safe Embedder, tested against a LocalServer served
from a background thread (every blocking call here runs in plain threads)."""

from __future__ import annotations

import asyncio
import gc
import inspect
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from server_thread import ServerThread

import asyncembed
from asyncembed import (
    APITimeoutError,
    BadRequestError,
    Batching,
    Embedder,
    EmbedderClosedError,
    InvalidInputError,
    Limits,
    PartialResultError,
    ProviderPreferences,
    Retry,
    SyncEmbedder,
    Timeouts,
)
from asyncembed._options import EmbedderOptions
from asyncembed.testing import expected_vector, no_backoff, wait_until

DIMS = 8
MODEL = "test/sync"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def served() -> Iterator[ServerThread]:
    with ServerThread(dimensions=DIMS, reject_inputs=["poison"]) as running:
        yield running


@pytest.fixture
def embedder(served: ServerThread) -> Iterator[SyncEmbedder]:
    with SyncEmbedder(MODEL, base_url=served.server.base_url, retry=no_backoff(2)) as e:
        yield e


def vector(text: str) -> np.ndarray:
    return expected_vector(MODEL, text, DIMS)


def sync_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("asyncembed-sync-")]


# -- options ---------------------------------------------------------------------


def test_options_are_exactly_the_embedders_keywords() -> None:
    # session is the one keyword left out: a session belongs to one event loop.
    keywords = set(inspect.signature(Embedder).parameters) - {"model", "session"}
    assert set(EmbedderOptions.__annotations__) == keywords


def test_every_option_reaches_the_embedder(served: ServerThread, tmp_path: Path) -> None:
    options: EmbedderOptions = {
        "api_key": "sk-sync-secret",
        "base_url": served.server.base_url,
        "batching": Batching(max_size=4),
        "limits": Limits(max_concurrency=2),
        "retry": Retry(attempts=2),
        "timeouts": Timeouts(),
        "provider": ProviderPreferences(allow_fallbacks=False),
        "dimensions": 4,
        "encoding_format": "float",
        "input_type": "search_query",
        "user": "user-7",
        "app_url": "https://example.org/app",
        "app_title": "sync tests",
        "transport": None,
        "allow_insecure": False,
        "cache": tmp_path / "cache.sqlite",
        "clock": None,
        "limiter": None,
    }
    assert set(options) == set(EmbedderOptions.__annotations__)  # none forgotten here
    served.server.reset_stats()
    with SyncEmbedder(MODEL, **options) as embedder:
        assert "sk-sync-secret" not in repr(embedder)
        matrix = embedder.embed_many([f"t{i}" for i in range(6)])
        again = embedder.embed("t0")  # from the cache: no request
        assert embedder.stats.cache_hits == 1
    assert matrix.shape == (6, 4)
    assert np.array_equal(again, expected_vector(MODEL, "t0", 4))
    records = served.server.requests
    assert [r.n_inputs for r in records] == [4, 2]  # Batching(max_size=4)
    first = records[0]
    assert first.dimensions == 4 and first.encoding_format == "float"
    assert first.headers["X-OpenRouter-Title"] == "sync tests"
    assert first.headers["HTTP-Referer"] == "https://example.org/app"


def test_bad_options_raise_before_any_thread_starts() -> None:
    before = sync_threads()
    with pytest.raises(ValueError, match="model"):
        SyncEmbedder("")
    with pytest.raises(ValueError, match="dimensions"):
        SyncEmbedder(MODEL, dimensions=0)
    with pytest.raises(TypeError, match="session"):
        SyncEmbedder(MODEL, session=object())  # type: ignore[call-arg]
    assert sync_threads() == before


# -- coalescing across threads ---------------------------------------------------------


def test_4000_threads_at_once_share_at_most_40_requests() -> None:
    n = 4000
    # A small stack per thread: 4,000 default 8 MiB stacks is a lot of address space.
    previous = threading.stack_size(256 * 1024)
    try:
        with ServerThread(dimensions=DIMS) as served:
            with SyncEmbedder(
                MODEL, base_url=served.server.base_url, batching=Batching(max_wait=0.1)
            ) as embedder:
                barrier = threading.Barrier(n)
                results: list[np.ndarray | None] = [None] * n

                def caller(i: int) -> None:
                    barrier.wait()
                    results[i] = embedder.embed(f"text {i}")

                threads = [threading.Thread(target=caller, args=(i,)) for i in range(n)]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
            requests = served.server.requests_count
    finally:
        threading.stack_size(previous)
    for i, result in enumerate(results):
        assert result is not None and np.array_equal(result, vector(f"text {i}")), i
    assert requests <= 40, requests
    assert embedder.stats.requests == requests


def test_calls_from_inside_a_running_loop_block_and_return(embedder: SyncEmbedder) -> None:
    async def handler() -> np.ndarray:
        return embedder.embed("from a coroutine")

    assert np.array_equal(asyncio.run(handler()), vector("from a coroutine"))


# -- streams ---------------------------------------------------------------------------


# -- errors ----------------------------------------------------------------------------


def test_errors_propagate_with_their_types(embedder: SyncEmbedder) -> None:
    with pytest.raises(TypeError):
        embedder.embed(42)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError):
        embedder.embed("   ")
    with pytest.raises(BadRequestError) as bad:
        embedder.embed("poison")
    assert bad.value.status == 400
    with pytest.raises(PartialResultError) as partial:
        embedder.embed_many(["fine", "poison"])
    assert partial.value.failed == [1]
    assert np.array_equal(partial.value.vectors[0], vector("fine"))
    with pytest.raises(ValueError, match="timeout"):
        embedder.embed("x", timeout=-1)


def test_timeout(embedder: SyncEmbedder) -> None:
    with ServerThread(dimensions=DIMS, latency=5.0) as slow:
        with SyncEmbedder(MODEL, base_url=slow.server.base_url) as e:
            with pytest.raises(APITimeoutError):
                e.embed("slow", timeout=0.05)
            assert e.stats.queued == 0


# -- lifecycle -------------------------------------------------------------------------


def test_close_from_another_thread_lets_calls_in_flight_finish() -> None:
    with ServerThread(dimensions=DIMS, latency=0.3) as served:
        embedder = SyncEmbedder(MODEL, base_url=served.server.base_url)
        result: list[np.ndarray] = []
        caller = threading.Thread(target=lambda: result.append(embedder.embed_many(["a", "b"])))
        caller.start()
        served.run(wait_until(lambda: served.server.stats.in_flight == 1))
        closers = [threading.Thread(target=embedder.close) for _ in range(2)]
        for closer in closers:
            closer.start()
        for closer in closers:
            closer.join()
        caller.join()
        assert not sync_threads()
    assert np.array_equal(result[0], np.stack([vector("a"), vector("b")]))
    with pytest.raises(EmbedderClosedError):
        embedder.embed("late")
    with pytest.raises(EmbedderClosedError):
        next(embedder.stream(["late"]))
    embedder.close()  # idempotent
    assert "CLOSED" in repr(embedder)


def test_an_unused_embedder_starts_no_thread_and_closes_quietly(tmp_path: Path) -> None:
    before = sync_threads()
    embedder = SyncEmbedder(MODEL, cache=tmp_path / "cache.sqlite")
    assert sync_threads() == before and "UNSTARTED" in repr(embedder)
    embedder.close()
    cache = embedder._embedder.cache  # opened from the path: closed with it
    assert cache is not None
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        len(cache)
    with pytest.raises(EmbedderClosedError):
        embedder.embed("x")
    del embedder
    gc.collect()  # no ResourceWarning: nothing was started


def test_resource_warning_when_collected_unclosed(served: ServerThread) -> None:
    embedder = SyncEmbedder(MODEL, base_url=served.server.base_url)
    embedder.embed("x")
    (thread,) = sync_threads()
    with pytest.warns(ResourceWarning, match="unclosed <SyncEmbedder"):
        del embedder
        gc.collect()
    thread.join(10)  # the warning also stops the background loop
    assert not thread.is_alive()


# -- Ctrl-C: a real SIGINT in a child process ------------------------------------------

CHILD = textwrap.dedent(
    """
    import json, signal, sys, threading, time
    import numpy as np
    import asyncembed._sync
    from asyncembed import Batching, EmbedderClosedError, SyncEmbedder
    from asyncembed.testing import expected_vector, wait_until
    from server_thread import ServerThread

    MODE, LATENCY, WINDOW = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
    served = ServerThread(dimensions=8, latency=LATENCY).__enter__()
    embedder = SyncEmbedder(
        "m", base_url=served.server.base_url,
        batching=Batching(max_wait=WINDOW, flush_when_idle=False),
    )
    main = threading.main_thread().ident

    def interrupt():
        # caught: while both texts wait in the batch; uncaught: once the request is sent
        if MODE == "caught":
            ready = lambda: embedder.stats.queued >= 2
        else:
            ready = lambda: served.server.stats.in_flight >= 2
        served.run(wait_until(ready, timeout=20))
        print(time.time(), flush=True)
        signal.pthread_kill(main, signal.SIGINT)  # a real Ctrl-C, to the main thread

    neighbour = []
    barrier = threading.Barrier(2)

    def neighbour_call():
        barrier.wait()
        neighbour.append(embedder.embed("neighbour"))

    threading.Thread(target=interrupt, daemon=True).start()
    if MODE == "uncaught":
        # Exit may wait this long for a loop that does not stop: longer than the
        # requests, so only cancelling them makes exit prompt.
        asyncembed._sync._EXIT_GRACE = 60.0
        # Another thread's request is in flight too when Ctrl-C ends the script.
        def background():
            try:
                embedder.embed_many(["b1", "b2"])
            except EmbedderClosedError:
                pass  # exit closed the SyncEmbedder under it: expected

        threading.Thread(target=background, daemon=True).start()
        embedder.embed("interrupted")  # Ctrl-C ends the script here
        raise SystemExit("not interrupted")
    other = threading.Thread(target=neighbour_call)
    other.start()
    barrier.wait()
    began = time.monotonic()
    try:
        embedder.embed("interrupted")
        outcome = "returned"
    except KeyboardInterrupt:
        outcome = "interrupted"
    waited = time.monotonic() - began
    other.join()
    after = embedder.embed("after")
    stats = embedder.stats
    embedder.close()
    served.__exit__()
    print(json.dumps({  # after the line with the time of the interrupt
        "outcome": outcome,
        "waited": waited,
        "neighbour_ok": bool(np.array_equal(neighbour[0], expected_vector("m", "neighbour", 8))),
        "after_ok": bool(np.array_equal(after, expected_vector("m", "after", 8))),
        "first_request": served.server.requests[0].inputs,
        "queued": stats.queued,
        "in_flight": stats.in_flight,
    }))
    """
)


def run_child(mode: str, latency: float, window: float) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests"), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-X", "dev", "-W", "always", "-c", CHILD, mode, str(latency), str(window)],
        capture_output=True,
        text=True,
        timeout=40,
        env=env,
        cwd=ROOT,
    )


def test_ctrl_c_ends_only_the_interrupted_call() -> None:
    window = 2.5  # the Ctrl-C must land inside it: 1 s was too short on a loaded machine
    child = run_child("caught", 0.0, window)
    assert child.returncode == 0, child.stderr
    assert "Warning" not in child.stderr and "Exception ignored" not in child.stderr, child.stderr
    report: dict[str, Any] = json.loads(child.stdout.splitlines()[1])
    assert report["outcome"] == "interrupted"
    # The call ended at once, not when its batch was sent; its coroutine was
    # cancelled on the loop, so its text left the batch, and its batch-mate got its
    # vector from a request of its own.
    assert report["waited"] < window
    assert report["first_request"] == ["neighbour"]
    assert report["neighbour_ok"] and report["after_ok"]
    assert report["queued"] == 0 and report["in_flight"] == 0


def test_uncaught_ctrl_c_exits_promptly_and_quietly() -> None:
    # The requests in flight would take 30 s: exit cancels them instead of waiting.
    child = run_child("uncaught", 30.0, 0.0)
    exited = time.time()
    assert exited - float(child.stdout) < 10.0  # measured: ~0.1 s
    assert child.returncode == -2, (child.returncode, child.stderr)  # killed by SIGINT
    assert child.stderr.rstrip().endswith("KeyboardInterrupt"), child.stderr
    for noise in ("Warning", "Exception ignored", "Task was destroyed", "Unclosed"):
        assert noise not in child.stderr, child.stderr


def test_is_exported() -> None:
    assert asyncembed.SyncEmbedder is SyncEmbedder
    assert SyncEmbedder.__module__ == "asyncembed"
