"""The bulk job (resume, checkpoints, the kill test) and the progress display."""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import re
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import anyio
import numpy as np
import pytest

from asyncembed import Batching, Embedder, Limits, PaymentRequiredError, Stats
from asyncembed._bulk import BulkJob
from asyncembed._bulk._progress import Progress, format_duration
from asyncembed._cli import main
from asyncembed._exceptions import JobMismatchError
from asyncembed.testing import FakeClock, LocalServer, MockTransport, expected_vector

MODEL = "test/model"
DIMS = 8


def corpus(path: Path, n: int, prefix: str = "text") -> list[str]:
    texts = [f"{prefix} {i}: a line of the corpus" for i in range(n)]
    path.write_text("\n".join(texts) + "\n", encoding="utf-8")
    return texts


def expected(texts: list[str], dims: int = DIMS) -> np.ndarray:
    return np.stack([expected_vector(MODEL, t, dims) for t in texts])


def recorded_rows(state: Path) -> int:
    with sqlite3.connect(state) as conn:
        row = conn.execute("SELECT rows_done FROM job").fetchone()
    conn.close()
    return int(row[0]) if row else 0


# -- BulkJob -------------------------------------------------------------------------------


class Steps(FakeClock):
    """A FakeClock that also moves ``step`` seconds each time it is read."""

    def __init__(self, step: float) -> None:
        super().__init__(0.0)
        self.step = step

    def now(self) -> float:
        self.advance(self.step)
        return super().now()


def client(server: LocalServer, **options: object) -> Embedder:
    return Embedder(MODEL, base_url=server.base_url, api_key="", **options)  # type: ignore[arg-type]


def record_commits(job: BulkJob, commits: list[int]) -> None:
    """Append the rows recorded at each checkpoint of ``job`` to ``commits``."""
    checkpoint = job._checkpoint

    def spy() -> None:
        checkpoint()
        commits.append(job.saved)

    job._checkpoint = spy  # type: ignore[method-assign]


@pytest.mark.anyio
async def test_job_checkpoints_on_its_clock(tmp_path: Path) -> None:
    corpus(tmp_path / "c.txt", 100)
    out, state = tmp_path / "o.npy", tmp_path / "s.db"
    commits: list[int] = []
    async with LocalServer(dimensions=DIMS) as server:
        job = BulkJob(
            tmp_path / "c.txt", out, model=MODEL, state=state, clock=Steps(1.0), checkpoint_every=2
        )
        with job:
            record_commits(job, commits)
            async with client(server, batching=Batching(max_size=10)) as embedder:
                result = await job.run(embedder)
    # The clock moves 1 s per reading and checkpoint_every is 2 s: every other block,
    # then once more before finishing (which finds nothing new to record).
    assert commits == [20, 40, 60, 80, 100, 100]
    assert result.embedded == 100 and recorded_rows(state) == 100


@pytest.mark.anyio
async def test_by_default_every_block_is_recorded_as_it_lands(tmp_path: Path) -> None:
    corpus(tmp_path / "c.txt", 100)
    commits: list[int] = []
    async with LocalServer(dimensions=DIMS) as server:
        job = BulkJob(tmp_path / "c.txt", tmp_path / "o.npy", model=MODEL, state=tmp_path / "s.db")
        with job:
            record_commits(job, commits)
            async with client(server, batching=Batching(max_size=10)) as embedder:
                await job.run(embedder)
    assert commits[:10] == list(range(10, 101, 10))


@pytest.mark.anyio
async def test_failed_job_saves_its_progress_and_resumes(tmp_path: Path) -> None:
    texts = corpus(tmp_path / "c.txt", 100)
    out, state = tmp_path / "o.jsonl", tmp_path / "s.db"
    one_at_a_time = {"batching": Batching(max_size=10), "limits": Limits(max_concurrency=1)}
    async with LocalServer(dimensions=DIMS, script=["ok", "ok", "ok", "402"]) as server:
        with BulkJob(tmp_path / "c.txt", out, model=MODEL, state=state) as job:
            assert (job.total, job.done) == (100, 0)
            async with client(server, **one_at_a_time) as embedder:
                with pytest.raises(PaymentRequiredError):
                    # One block at a time: no later block's request is on its way (the
                    # client cancels it, but the server may count it after the reset).
                    await job.run(embedder, window=1)
        assert job.saved == recorded_rows(state) == 30  # saved on the way out
        assert not out.exists() and out.with_name("o.jsonl.partial").exists()

        server.reset_stats()
        with BulkJob(tmp_path / "c.txt", out, model=MODEL, state=state) as job:
            assert job.done == job.resumed_from == 30
            async with client(server) as embedder:
                result = await job.run(embedder)
        assert (result.embedded, result.resumed_from, result.rows) == (70, 30, 100)
        assert server.inputs_count == 70
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert [r["id"] for r in rows] == list(range(100))
        np.testing.assert_array_equal(
            np.array([r["vector"] for r in rows], dtype=np.float32), expected(texts)
        )
        assert not out.with_name("o.jsonl.partial").exists()

        with BulkJob(tmp_path / "c.txt", out, model=MODEL, state=state) as job:
            async with client(server) as embedder:
                result = await job.run(embedder)
        assert result.already_finished and result.embedded == 0
        assert server.inputs_count == 70


