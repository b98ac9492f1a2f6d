"""What the corpus readers, the output writers and the job state share.

The errors of bulk I/O, the :class:`Checkpoint` a writer hands to the job state, and
the lazy import of the optional pyarrow dependency live here, so that
:mod:`asyncembed._readers`, :mod:`asyncembed._writers` and :mod:`asyncembed._store`
depend on this module and not on each other.

Error tree (all also :class:`ValueError`, except the missing extra)::

    AsyncEmbedError
    ├── InputFileError       the corpus file is missing, unreadable or malformed
    ├── OutputFileError      the output cannot be written where asked, or cannot be resumed
    ├── StoreError           a state or cache file is unusable (asyncembed._store)
    │   └── JobMismatchError a state file records a different job
    └── MissingExtraError    pyarrow is needed but not installed (also an ImportError)
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from types import ModuleType
from typing import TypeAlias

from ._exceptions import AsyncEmbedError

__all__ = [
    "Checkpoint",
    "InputFileError",
    "MissingExtraError",
    "OutputFileError",
    "RecordId",
    "fsync_dir",
    "import_pyarrow",
]

RecordId: TypeAlias = int | str
"""A record's id: its 0-based position, or the value of the id field/column."""


class InputFileError(AsyncEmbedError, ValueError):
    """The input corpus cannot be read: missing, undecodable, malformed or with an empty text.

    The message is one line naming the file and, when known, the 1-based line or record
    number, e.g. ``corpus.txt: line 3: empty text``.

    Attributes:
        path: The input file.
        line: The 1-based line (text, JSONL, CSV) or record (Parquet) number, or ``None``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        message: str,
        *,
        line: int | None = None,
        unit: str = "line",
    ) -> None:
        self.path = Path(path)
        self.line = line
        where = f"{self.path}: " if line is None else f"{self.path}: {unit} {line}: "
        super().__init__(where + message)


class OutputFileError(AsyncEmbedError, ValueError):
    """The output cannot be written where asked (missing folder, unknown suffix...) or resumed.

    Attributes:
        path: The output path the user asked for.
    """

    def __init__(self, path: str | os.PathLike[str], message: str) -> None:
        self.path = Path(path)
        super().__init__(f"{self.path}: {message}")


class JobIOError(AsyncEmbedError, OSError):
    """Writing the output or recording progress failed (a full disk, an I/O error).

    What was recorded stays consistent (the output is flushed before its rows are
    recorded), so the same command resumes once the cause is fixed.

    Attributes:
        path: The file that could not be written.
    """

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = Path(path)
        super().__init__(
            f"{self.path}: cannot write ({reason}); fix that (free some space?), then run "
            "the same command again to resume"
        )


class MissingExtraError(AsyncEmbedError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


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
