"""What the bulk job's readers, writers and state share.

The :class:`Checkpoint` a writer hands to the job state, the record id type, the lazy
import of the optional pyarrow dependency and a durable-rename helper live here, so that
the readers, the writers and the state depend on this module and not on each other.
The errors of bulk I/O are in :mod:`asyncembed._exceptions` with all the others.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from types import ModuleType
from typing import TypeAlias

from .._exceptions import MissingExtraError

__all__ = ["Checkpoint", "RecordId", "fsync_dir", "import_pyarrow"]

RecordId: TypeAlias = int | str
"""A record's id: its 0-based position, or the value of the id field/column."""


@dataclasses.dataclass(frozen=True, slots=True)
class Checkpoint:
    """How far an output is durably written: what the job state records after a flush.

    Returned by ``Writer.flush()``, stored by ``JobState.commit()`` and handed back to
    ``open_writer(..., resume=...)`` after a crash.

    Attributes:
        rows: Rows ``[0, rows)`` are durably written (a contiguous high-water mark).
        dim: The vector dimension, or ``None`` while no row has been written.
        offset: Writer-specific position: the byte size of a ``.jsonl`` output, the
            number of committed part files of a ``.parquet`` output, 0 for ``.npy``.
    """

    rows: int = 0
    dim: int | None = None
    offset: int = 0

    def __post_init__(self) -> None:
        if self.rows < 0 or self.offset < 0:
            raise ValueError(f"rows and offset must be >= 0, got {self.rows}, {self.offset}")
        if self.dim is not None and self.dim < 1:
            raise ValueError(f"dim must be >= 1, got {self.dim}")


def import_pyarrow() -> tuple[ModuleType, ModuleType]:
    """Import pyarrow and pyarrow.parquet on first use.

    Returns:
        The modules ``(pyarrow, pyarrow.parquet)``.

    Raises:
        MissingExtraError: pyarrow is not installed.
    """
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise MissingExtraError(
            "Parquet files need pyarrow: pip install 'asyncembed[parquet]'"
        ) from exc
    return pa, pq


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in folder ``path`` durable (a no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open a folder
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
