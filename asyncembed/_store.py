"""SQLite storage for bulk jobs: the resumable job state and the embeddings cache.

Both are blocking, and safe to call from worker threads (``anyio.to_thread.run_sync``):
each object owns one connection opened with ``check_same_thread=False`` and serializes
its use with a lock. Both use WAL journaling.

The resume protocol, in the order the bulk runner must follow::

    state = JobState(state_path)
    checkpoint = state.begin(JobIdentity.of(inp, out, model=m, dimensions=d, rows=n))
    if not state.finished:
        writer = open_writer(out, rows=n, dim=checkpoint.dim, resume=checkpoint)
        for start, block, ids in results_from(reader.records(start=checkpoint.rows)):
            writer.write(start, block, ids)
            if time_to_checkpoint():                 # e.g. every few seconds, not per block
                state.commit(writer.flush())         # flush FIRST, then record
        writer.finish()
        state.mark_finished()
    state.close()

The state may only ever be *behind* the output, never ahead of it: ``flush()`` makes the
rows durable before ``commit()`` records them. A crash anywhere then leaves rows past
the recorded mark that the next run overwrites (.npy), truncates (.jsonl) or deletes
(.parquet parts), so the finished output is byte-identical to an uninterrupted run's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import msgspec
import numpy as np
import numpy.typing as npt

from ._exceptions import AsyncEmbedError
from ._io import Checkpoint, InputFileError

__all__ = ["Cache", "JobIdentity", "JobMismatchError", "JobState", "StoreError", "fingerprint"]

_SCHEMA_VERSION = 1
_SAMPLE = 1 << 20  # bytes hashed at each of three places in the input file
_MAX_PARAMS = 500  # SQLite host parameters per statement (old builds allow only 999)


class StoreError(AsyncEmbedError, ValueError):
    """A state or cache file is unusable (missing folder, not an asyncembed database), or
    the job state is misused (progress recorded before ``begin()``, or going backwards)."""


class JobMismatchError(StoreError):
    """The state file records a different job (input, model, output...): not resumed."""


def fingerprint(path: str | os.PathLike[str]) -> str:
    """Return a cheap content fingerprint of a file: its size and three 1 MiB samples.

    Hashes the first, middle and last MiB (all of a small file), so a file that was
    copied or touched still matches, and an appended, truncated or replaced one does
    not. An edit inside an unsampled region of a large file is not detected.

    Raises:
        InputFileError: The file cannot be read.
    """
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            digest = hashlib.blake2b(str(size).encode(), digest_size=16)
            for pos in sorted({0, max(0, size // 2 - _SAMPLE // 2), max(0, size - _SAMPLE)}):
                f.seek(pos)
                digest.update(f.read(_SAMPLE))
    except OSError as exc:
        raise InputFileError(path, f"cannot read: {exc.strerror or exc}") from None
    return digest.hexdigest()


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class JobIdentity:
    """What makes two runs the same job: a resume must match every field.

    Build it with :meth:`of`, which resolves paths and fingerprints the input.

    Attributes:
        input_path: The corpus file, absolute.
        input_size: Its size in bytes.
        input_fingerprint: :func:`fingerprint` of it.
        model: The embedding model.
        dimensions: The requested dimensions, or ``None`` for the model's default.
        output_path: The output file, absolute.
        rows: The number of records in the input.
        field: The text field/column, or ``None`` (a .txt file or the default).
        id_field: The id field/column, or ``None``.
        endpoint: Where the vectors come from (an API root, ``"local"``), or ``None``:
            vectors of one model from two endpoints must not mix in one output.
    """

    input_path: str
    input_size: int
    input_fingerprint: str
    model: str
    dimensions: int | None
    output_path: str
    rows: int
    field: str | None = None
    id_field: str | None = None
    endpoint: str | None = None

    @classmethod
    def of(
        cls,
        input_path: str | os.PathLike[str],
        output_path: str | os.PathLike[str],
        *,
        model: str,
        dimensions: int | None,
        rows: int,
        field: str | None = None,
        id_field: str | None = None,
        endpoint: str | None = None,
    ) -> JobIdentity:
        """Describe a job, reading the input file's size and fingerprint.

        Raises:
            InputFileError: The input cannot be read.
        """
        inp = Path(input_path).resolve()
        digest = fingerprint(inp)  # raises InputFileError for a missing file
        return cls(
            input_path=str(inp),
            input_size=inp.stat().st_size,
            input_fingerprint=digest,
            model=model,
            dimensions=dimensions,
            output_path=str(Path(output_path).resolve()),
            rows=rows,
            field=field,
            id_field=id_field,
            endpoint=endpoint,
        )


def _connect(
    path: str | os.PathLike[str], error: type[AsyncEmbedError], schema: str
) -> sqlite3.Connection:
    """Open (creating) a WAL-mode SQLite database with ``schema``, checking its version."""
    p = Path(path)
    if not p.parent.is_dir():
        raise error(f"{p}: folder {str(p.parent)!r} does not exist")
    try:
        conn = sqlite3.connect(p, check_same_thread=False, timeout=30.0)
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, _SCHEMA_VERSION):
                raise error(f"{p}: unknown schema version {version}")
            conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL may lose the last commit on power loss, never corrupt: the state is
            # then behind the output, which resume handles; it is never ahead of it.
            conn.execute("PRAGMA synchronous=NORMAL")
            with conn:
                conn.executescript(schema + f"PRAGMA user_version = {_SCHEMA_VERSION};")
        except BaseException:
            conn.close()
            raise
    except sqlite3.DatabaseError as exc:
        raise error(f"{p}: not an asyncembed database ({exc})") from None
    return conn


_JOB_SCHEMA = """
CREATE TABLE IF NOT EXISTS job (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 0),
    identity TEXT NOT NULL,
    rows_done INTEGER NOT NULL DEFAULT 0,
    dim INTEGER,
    byte_offset INTEGER NOT NULL DEFAULT 0,
    finished INTEGER NOT NULL DEFAULT 0,
    updated_at REAL NOT NULL
);
"""


class JobState:
    """One bulk job's identity and durable progress, in an SQLite file.

    Args:
        path: The state file; created if missing (its folder must exist).

    Raises:
        StoreError: The folder is missing, or the file is not an asyncembed state file.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._owner = _exclusive(self.path)  # one run per job at a time
        try:
            self._conn = _connect(self.path, StoreError, _JOB_SCHEMA)
        except BaseException:
            self._owner.close()
            raise
        self._identity: JobIdentity | None = None

    def __repr__(self) -> str:
        return f"<JobState path={str(self.path)!r}>"

    def __enter__(self) -> JobState:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def begin(self, identity: JobIdentity) -> Checkpoint:
        """Start the job, or resume it if this file already records the same job.

        Returns:
            The last recorded checkpoint (``rows == 0`` for a new job).

        Raises:
            JobMismatchError: The file records a different job; the message lists the
                fields that differ.
        """
        encoded = msgspec.json.encode(dataclasses.asdict(identity)).decode()
        with self._lock, self._conn:
            row = self._conn.execute("SELECT identity FROM job").fetchone()
            if row is None:
                self._conn.execute(
                    "INSERT INTO job (singleton, identity, updated_at) VALUES (0, ?, ?)",
                    (encoded, time.time()),
                )
            else:
                recorded: dict[str, Any] = msgspec.json.decode(row[0])
                mine = dataclasses.asdict(identity)
                diffs = [
                    f"{name} {recorded.get(name)!r} != {value!r}"
                    for name, value in mine.items()
                    if recorded.get(name) != value
                ]
                if diffs:
                    msg = f"{self.path} records a different job ({'; '.join(diffs)})"
                    raise JobMismatchError(msg + ": use a new state file or the same options")
        self._identity = identity
        return self.checkpoint

    @property
    def checkpoint(self) -> Checkpoint:
        """The last recorded checkpoint (``rows == 0`` before any commit)."""
        with self._lock:
            row = self._conn.execute("SELECT rows_done, dim, byte_offset FROM job").fetchone()
        return Checkpoint() if row is None else Checkpoint(rows=row[0], dim=row[1], offset=row[2])

    @property
    def finished(self) -> bool:
        """Whether :meth:`mark_finished` was recorded."""
        with self._lock:
            row = self._conn.execute("SELECT finished FROM job").fetchone()
        return bool(row and row[0])

    def commit(self, checkpoint: Checkpoint) -> None:
        """Record a checkpoint that ``Writer.flush()`` returned (call it after the flush).

        Raises:
            StoreError: :meth:`begin` was not called, or the checkpoint goes backwards
                or changes the dimension.
        """
        current = self._started_checkpoint()
        if checkpoint.rows < current.rows:
            raise StoreError(f"checkpoint goes back from {current.rows} to {checkpoint.rows}")
        if current.dim is not None and checkpoint.dim != current.dim:
            raise StoreError(f"checkpoint dim {checkpoint.dim} != recorded {current.dim}")
        with self._lock, self._conn:
            self._conn.execute(
                "UPDATE job SET rows_done = ?, dim = ?, byte_offset = ?, updated_at = ?",
                (checkpoint.rows, checkpoint.dim, checkpoint.offset, time.time()),
            )

    def mark_finished(self) -> None:
        """Record that ``Writer.finish()`` completed the output.

        Raises:
            StoreError: :meth:`begin` was not called, or not every row is recorded.
        """
        current = self._started_checkpoint()
        assert self._identity is not None
        if current.rows != self._identity.rows:
            raise StoreError(f"only {current.rows} of {self._identity.rows} rows recorded")
        with self._lock, self._conn:
            self._conn.execute("UPDATE job SET finished = 1, updated_at = ?", (time.time(),))

    def close(self) -> None:
        """Close the database connection and let another run take the job; idempotent."""
        with self._lock:
            self._conn.close()
            self._owner.close()

    def _started_checkpoint(self) -> Checkpoint:
        if self._identity is None:
            raise StoreError("call begin() before recording progress")
        return self.checkpoint


