"""Which writer writes which output: the suffix decides, and the path is checked first."""

from __future__ import annotations

import os
from pathlib import Path

from .._exceptions import OutputFileError
from ._files import Checkpoint, import_pyarrow
from ._parquet import ParquetWriter
from ._writers import JsonlWriter, NpyWriter, Writer

__all__ = ["check_output", "open_writer"]

_WRITERS: dict[str, type[Writer]] = {
    ".npy": NpyWriter,
    ".jsonl": JsonlWriter,
    ".ndjson": JsonlWriter,
    ".parquet": ParquetWriter,
}


def open_writer(
    path: str | os.PathLike[str],
    *,
    rows: int,
    dim: int | None = None,
    resume: Checkpoint | None = None,
) -> Writer:
    """Open the writer for ``path``'s suffix, checking the path before any work is done.

    Args:
        path: The final output: ``.npy``, ``.jsonl`` (or ``.ndjson``) or ``.parquet``.
        rows: The number of rows the finished output will hold.
        dim: The vector dimension, or ``None`` to take it from the first block.
        resume: The job state's last checkpoint, or ``None`` for a fresh output (a
            leftover temporary output is then overwritten).

    Returns:
        An open :class:`Writer`.

    Raises:
        OutputFileError: Unknown suffix, a missing or unwritable folder, a path that is a
            folder, or a checkpoint the unfinished output does not match.
        MissingExtraError: ``.parquet`` without pyarrow installed.
        ValueError: ``rows`` or ``dim`` out of range.
    """
    p = Path(path)
    cls = check_output(p)
    if rows < 0 or (dim is not None and dim < 1):
        raise ValueError(f"rows must be >= 0 and dim >= 1, got rows={rows}, dim={dim}")
    return cls(p, rows=rows, dim=dim, resume=resume)


def check_output(path: str | os.PathLike[str]) -> type[Writer]:
    """Check that ``path`` can be written as an output, before any work; its writer class.

    Raises:
        OutputFileError: Unknown suffix, a missing or unwritable folder, a path that is a
            folder, or a temporary name the file system refuses (too long...).
        MissingExtraError: ``.parquet`` without pyarrow installed.
    """
    p = Path(path)
    cls = _WRITERS.get(p.suffix.lower())
    if cls is None:
        known = ", ".join(_WRITERS)
        raise OutputFileError(p, f"unknown output format {p.suffix or '(no suffix)'!r} ({known})")
    parent = p.parent
    if not parent.is_dir():
        raise OutputFileError(p, f"output folder {str(parent)!r} does not exist")
    if p.is_dir():
        raise OutputFileError(p, "is a folder")
    if not os.access(parent, os.W_OK):
        raise OutputFileError(p, f"output folder {str(parent)!r} is not writable")
    if cls is ParquetWriter:
        import_pyarrow()
    probe = p.with_name(p.name + ".partial")
    try:  # the file system's own limits (name length...), checked now
        if not probe.exists():
            probe.touch(exist_ok=False)
            probe.unlink()
    except OSError as exc:
        raise OutputFileError(p, f"cannot create {probe.name}: {exc.strerror}") from None
    return cls
