"""Output writers: vectors to .npy, .jsonl and .parquet, incrementally and resumably.

A writer receives blocks of rows in order, ``write(start, block, ids)`` with ``start``
equal to the rows written so far, and keeps everything under a temporary name until
``finish()`` renames it into place: a crashed or failed run never leaves a file that
looks complete. ``flush()`` makes the rows written so far durable and returns the
:class:`~asyncembed._bulk._files.Checkpoint` that the job state records; after a crash,
``open_writer(..., resume=checkpoint)`` drops whatever was written past it, and the
finished file is byte-identical to the one an uninterrupted run writes.

The temporary names are ``<out>.partial`` (``.npy``, ``.jsonl``, and the ``.parquet``
file being assembled) and the folder ``<out>.parts/`` (``.parquet`` parts).

The vector dimension may be unknown until the first response: open the writer with
``dim=None`` and it creates its files at the first ``write()``, taking the dimension
from that block. The output path is still checked when the writer is opened, before
any work is paid for.

Usage::

    writer = open_writer("out.npy", rows=reader.count(), dim=None, resume=state.checkpoint)
    writer.write(start, block, ids)     # in order, start == writer.written
    state.commit(writer.flush())        # flush first, then record (see _store)
    writer.finish()                     # all rows written: rename into place
"""

from __future__ import annotations

import abc
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, ClassVar

import msgspec
import numpy as np
import numpy.typing as npt

from .._exceptions import OutputFileError
from ._files import Checkpoint, RecordId, fsync_dir

__all__ = ["JsonlWriter", "NpyWriter", "Writer"]


