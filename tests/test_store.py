"""SQLite job state (identity, checkpoints, crash-safe resume) and the embeddings cache."""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from asyncembed._bulk._files import Checkpoint
from asyncembed._bulk._state import JobIdentity, JobState
from asyncembed._cache import Cache
from asyncembed._exceptions import InputFileError, JobMismatchError, StoreError

MODEL = "openai/text-embedding-3-small"


def identity(
    tmp_path: Path,
    *,
    model: str = MODEL,
    dimensions: int | None = None,
    rows: int = 3,
    field: str | None = None,
) -> JobIdentity:
    corpus = tmp_path / "corpus.txt"
    if not corpus.exists():
        corpus.write_text("a\nb\nc\n")
    return JobIdentity.of(
        corpus, tmp_path / "out.npy", model=model, dimensions=dimensions, rows=rows, field=field
    )


def present(found: list[npt.NDArray[np.float32] | None]) -> npt.NDArray[np.float32]:
    assert all(v is not None for v in found)
    return np.stack([v for v in found if v is not None])


# -- JobState ------------------------------------------------------------------------------


def test_new_job_starts_at_zero_and_progress_survives_reopen(tmp_path: Path) -> None:
    with JobState(tmp_path / "state.db") as state:
        assert state.begin(identity(tmp_path)) == Checkpoint()
        assert not state.finished
        state.commit(Checkpoint(rows=2, dim=8, offset=99))
    with JobState(tmp_path / "state.db") as state:
        assert state.begin(identity(tmp_path)) == Checkpoint(rows=2, dim=8, offset=99)
        state.commit(Checkpoint(rows=3, dim=8, offset=120))
        state.mark_finished()
    with JobState(tmp_path / "state.db") as state:
        state.begin(identity(tmp_path))
        assert state.finished
        assert state.checkpoint.rows == 3


def test_state_uses_wal(tmp_path: Path) -> None:
    with JobState(tmp_path / "state.db"):
        conn = sqlite3.connect(tmp_path / "state.db")
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        conn.close()


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"model": "other/model"}, "model"),
        ({"dimensions": 256}, "dimensions"),
        ({"rows": 4}, "rows"),
        ({"field": "body"}, "field"),
    ],
)
def test_a_different_job_is_refused(tmp_path: Path, changes: dict[str, Any], field: str) -> None:
    with JobState(tmp_path / "state.db") as state:
        state.begin(identity(tmp_path))
        state.commit(Checkpoint(rows=1, dim=4))
    with JobState(tmp_path / "state.db") as state, pytest.raises(JobMismatchError) as info:
        state.begin(identity(tmp_path, **changes))
    assert f"{field} " in str(info.value) and "\n" not in str(info.value)
    assert isinstance(info.value, ValueError)


def test_a_changed_input_is_refused_but_a_copy_is_not(tmp_path: Path) -> None:
    with JobState(tmp_path / "state.db") as state:
        state.begin(identity(tmp_path))
        state.commit(Checkpoint(rows=1, dim=4))
    os.utime(tmp_path / "corpus.txt", (0, 0))  # touched: same content, same job
    with JobState(tmp_path / "state.db") as state:
        state.begin(identity(tmp_path))
    (tmp_path / "corpus.txt").write_text("a\nb\nX\n")  # same size, other content
    with (
        JobState(tmp_path / "state.db") as state,
        pytest.raises(JobMismatchError, match="input_fingerprint"),
    ):
        state.begin(identity(tmp_path))


def test_a_job_with_nothing_saved_is_replaced_by_the_corrected_command(tmp_path: Path) -> None:
    with JobState(tmp_path / "state.db") as state:  # e.g. the first request failed
        state.begin(identity(tmp_path, dimensions=256))
    with JobState(tmp_path / "state.db") as state:
        assert state.begin(identity(tmp_path)) == Checkpoint()
        state.commit(Checkpoint(rows=2, dim=4))
    with JobState(tmp_path / "state.db") as state:  # the corrected job is the one recorded
        assert state.begin(identity(tmp_path)).rows == 2
        with pytest.raises(JobMismatchError):
            state.begin(identity(tmp_path, dimensions=256))


