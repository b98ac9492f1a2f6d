"""Which reader reads an input and which writer writes an output: the suffix decides."""

from __future__ import annotations

import os
from pathlib import Path

from .._exceptions import InputFileError, OutputFileError
from ._files import Checkpoint, import_pyarrow
from ._parquet import ParquetReader, ParquetWriter
from ._readers import CsvReader, FieldReader, JsonlReader, Reader, TxtReader
from ._writers import JsonlWriter, NpyWriter, Writer

__all__ = ["check_job_paths", "check_output", "open_reader", "open_writer"]

_READERS: dict[str, type[FieldReader]] = {
    ".jsonl": JsonlReader,
    ".ndjson": JsonlReader,
    ".csv": CsvReader,
    ".parquet": ParquetReader,
}


def open_reader(
    path: str | os.PathLike[str], *, field: str | None = None, id_field: str | None = None
) -> Reader:
    """Open a corpus file with the reader its suffix names.

    Args:
        path: A ``.txt``, ``.jsonl`` (or ``.ndjson``), ``.csv`` or ``.parquet`` file.
        field: The JSON field or column holding the text; ``None`` means ``"text"``.
            Not allowed for ``.txt``.
        id_field: The JSON field or column holding each record's id; ``None`` means
            0-based line/row numbers. Not allowed for ``.txt``.

    Returns:
        A :class:`Reader`, not yet reading: iterate it or call ``records(start)``.

    Raises:
        InputFileError: Unknown suffix, missing file, options that do not apply to the
            format, or (CSV, Parquet) a named column that does not exist.
        MissingExtraError: A ``.parquet`` file without pyarrow installed.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".txt":
        if field is not None or id_field is not None:
            raise InputFileError(
                p, "a field or id field does not apply to .txt (one text per line)"
            )
        return TxtReader(p)
    cls = _READERS.get(suffix)
    if cls is None:
        known = ".txt, " + ", ".join(_READERS)
        raise InputFileError(
            p, f"unknown input format {suffix or '(no suffix)'!r} (expected {known})"
        )
    return cls(p, field="text" if field is None else field, id_field=id_field)


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


def check_job_paths(
    output: Path,
    *,
    input: Path,
    state: Path | None,
    id_field: str | None,
    overwrite: bool,
) -> type[Writer]:
    """Check a job's output before any work (see :func:`check_output`); its writer class.

    Args:
        output: The final output.
        input: The corpus file.
        state: The job state file, or ``None``.
        id_field: The field or column holding ids, or ``None``.
        overwrite: Whether an existing output may be replaced.

    Raises:
        OutputFileError: What :func:`check_output` refuses; files that overlap (which
            would destroy the input or the output); an id field for an output that
            keeps no ids; an existing output, unless ``overwrite`` or ``state`` exists
            (the job is being resumed: the state file then says whether it is this job).
        MissingExtraError: ``.parquet`` without pyarrow installed.
    """
    cls = check_output(output)
    resolved = output.resolve()
    files = {"input": input.resolve(), "output": resolved, **cls.temporary_paths(resolved)}
    if state is not None:
        base = state.resolve()
        for suffix in ("", "-wal", "-shm"):
            files[f"state{suffix}"] = base.with_name(base.name + suffix)
    seen: dict[Path, str] = {}
    for role, path in files.items():
        if path in seen:
            raise OutputFileError(
                output, f"the {role} and the {seen[path]} are the same file: {path}"
            )
        seen[path] = role
    if id_field is not None and not cls.keeps_ids:
        raise OutputFileError(
            output,
            f"a {output.suffix} output keeps vectors only, not the ids of {id_field!r}: "
            "write .jsonl or .parquet to keep them, or name no id field",
        )
    if output.exists() and not (overwrite or (state is not None and state.exists())):
        raise OutputFileError(output, "exists already (pass overwrite=True to replace it)")
    return cls


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