class Writer(abc.ABC):
    """Writes ``rows`` vectors of dimension ``dim`` to ``path``, in order, resumably.

    Use :func:`open_writer` rather than the subclasses. A writer is a context manager
    whose exit calls :meth:`close` (never :meth:`finish`).

    Attributes:
        path: The final output path.
        rows: The number of rows the finished output holds.
        dim: The vector dimension, or ``None`` until the first block is written.
        keeps_ids: Whether the output stores each row's id (``.npy`` does not).
    """

    keeps_ids: ClassVar[bool] = True

    @classmethod
    def temporary_paths(cls, path: Path) -> dict[str, Path]:
        """The files this writer keeps beside ``path`` until the output is finished.

        Returns:
            Each file's role (as an error message names it) and its path.
        """
        return {"unfinished output": path.with_name(path.name + ".partial")}

    @classmethod
    def id_checker(cls) -> Callable[[RecordId], None] | None:
        """A check of each record's id, run before any work is paid for; ``None``: any id.

        The returned function raises ``ValueError`` naming what is wrong with an id; it
        may remember the ids seen (e.g. that they are all of one type).
        """
        return None

    def __init__(
        self, path: Path, *, rows: int, dim: int | None, resume: Checkpoint | None
    ) -> None:
        self.path = path
        self.partial = self.temporary_paths(path)["unfinished output"]
        self.rows = rows
        self.dim = dim
        self._file: IO[bytes] | None = None
        self._written = 0
        self._finished = False
        self._closed = False
        if resume is not None and resume.rows > 0:
            if resume.rows > rows:
                raise OutputFileError(path, f"checkpoint has {resume.rows} rows, job has {rows}")
            if dim is not None and resume.dim != dim:
                raise OutputFileError(path, f"checkpoint dim {resume.dim} != {dim}")
            self.dim = resume.dim
            self._written = resume.rows
            if resume.rows == rows and self._is_done(resume):
                self._finished = True  # crashed after finish() renamed, before it was recorded
            else:
                self._opening(self._reopen, resume)
        elif dim is not None:
            self._opening(self._create)

    def __repr__(self) -> str:
        state = "finished" if self._finished else "closed" if self._closed else "open"
        return (
            f"<{type(self).__name__} path={str(self.path)!r} written={self._written}"
            f" rows={self.rows} dim={self.dim} {state}>"
        )

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def written(self) -> int:
        """Rows written so far (durable only up to the last :meth:`flush`)."""
        return self._written

    @property
    def finished(self) -> bool:
        """Whether the output is complete and in place under :attr:`path`."""
        return self._finished

    def write(
        self, start: int, block: npt.ArrayLike, ids: Sequence[RecordId] | None = None
    ) -> None:
        """Append rows ``[start, start + len(block))``.

        Args:
            start: The first row's index; must equal :attr:`written`.
            block: A ``(n, dim)`` array of vectors (converted to float32).
            ids: The rows' ids for ``.jsonl``/``.parquet`` (ignored by ``.npy``);
                ``None`` means the row indices.

        Raises:
            ValueError: Out of order, past ``rows``, a wrong shape, or ``ids`` of a wrong length.
            RuntimeError: The writer is finished or closed.
        """
        self._check_open()
        arr = np.ascontiguousarray(block, dtype="<f4")
        if start != self._written:
            raise ValueError(f"rows must be written in order: expected start {self._written}")
        if arr.ndim != 2 or (self.dim is not None and arr.shape[1] != self.dim):
            raise ValueError(f"block must have shape (n, {self.dim}), got {arr.shape}")
        if start + len(arr) > self.rows:
            raise ValueError(f"rows {start}..{start + len(arr)} exceed the job's {self.rows}")
        if ids is None:
            ids = range(start, start + len(arr))
        elif len(ids) != len(arr):
            raise ValueError(f"got {len(ids)} ids for {len(arr)} rows")
        if self.dim is None:
            if arr.shape[1] < 1:
                raise ValueError("vectors must have at least one dimension")
            self.dim = arr.shape[1]
            self._opening(self._create)
        if len(arr):
            self._write(start, arr, ids)
            self._written += len(arr)

    def flush(self) -> Checkpoint:
        """Make every row written so far durable (fsync).

        Returns:
            The checkpoint to record in the job state, only after this returns.
        """
        self._check_open()
        if self.dim is None:
            return Checkpoint()
        return Checkpoint(rows=self._written, dim=self.dim, offset=self._flush())

    def finish(self) -> None:
        """Complete the output and rename it to :attr:`path`; idempotent.

        Raises:
            OutputFileError: Fewer than ``rows`` rows were written, or none at all
                (the dimension is unknown).
        """
        if self._finished:
            return
        self._check_open()
        if self._written != self.rows:
            raise OutputFileError(self.path, f"only {self._written} of {self.rows} rows written")
        if self.dim is None:
            raise OutputFileError(self.path, "no vector was written, the dimension is unknown")
        self._finish()
        fsync_dir(self.path.parent)
        self._finished = self._closed = True

    def close(self) -> None:
        """Release open files; unfinished output stays under its temporary name for resume."""
        if not self._closed:
            self._closed = True
            self._close()

    def discard(self) -> None:
        """Close and delete the unfinished output (for a job that will not be resumed)."""
        self.close()
        if not self._finished:
            self._discard()

    def _opening(self, step: Callable[..., None], *args: object) -> None:
        """Run ``step``, closing any file it opened if it fails."""
        try:
            step(*args)
        except BaseException:
            self._close()
            raise

    def _check_open(self) -> None:
        if self._finished:
            raise RuntimeError("the writer is finished")
        if self._closed:
            raise RuntimeError("the writer is closed")

    def _missing_partial(self) -> OutputFileError:
        return OutputFileError(self.path, f"cannot resume: {self.partial.name} is missing")

    @abc.abstractmethod
    def _is_done(self, checkpoint: Checkpoint) -> bool:
        """Whether a complete checkpoint's output was already finished and renamed."""

    @abc.abstractmethod
    def _create(self) -> None:
        """Start a fresh output (``self.dim`` is known)."""

    @abc.abstractmethod
    def _reopen(self, checkpoint: Checkpoint) -> None:
        """Reopen the unfinished output and drop everything past ``checkpoint``."""

    @abc.abstractmethod
    def _write(self, start: int, block: npt.NDArray[np.float32], ids: Sequence[RecordId]) -> None:
        """Write a validated, non-empty block."""

    @abc.abstractmethod
    def _flush(self) -> int:
        """Make the written rows durable; return the checkpoint's ``offset``."""

    @abc.abstractmethod
    def _finish(self) -> None:
        """Flush, close, and move the complete output to ``self.path``."""

    def _close(self) -> None:
        """Close the open file, if any (subclasses with other resources extend this)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def _discard(self) -> None:
        """Delete the temporary output (subclasses with other files extend this)."""
        self.partial.unlink(missing_ok=True)


class NpyWriter(Writer):
    """A float32 ``(rows, dim)`` ``.npy`` file, preallocated and written in place.

    The file is laid out exactly as :func:`numpy.save` would write it (the header as
    :func:`numpy.lib.format.open_memmap` writes it, then a sparse preallocated body).
    Blocks are written with seek+write rather than through a memory map, so that the
    pages written never count in the process's resident memory.
    """

    keeps_ids = False
    _data_offset = 0

    def _is_done(self, checkpoint: Checkpoint) -> bool:
        return not self.partial.exists() and self.path.is_file()

    def _create(self) -> None:
        assert self.dim is not None
        header = {"descr": "<f4", "fortran_order": False, "shape": (self.rows, self.dim)}
        self._file = f = open(self.partial, "w+b")  # closed by close()/finish()
        np.lib.format.write_array_header_1_0(f, header)
        self._data_offset = f.tell()
        f.truncate(self._data_offset + 4 * self.rows * self.dim)

    def _reopen(self, checkpoint: Checkpoint) -> None:
        try:
            self._file = f = open(self.partial, "r+b")
        except FileNotFoundError:
            raise self._missing_partial() from None
        try:
            version = np.lib.format.read_magic(f)
            read = getattr(np.lib.format, f"read_array_header_{version[0]}_{version[1]}")
            shape, fortran, dtype = read(f)
        except ValueError as exc:
            raise OutputFileError(self.path, f"cannot resume: {self.partial.name}: {exc}") from None
        if shape != (self.rows, self.dim) or fortran or dtype != np.dtype("<f4"):
            msg = f"cannot resume: {self.partial.name} holds {shape} {dtype}"
            raise OutputFileError(self.path, f"{msg}, expected ({self.rows}, {self.dim}) float32")
        self._data_offset = f.tell()

    def _write(self, start: int, block: npt.NDArray[np.float32], ids: Sequence[RecordId]) -> None:
        assert self._file is not None and self.dim is not None
        self._file.seek(self._data_offset + 4 * start * self.dim)
        self._file.write(block.data.cast("B"))

    def _flush(self) -> int:
        assert self._file is not None
        self._file.flush()
        os.fsync(self._file.fileno())
        return 0

    def _finish(self) -> None:
        if self._file is None:  # rows == 0 and dim given after a resume: recreate
            self._create()
        self._flush()
        self._close()
        os.replace(self.partial, self.path)


class JsonlWriter(Writer):
    """One ``{"id": ..., "vector": [...]}`` JSON object per line, appended.

    Floats are the exact values of the float32 vectors (printed as the shortest float64
    repr, e.g. ``0.10000000149011612``), so reading them back as float32 is lossless.
    The checkpoint's ``offset`` is the file's byte size, to which a resume truncates.
    """

    _encoder = msgspec.json.Encoder()

    def _is_done(self, checkpoint: Checkpoint) -> bool:
        return not self.partial.exists() and self.path.is_file()

    def _create(self) -> None:
        self._file = open(self.partial, "wb")  # closed by close()/finish()

    def _reopen(self, checkpoint: Checkpoint) -> None:
        try:
            self._file = f = open(self.partial, "r+b")
        except FileNotFoundError:
            raise self._missing_partial() from None
        size = f.seek(0, os.SEEK_END)
        if size < checkpoint.offset:
            msg = (
                f"cannot resume: {self.partial.name} has {size} bytes, {checkpoint.offset} recorded"
            )
            raise OutputFileError(self.path, msg)
        f.truncate(checkpoint.offset)
        f.seek(checkpoint.offset)

    def _write(self, start: int, block: npt.NDArray[np.float32], ids: Sequence[RecordId]) -> None:
        assert self._file is not None
        rows = [{"id": i, "vector": v} for i, v in zip(ids, block.tolist(), strict=True)]
        self._file.write(self._encoder.encode_lines(rows))

    def _flush(self) -> int:
        assert self._file is not None
        self._file.flush()
        os.fsync(self._file.fileno())
        return self._file.tell()

    def _finish(self) -> None:
        if self._file is None:
            self._create()
        self._flush()
        self._close()
        os.replace(self.partial, self.path)