def test_identity_of_a_missing_input(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="cannot read"):
        JobIdentity.of(
            tmp_path / "nope.txt", tmp_path / "o.npy", model=MODEL, dimensions=None, rows=0
        )


def test_commit_rules(tmp_path: Path) -> None:
    with JobState(tmp_path / "state.db") as state:
        with pytest.raises(StoreError, match="begin"):
            state.commit(Checkpoint(rows=1, dim=4))
        state.begin(identity(tmp_path))
        state.commit(Checkpoint(rows=2, dim=4))
        with pytest.raises(StoreError, match="goes back from 2 to 1"):
            state.commit(Checkpoint(rows=1, dim=4))
        with pytest.raises(StoreError, match="dim 5"):
            state.commit(Checkpoint(rows=3, dim=5))
        with pytest.raises(StoreError, match="only 2 of 3 rows"):
            state.mark_finished()
        assert state.checkpoint == Checkpoint(rows=2, dim=4)


def test_state_file_errors(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        JobState(tmp_path / "missing" / "state.db")
    (tmp_path / "junk.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not an asyncembed database"):
        JobState(tmp_path / "junk.db")
    conn = sqlite3.connect(tmp_path / "future.db")
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(StoreError, match="schema version 99"):
        JobState(tmp_path / "future.db")


# -- the resume protocol, killed for real --------------------------------------------------

RUNNER = textwrap.dedent(
    """
    import os, signal, sys
    import numpy as np
    from asyncembed._bulk._formats import open_reader
    from asyncembed._bulk._state import JobIdentity, JobState
    from asyncembed._bulk._formats import open_writer

    corpus, out, state_path, kill_at, when = sys.argv[1:6]
    kill_at = int(kill_at)
    reader = open_reader(corpus)
    rows = reader.count()
    state = JobState(state_path)
    cp = state.begin(JobIdentity.of(corpus, out, model="m", dimensions=None, rows=rows))
    if not state.finished:
        writer = open_writer(out, rows=rows, dim=cp.dim, resume=cp)
        if hasattr(writer, "part_rows"):
            writer.part_rows = 7
        ids, texts = [], []
        start = cp.rows
        for record_id, text in reader.records(cp.rows):
            ids.append(record_id)
            texts.append(text)
            if len(texts) == 10 or start + len(texts) == rows:
                # A deterministic "embedding" of each text.
                block = np.array([[len(t), sum(map(ord, t)) % 997, i] for i, t in
                                  zip(ids, texts)], dtype=np.float32)
                writer.write(start, block, ids)
                start += len(texts)
                ids, texts = [], []
                if start >= kill_at and when == "before-commit":
                    writer.flush()
                    os.kill(os.getpid(), signal.SIGKILL)
                state.commit(writer.flush())
                if start >= kill_at and when == "after-commit":
                    writer.write(start, np.zeros((1, 3), np.float32), [start])
                    os.kill(os.getpid(), signal.SIGKILL)
        writer.finish()
        if when == "before-mark":
            os.kill(os.getpid(), signal.SIGKILL)
        state.mark_finished()
    """
)


def run(tmp_path: Path, out: Path, kill_at: int, when: str) -> int:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parent.parent))
    args = [sys.executable, "-c", RUNNER, str(tmp_path / "corpus.txt"), str(out)]
    args += [str(out) + ".state", str(kill_at), when]
    return subprocess.run(args, env=env, timeout=60, check=False).returncode


@pytest.mark.parametrize("fmt", ["npy", "jsonl", "parquet"])
def test_sigkill_anywhere_then_rerun_gives_the_same_bytes(tmp_path: Path, fmt: str) -> None:
    lines = [f"line number {i} " + "x" * (i % 13) for i in range(95)]
    (tmp_path / "corpus.txt").write_text("\n".join(lines) + "\n")
    ref = tmp_path / f"ref.{fmt}"
    assert run(tmp_path, ref, 10**9, "never") == 0
    out = tmp_path / f"out.{fmt}"
    for kill_at, when in [(30, "before-commit"), (50, "after-commit"), (0, "before-mark")]:
        assert run(tmp_path, out, kill_at, when) == -signal.SIGKILL
        assert out.exists() == (when == "before-mark")  # never a half-written output
    assert run(tmp_path, out, 10**9, "never") == 0
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(ref.read_bytes()).digest()
    assert not Path(f"{out}.partial").exists() and not Path(f"{out}.parts").exists()


