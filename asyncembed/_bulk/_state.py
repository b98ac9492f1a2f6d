"""A bulk job's resumable state, in SQLite.

Blocking, and safe to call from worker threads (``anyio.to_thread.run_sync``): it owns
one connection opened with ``check_same_thread=False`` (see :func:`asyncembed._cache.connect`)
and serializes its use with a lock.

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
import threading
import time
from pathlib import Path
from typing import IO, Any

import msgspec

from .._cache import connect
from .._exceptions import InputFileError, JobMismatchError, StoreError
from ._files import Checkpoint

__all__ = ["JobIdentity", "JobState", "fingerprint", "exclusive_lock"]

_SAMPLE = 1 << 20  # bytes hashed at each of three places in the input file


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
        truncate_at: The estimated token count over-long texts are cut to, or ``None``
            when they are refused: two runs cutting differently must not mix.
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
    # None when not truncating, so state files written before this field still match.
    truncate_at: int | None = None

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
        truncate_at: int | None = None,
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
            truncate_at=truncate_at,
        )


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
        self._owner = exclusive_lock(self.path)  # one run per job at a time
        try:
            self._conn = connect(self.path, StoreError, _JOB_SCHEMA)
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

        A recorded job without a single row saved (a first run that failed at once, say
        on a wrong option) is replaced: there is nothing of it to keep.

        Returns:
            The last recorded checkpoint (``rows == 0`` for a new job).

        Raises:
            JobMismatchError: The file records a different job with progress; the
                message lists the fields that differ.
        """
        encoded = msgspec.json.encode(dataclasses.asdict(identity)).decode()
        with self._lock, self._conn:
            row = self._conn.execute("SELECT identity, rows_done, finished FROM job").fetchone()
            if row is None:
                self._conn.execute(
                    "INSERT INTO job (singleton, identity, updated_at) VALUES (0, ?, ?)",
                    (encoded, time.time()),
                )
            elif row[1] == 0 and not row[2]:
                self._conn.execute(
                    "UPDATE job SET identity = ?, dim = NULL, byte_offset = 0, updated_at = ?",
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


def exclusive_lock(path: Path) -> IO[bytes]:
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