_CACHE_SCHEMA = """
CREATE TABLE IF NOT EXISTS vectors (
    key BLOB PRIMARY KEY,
    vector BLOB NOT NULL
) WITHOUT ROWID;
"""


class Cache:
    """A content-addressed SQLite cache of embeddings, shared by every job that opens it.

    The key is a 16-byte BLAKE2b hash of ``(model, dimensions, text)``, so the same text
    under another model or another dimension count is a different entry. Values are the
    float32 vectors' little-endian bytes.

    Args:
        path: The cache file; created if missing (its folder must exist).

    Raises:
        StoreError: The folder is missing, or the file is not an asyncembed cache.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._conn = _connect(self.path, StoreError, _CACHE_SCHEMA)
        self.hits = 0
        """Texts found by :meth:`get_many` since this object was opened."""
        self.misses = 0
        """Texts not found by :meth:`get_many` since this object was opened."""

    def __repr__(self) -> str:
        return f"<Cache path={str(self.path)!r} hits={self.hits} misses={self.misses}>"

    def __enter__(self) -> Cache:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __len__(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT count(*) FROM vectors").fetchone()[0])

    @staticmethod
    def key(model: str, dimensions: int | None, text: str) -> bytes:
        """Return the cache key of one text: 16 bytes of BLAKE2b, unambiguously framed."""
        name = model.encode()
        digest = hashlib.blake2b(digest_size=16, person=b"asyncembed-v1")
        digest.update(len(name).to_bytes(4, "little") + name)
        digest.update((-1 if dimensions is None else dimensions).to_bytes(8, "little", signed=True))
        digest.update(text.encode("utf-8", "surrogatepass"))
        return digest.digest()

    def get_many(
        self, model: str, dimensions: int | None, texts: Sequence[str]
    ) -> list[npt.NDArray[np.float32] | None]:
        """Look texts up in one read; counts hits and misses.

        Returns:
            For each text, in order, its cached vector (a read-only float32 array), or
            ``None``.
        """
        keys = [self.key(model, dimensions, t) for t in texts]
        found: dict[bytes, bytes] = {}
        with self._lock:
            for i in range(0, len(keys), _MAX_PARAMS):
                chunk = list(set(keys[i : i + _MAX_PARAMS]))
                marks = ",".join("?" * len(chunk))
                sql = f"SELECT key, vector FROM vectors WHERE key IN ({marks})"
                found.update(self._conn.execute(sql, chunk).fetchall())
        out: list[npt.NDArray[np.float32] | None] = [
            np.frombuffer(found[k], dtype="<f4") if k in found else None for k in keys
        ]
        hits = sum(v is not None for v in out)
        self.hits += hits
        self.misses += len(out) - hits
        return out

    def put_many(
        self, model: str, dimensions: int | None, texts: Sequence[str], vectors: npt.ArrayLike
    ) -> None:
        """Store one vector per text, in one transaction (a later put replaces an entry).

        Args:
            model: The model that made the vectors.
            dimensions: The dimensions requested, or ``None`` for the model's default.
            texts: The texts embedded.
            vectors: A ``(len(texts), d)`` array (converted to float32).

        Raises:
            ValueError: ``vectors`` does not have one row per text.
        """
        arr = np.ascontiguousarray(vectors, dtype="<f4")
        if arr.ndim != 2 or len(arr) != len(texts):
            raise ValueError(f"expected {len(texts)} vectors of shape (d,), got {arr.shape}")
        rows = [
            (self.key(model, dimensions, t), v.tobytes()) for t, v in zip(texts, arr, strict=True)
        ]
        with self._lock, self._conn:
            self._conn.executemany(
                "INSERT OR REPLACE INTO vectors (key, vector) VALUES (?, ?)", rows
            )

    def close(self) -> None:
        """Close the database connection; idempotent."""
        with self._lock:
            self._conn.close()


def _exclusive(path: Path) -> IO[bytes]:
    """Hold an exclusive lock on ``<path>.lock`` until the returned file is closed.

    Two runs of one job would pay for every text twice and overwrite each other's
    output. The lock dies with the process, so a crash never leaves the job locked.

    Raises:
        StoreError: another run holds the job, or the lock file cannot be made.
    """
    if not path.parent.is_dir():
        raise StoreError(f"{path}: folder {str(path.parent)!r} does not exist")
    try:
        lock = open(path.with_name(path.name + ".lock"), "ab")  # held open: the lock
    except OSError as exc:
        raise StoreError(f"{path}: cannot create its lock file: {exc.strerror}") from None
    try:
        import fcntl
    except ImportError:  # not on POSIX: no advisory locks, carry on unlocked
        return lock
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        raise StoreError(f"{path} is in use by another run of this job") from None
    return lock