@pytest.mark.anyio
async def test_job_without_state_deletes_its_partial_output_on_failure(tmp_path: Path) -> None:
    corpus(tmp_path / "c.txt", 50)
    out = tmp_path / "o.jsonl"
    out.write_text("previous\n")
    async with LocalServer(dimensions=DIMS, script=["ok", "402"]) as server:
        with BulkJob(tmp_path / "c.txt", out, model=MODEL, overwrite=True) as job:
            options = {"batching": Batching(max_size=10), "limits": Limits(max_concurrency=1)}
            async with client(server, **options) as embedder:
                with pytest.raises(PaymentRequiredError):
                    await job.run(embedder)
    assert out.read_text() == "previous\n"  # the old output is untouched...
    assert not out.with_name("o.jsonl.partial").exists()  # ...and nothing half-written stays


@pytest.mark.anyio
async def test_job_rejects_a_negative_interval_and_another_model(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="checkpoint_every"):
        BulkJob(tmp_path / "c.txt", tmp_path / "o.npy", model=MODEL, checkpoint_every=-1)
    corpus(tmp_path / "c.txt", 3)
    async with LocalServer(dimensions=DIMS) as server:
        with BulkJob(tmp_path / "c.txt", tmp_path / "o.npy", model="other/model") as job:
            async with client(server) as embedder:
                with pytest.raises(ValueError, match="other/model"):
                    await job.run(embedder)
    assert not tmp_path.joinpath("o.npy").exists()


# -- the kill test -------------------------------------------------------------------------

N = 50_000
BATCH, CONCURRENCY = 100, 4
WINDOW = 2 * CONCURRENCY  # Embedder.stream's default window, in batches


async def wait_for(condition: Callable[[], bool], process: anyio.abc.Process) -> None:
    """Poll ``condition`` in short steps, failing if the process ends or 20 s pass."""
    with anyio.fail_after(20):
        while not condition():
            assert process.returncode is None, "the run ended before it could be killed"
            await anyio.sleep(0.005)


async def read_all(stream: anyio.abc.ByteReceiveStream) -> bytes:
    """Everything until the end of the stream (one receive() may return only a part)."""
    chunks: list[bytes] = []
    with contextlib.suppress(anyio.EndOfStream, anyio.ClosedResourceError):
        while True:
            chunks.append(await stream.receive())
    return b"".join(chunks)