# -- Cache ---------------------------------------------------------------------------------


def vectors(n: int, d: int = 4, seed: int = 0) -> npt.NDArray[np.float32]:
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def test_cache_miss_then_hit(tmp_path: Path) -> None:
    with Cache(tmp_path / "cache.db") as cache:
        assert cache.get_many(MODEL, None, ["a", "b"]) == [None, None]
        assert (cache.hits, cache.misses) == (0, 2)
        cache.put_many(MODEL, None, ["a", "b"], vectors(2))
        got = cache.get_many(MODEL, None, ["b", "c", "a", "b"])
        assert got[1] is None
        np.testing.assert_array_equal(present([got[0], got[2], got[3]]), vectors(2)[[1, 0, 1]])
        assert got[0] is not None and got[0].dtype == np.float32
        assert (cache.hits, cache.misses) == (3, 3)
        assert len(cache) == 2


def test_cache_keys_separate_model_and_dimensions(tmp_path: Path) -> None:
    with Cache(tmp_path / "cache.db") as cache:
        cache.put_many(MODEL, None, ["t"], vectors(1, seed=1))
        cache.put_many(MODEL, 256, ["t"], vectors(1, seed=2))
        cache.put_many("other/model", None, ["t"], vectors(1, seed=3))
        for model, dims, seed in [(MODEL, None, 1), (MODEL, 256, 2), ("other/model", None, 3)]:
            np.testing.assert_array_equal(
                present(cache.get_many(model, dims, ["t"])), vectors(1, seed=seed)
            )
        assert cache.get_many(MODEL, 512, ["t"]) == [None]
        assert len(cache) == 3
    assert Cache.key("ab", None, "c") != Cache.key("a", None, "bc")  # framing is unambiguous
    assert len(Cache.key(MODEL, 1, "x")) == 16


def test_cache_persists_and_handles_large_batches(tmp_path: Path) -> None:
    texts = [f"text {i}" for i in range(1_234)]
    with Cache(tmp_path / "cache.db") as cache:
        cache.put_many(MODEL, 8, texts, vectors(len(texts), 8))
    with Cache(tmp_path / "cache.db") as cache:
        got = cache.get_many(MODEL, 8, texts)
        np.testing.assert_array_equal(present(got), vectors(len(texts), 8))
        assert cache.hits == len(texts)


def test_cache_rejects_misshaped_vectors(tmp_path: Path) -> None:
    with Cache(tmp_path / "cache.db") as cache, pytest.raises(ValueError, match="expected 2"):
        cache.put_many(MODEL, None, ["a", "b"], vectors(3))


def test_cache_and_state_work_from_worker_threads(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache.db")
    state = JobState(tmp_path / "state.db")
    state.begin(identity(tmp_path, rows=400))
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        try:
            for i in range(20):
                texts = [f"{k}-{i}-{j}" for j in range(5)]
                cache.put_many(MODEL, None, texts, vectors(5, seed=k))
                assert all(v is not None for v in cache.get_many(MODEL, None, texts))
                state.commit(Checkpoint(rows=state.checkpoint.rows, dim=4))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(cache) == 4 * 20 * 5 and cache.hits == 400
    cache.close()
    state.close()


def test_a_cache_created_by_several_workers_at_once_opens_for_all(tmp_path: Path) -> None:
    # Web workers sharing one cache file all create it at startup, at the same moment.
    failures: list[BaseException] = []

    def open_cache(path: Path, barrier: threading.Barrier) -> None:
        barrier.wait()
        try:
            Cache(path).close()
        except StoreError as exc:
            failures.append(exc)

    for i in range(25):
        barrier = threading.Barrier(6)
        threads = [
            threading.Thread(target=open_cache, args=(tmp_path / f"c{i}.db", barrier))
            for _ in range(6)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert failures == []