@pytest.mark.anyio
@pytest.mark.slow
@pytest.mark.parametrize(
    "sig",
    [signal.SIGINT, signal.SIGTERM, signal.SIGKILL],
    ids=["SIGINT", "SIGTERM", "SIGKILL"],
)
async def test_killed_run_resumes_to_the_same_file_paying_once(
    tmp_path: Path, sig: signal.Signals
) -> None:
    texts = corpus(tmp_path / "c.txt", N)
    out, state, ref = tmp_path / "o.npy", tmp_path / "s.db", tmp_path / "ref.npy"
    common = ["--model", MODEL, "--batch-size", str(BATCH), "--concurrency", str(CONCURRENCY)]
    common += ["--quiet"]
    if sig == signal.SIGKILL:
        common += ["--checkpoint-every", "0"]  # a checkpoint per block: SIGKILL saves nothing
    async with LocalServer(dimensions=DIMS, latency=0.02) as server:
        argv = ["embed", str(tmp_path / "c.txt"), "-o", str(out), "--resume", str(state)]
        argv += ["--base-url", server.base_url, *common]
        command = [sys.executable, "-m", "asyncembed", *argv]
        async with await anyio.open_process(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        ) as process:
            await wait_for(lambda: server.inputs_count >= N // 5, process)
            process.send_signal(sig)
            code = await process.wait()
            assert process.stderr is not None
            stderr = (await read_all(process.stderr)).decode()
        await server.wait_idle()
        first = server.stats
        saved = recorded_rows(state)
        if sig != signal.SIGKILL:
            assert code == (130 if sig == signal.SIGINT else 143), (code, stderr)
            assert "run the same command again to resume" in stderr
            assert stderr.count("\n") <= 2 and "Traceback" not in stderr
            # Ctrl-C/SIGTERM saved all written: lost are only the batches in the window.
            assert first.inputs - saved <= WINDOW * BATCH
        else:
            assert code == -signal.SIGKILL
            # Also lost: the block being checkpointed when the process died.
            assert first.inputs - saved <= (WINDOW + 1) * BATCH
        assert 0 < saved < N
        assert not out.exists()  # nothing half-written looks complete

        server.latency = 0.0
        rerun = await anyio.to_thread.run_sync(main, argv)
        assert rerun == 0
        assert server.inputs_count - first.inputs == N - saved  # nothing recorded is re-sent
        received = Counter(t for r in server.requests for t in r.inputs or () if r.status == 200)
        assert set(received) == set(texts)
        paid_twice = sum(received.values()) - N
        bound = (WINDOW + (sig == signal.SIGKILL)) * BATCH
        sys.stdout.write(f"{sig.name}: saved {saved}, paid twice {paid_twice}, bound {bound}\n")
        assert 0 <= paid_twice <= bound

        server.reset_stats()
        argv_ref = ["embed", str(tmp_path / "c.txt"), "-o", str(ref), "--base-url"]
        assert await anyio.to_thread.run_sync(main, [*argv_ref, server.base_url, *common]) == 0
    assert out.read_bytes() == ref.read_bytes()
    matrix = np.load(out, mmap_mode="r")
    for i in (0, saved - 1, saved, N - 1):
        np.testing.assert_array_equal(matrix[i], expected_vector(MODEL, texts[i], DIMS))


# -- progress ------------------------------------------------------------------------------


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_format_duration() -> None:
    assert [format_duration(s) for s in (0.4, 42, 185, 7380)] == ["0s", "42s", "3m05s", "2h03m"]


def test_plain_lines_every_interval_and_a_final_line() -> None:
    clock, stream = FakeClock(), io.StringIO()
    progress = Progress(1000, done=200, stream=stream, interval=5.0, clock=clock)
    assert not progress.tty
    stats = Stats(prompt_tokens=12_345, cost=0.0123, retries=2)
    assert not progress.update(300, stats)  # not due yet
    clock.advance(5.0)
    assert progress.update(400, stats)  # 200 rows this run in 5 s
    clock.advance(1.0)
    assert not progress.update(450, stats)
    clock.advance(5.0)
    progress.close(1000, stats)
    progress.close(1000, stats)  # idempotent
    lines = stream.getvalue().splitlines()
    assert lines == [
        "asyncembed: 400/1,000 texts (40.0%), 40 texts/s, tokens 12,345, cost $0.012300,"
        " retries 2, elapsed 5s, eta 15s",
        "asyncembed: 1,000/1,000 texts (100.0%), 73 texts/s, tokens 12,345, cost $0.012300,"
        " retries 2, elapsed 11s",
    ]
    assert "\r" not in stream.getvalue() and "\x1b" not in stream.getvalue()


def test_tty_bar_redraws_in_place() -> None:
    clock, stream = FakeClock(), FakeTTY()
    progress = Progress(2000, stream=stream, width=100, clock=clock)
    assert progress.tty
    stats = Stats(prompt_tokens=1_500_000, cost=0.25, retries=3)
    clock.advance(10.0)
    assert progress.update(500, stats)
    assert not progress.update(510, stats)  # redraws at most every 0.1 s
    bar = stream.getvalue()
    assert bar.startswith("\r\x1b[2K[") and "\n" not in bar
    assert "]  25.0%   500/2,000   50/s 1.5M tok $0.2500 retries  3 ETA 30s" in bar
    assert "[" + "#" * 7 + "-" * 23 + "]" in bar
    assert len(bar) - len("\r\x1b[2K") <= 99
    clock.advance(30.0)
    progress.close(2000, stats)
    final = stream.getvalue()[len(bar) :]
    assert final.startswith("\r\x1b[2K[" + "#" * 30 + "]") and final.endswith("ETA 0s\n")


def test_tty_bar_fits_a_narrow_terminal_and_handles_no_rate() -> None:
    clock, stream = FakeClock(), FakeTTY()
    assert (
        Progress(10, stream=stream, width=200, clock=clock).render_bar(0, Stats()).endswith("ETA ?")
    )
    narrow = Progress(10, stream=stream, width=30, clock=clock).render_bar(5, Stats())
    assert narrow.startswith("\r\x1b[2K  50.0%  5/10    0/s    0 tok") and "#" not in narrow
    assert len(narrow) == len("\r\x1b[2K") + 29  # the last column stays empty
    with pytest.raises(ValueError):
        Progress(10, done=11, stream=stream)


def test_the_bar_keeps_its_width_and_its_figures_keep_their_places() -> None:
    clock, stream = FakeClock(), FakeTTY()
    progress = Progress(2928, stream=stream, width=80, clock=clock)
    lines = []
    for batch in range(47):  # a job of 46 batches of 64, as `make demo` runs it
        done = min(2928, batch * 64)
        clock.advance(0.05)
        stats = Stats(prompt_tokens=done * 57, cost=done * 1.2e-6, retries=batch // 5)
        lines.append(progress.render_bar(done, stats).removeprefix("\r\x1b[2K"))
    for anchor in ("]", "%", "/", "/s", " tok", " retries", " ETA"):
        assert len({line.index(anchor) for line in lines}) == 1, anchor
    filled = [line.count("#") for line in lines]
    assert filled == sorted(filled) and filled[0] == 0 and filled[-1] == lines[0].index("]") - 1
    assert all(len(line) <= 79 for line in lines)


@pytest.mark.anyio
async def test_one_fake_clock_drives_the_job_the_client_the_server_and_the_display(
    tmp_path: Path,
) -> None:
    corpus(tmp_path / "c.txt", 50)
    clock, stream = FakeClock(), FakeTTY()
    one_at_a_time = {"batching": Batching(max_size=10), "limits": Limits(max_concurrency=1)}
    with anyio.fail_after(10):  # five 2-second answers, and no real second waited
        async with LocalServer(dimensions=DIMS, latency=2.0, clock=clock) as server:
            with BulkJob(tmp_path / "c.txt", tmp_path / "o.npy", model=MODEL, clock=clock) as job:
                progress = Progress(job.total, stream=stream, width=100, clock=clock)
                async with client(server, clock=clock, **one_at_a_time) as embedder:
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(progress.follow, lambda: job.done, lambda: embedder.stats)
                        result = await job.run(embedder)
                        tg.cancel_scope.cancel()
                    progress.close(job.done, embedder.stats)
            arrived = [r.arrived for r in server.requests]
    assert result.embedded == 50 and result.elapsed >= 10.0
    assert all(b - a >= 2.0 for a, b in itertools.pairwise(arrived))
    shown = {int(n) for n in re.findall(r"%\s+(\d+)/50", stream.getvalue())}
    assert {10, 20, 30, 40, 50} <= shown and all(n % 10 == 0 for n in shown)  # a step per batch


@pytest.mark.anyio
async def test_truncation_is_part_of_the_jobs_identity(tmp_path: Path) -> None:
    corpus(tmp_path / "c.txt", 3)
    args = {"model": MODEL, "state": tmp_path / "s.db"}
    cut = Batching(truncate=True, max_input_tokens=100)
    with BulkJob(tmp_path / "c.txt", tmp_path / "o.npy", batching=cut, **args) as job:  # type: ignore[arg-type]
        async with Embedder(MODEL, transport=MockTransport(dimensions=DIMS)) as embedder:
            await job.run(embedder)  # progress recorded: the job is not replaced below
    with pytest.raises(JobMismatchError, match="truncate_at 100 != None"):
        BulkJob(tmp_path / "c.txt", tmp_path / "o.npy", **args).open()  # type: ignore[arg-type]
    # A state file written before the field existed still matches a job that does not cut.
    with sqlite3.connect(tmp_path / "s.db") as conn:
        (raw,) = conn.execute("SELECT identity FROM job").fetchone()
        old = {k: v for k, v in json.loads(raw).items() if k != "truncate_at"}
        conn.execute("UPDATE job SET identity = ?", (json.dumps(old),))
    conn.close()
    with BulkJob(tmp_path / "c.txt", tmp_path / "o.npy", **args) as job:  # type: ignore[arg-type]
        assert job.total == 3
