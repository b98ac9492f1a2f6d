"""The resumable ``.parquet`` writer: committed part files, assembled at ``finish()``.

A Parquet file cannot be appended to after a crash (its footer is written last), so
rows go to part files in the folder ``<out>.parts/``, each named by the rows it holds
(``part-<start>-<end>.parquet``) and made durable by write-to-temp, fsync and rename.
A part is written when the buffer reaches :attr:`ParquetWriter.part_rows` rows and at
every ``flush()``; ``finish()`` streams the parts, in order, into one file.

Why resume gives a byte-identical file: a resume keeps exactly the parts that end at or
before the checkpoint (a part written after the last recorded checkpoint is deleted),
and the assembly re-cuts the rows into row groups of a fixed size that depends only on
``dim``, so where the parts happened to be cut (which depends on when ``flush()`` was
called, and on the crash) never shows in the output.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .._exceptions import InputFileError, OutputFileError
from ._files import Checkpoint, RecordId, fsync_dir, import_pyarrow
from ._readers import FieldReader, Record
from ._writers import Writer

__all__ = ["ParquetReader", "ParquetWriter"]

_INT64 = range(-(2**63), 2**63)
_PART = re.compile(r"part-(\d{15})-(\d{15})\.parquet")


class ParquetReader(FieldReader):
    """A Parquet file read in record batches; the text is in string column ``field``.

    Needs pyarrow (the ``parquet`` extra). Ids come from ``id_field`` (an integer or string
    column) or are 0-based row numbers. Errors name the 1-based record number.

    Args:
        path: The input file.
        field: The name of the string column holding the text.
        id_field: The column holding each record's id, or ``None`` for row numbers.
        batch_size: Rows decoded at a time (bounds memory).

    Raises:
        MissingExtraError: pyarrow is not installed.
        InputFileError: Not a Parquet file, or a named column is missing or of a wrong type.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        field: str = "text",
        id_field: str | None = None,
        batch_size: int = 4096,
    ) -> None:
        pa, pq = import_pyarrow()
        super().__init__(path, field=field, id_field=id_field)
        self._batch_size = batch_size
        try:
            self._file = pq.ParquetFile(self.path)
        except (pa.ArrowException, OSError) as exc:
            raise InputFileError(self.path, f"not a readable Parquet file: {exc}") from None
        schema = self._file.schema_arrow
        self._check_column(schema, field, (pa.types.is_string, pa.types.is_large_string))
        if id_field is not None:
            kinds = (pa.types.is_integer, pa.types.is_string, pa.types.is_large_string)
            self._check_column(schema, id_field, kinds)

    def _check_column(self, schema: Any, name: str, kinds: tuple[Any, ...]) -> None:
        if name not in schema.names:
            listed = ", ".join(repr(c) for c in schema.names)
            raise InputFileError(self.path, f"no column {name!r} (columns: {listed})")
        kind = schema.field(name).type
        if not any(ok(kind) for ok in kinds):
            raise InputFileError(self.path, f"column {name!r} has unsupported type {kind}")

    def count(self) -> int:
        return int(self._file.metadata.num_rows)

    def records(self, start: int = 0) -> Iterator[Record]:
        meta = self._file.metadata
        first, skip = 0, start  # whole row groups before `start` are never decoded
        while first < meta.num_row_groups and skip >= meta.row_group(first).num_rows:
            skip -= meta.row_group(first).num_rows
            first += 1
        if first == meta.num_row_groups:
            return
        columns = [self.field] if self.id_field is None else [self.field, self.id_field]
        batches = self._file.iter_batches(
            batch_size=self._batch_size,
            row_groups=range(first, meta.num_row_groups),
            columns=columns,
        )
        index = start - skip
        for batch in batches:
            texts = batch.column(self.field).to_pylist()
            ids = texts if self.id_field is None else batch.column(self.id_field).to_pylist()
            for k, (text, record_id) in enumerate(zip(texts, ids, strict=True)):
                if skip:
                    skip -= 1
                    continue
                row = index + k
                if text is None:
                    raise InputFileError(self.path, "null text", line=row + 1, unit="record")
                self._check_text(text, row + 1, unit="record")
                if self.id_field is None:
                    yield row, text
                elif record_id is None:
                    msg = f"null id in {self.id_field!r}"
                    raise InputFileError(self.path, msg, line=row + 1, unit="record")
                else:
                    yield record_id, text
            index += len(texts)


class ParquetWriter(Writer):
    """Columns ``id`` (int64 or string) and ``vector`` (``fixed_size_list<float32>[dim]``).

    Needs pyarrow (the ``parquet`` extra). Ids must be all integers or all strings. The
    checkpoint's ``offset`` is the number of committed part files.

    Attributes:
        part_rows: Rows buffered in memory before a part file is written.
        part_bytes: Vector bytes buffered before a part file is written, whichever of
            the two comes first (keeps memory bounded at high dimensions).
        row_group_bytes: The target size of the final file's row groups; their row count
            is ``row_group_bytes // (4 * dim + 8)`` (at least 1, at most 2**20).
    """

    part_rows = 65_536
    part_bytes = 32 << 20
    row_group_bytes = 64 << 20

    @classmethod
    def temporary_paths(cls, path: Path) -> dict[str, Path]:
        """The assembled ``.partial`` file and the ``.parts`` folder of committed parts."""
        return {
            **super().temporary_paths(path),
            "output parts": path.with_name(path.name + ".parts"),
        }

    @classmethod
    def id_checker(cls) -> Callable[[RecordId], None]:
        """Ids must all be int64 or all be str: one Parquet column type."""
        kinds: list[type] = []

        def check(value: RecordId) -> None:
            this = type(value)
            if this not in (int, str) or (this is int and value not in _INT64):
                raise ValueError(f"id {value!r} cannot be a Parquet int64/str")
            if kinds and this is not kinds[0]:
                raise ValueError(
                    f"ids mix {kinds[0].__name__} and {this.__name__} (Parquet needs one)"
                )
            kinds[:] = [this]

        return check

    def __init__(
        self, path: Path, *, rows: int, dim: int | None, resume: Checkpoint | None
    ) -> None:
        self._pa, self._pq = import_pyarrow()
        self.parts = self.temporary_paths(path)["output parts"]
        self._buffer: list[tuple[npt.NDArray[np.float32], list[RecordId]]] = []
        self._buffered = 0
        self._committed: list[Path] = []
        self._id_type: Any = None
        super().__init__(path, rows=rows, dim=dim, resume=resume)

    # -- parts ---------------------------------------------------------------------------

    def _part_files(self) -> list[tuple[int, int, Path]]:
        found = []
        for entry in self.parts.iterdir():
            m = _PART.fullmatch(entry.name)
            if m:
                found.append((int(m[1]), int(m[2]), entry))
            elif entry.name.endswith(".tmp"):
                entry.unlink()  # a part whose write was interrupted
        return sorted(found)

    def _write_part(self, end: int) -> None:
        """Commit the buffered rows, which end at row ``end``, as one part file."""
        if not self._buffered:
            return
        start = end - self._buffered
        ids = [i for _, chunk in self._buffer for i in chunk]
        block = np.concatenate([b for b, _ in self._buffer])
        table = self._table(block, ids)
        final = self.parts / f"part-{start:015d}-{end:015d}.parquet"
        tmp = final.with_name(final.name + ".tmp")
        self._pq.write_table(table, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
        fsync_dir(self.parts)
        self._committed.append(final)
        self._buffer.clear()
        self._buffered = 0

    def _table(self, block: npt.NDArray[np.float32], ids: list[RecordId]) -> Any:
        pa = self._pa
        if self._id_type is None:
            self._id_type = pa.string() if ids and isinstance(ids[0], str) else pa.int64()
        want = str if self._id_type == pa.string() else int
        if not all(type(i) is want for i in ids):  # bool, numpy ints and mixes are refused
            kind = "strings" if want is str else "integers"
            raise ValueError(f"{self.path}: Parquet ids must all be {kind}, like the first id")
        vectors = pa.FixedSizeListArray.from_arrays(pa.array(block.reshape(-1)), self.dim)
        return pa.Table.from_arrays([pa.array(ids, self._id_type), vectors], schema=self._schema())

    def _schema(self) -> Any:
        pa = self._pa
        return pa.schema(
            [
                pa.field("id", self._id_type or pa.int64(), nullable=False),
                pa.field("vector", pa.list_(pa.float32(), self.dim), nullable=False),
            ]
        )

    # -- Writer hooks --------------------------------------------------------------------

    def _is_done(self, checkpoint: Checkpoint) -> bool:
        return not self.parts.exists() and self.path.is_file()

    def _create(self) -> None:
        if self.parts.exists():  # a previous run's leftovers: this one starts over
            shutil.rmtree(self.parts)
        self.parts.mkdir()

    def _reopen(self, checkpoint: Checkpoint) -> None:
        if not self.parts.is_dir():
            raise OutputFileError(self.path, f"cannot resume: {self.parts.name}/ is missing")
        expected = 0
        for start, end, part in self._part_files():
            if end > checkpoint.rows:
                part.unlink()  # written after the last recorded checkpoint
                continue
            if start != expected:
                break
            self._committed.append(part)
            expected = end
        if expected != checkpoint.rows or len(self._committed) != checkpoint.offset:
            msg = f"cannot resume: {self.parts.name}/ does not hold rows 0..{checkpoint.rows}"
            raise OutputFileError(self.path, msg)
        if self._committed:
            self._id_type = self._pq.read_schema(self._committed[0]).field("id").type

    def _write(self, start: int, block: npt.NDArray[np.float32], ids: Sequence[RecordId]) -> None:
        self._buffer.append((block.copy(), list(ids)))
        self._buffered += len(block)
        row_bytes = 4 * block.shape[1]
        if self._buffered >= self.part_rows or self._buffered * row_bytes >= self.part_bytes:
            self._write_part(start + len(block))

    def _flush(self) -> int:
        self._write_part(self._written)
        return len(self._committed)

    def _finish(self) -> None:
        self._write_part(self._written)
        assert self.dim is not None
        group = max(1, min(1 << 20, self.row_group_bytes // (4 * self.dim + 8)))
        with self._pq.ParquetWriter(self.partial, self._schema()) as out:
            for table in self._regroup(group):
                out.write_table(table, row_group_size=group)
        with open(self.partial, "rb") as f:
            os.fsync(f.fileno())
        os.replace(self.partial, self.path)
        # Renamed first (atomic), deleted after: a crash while deleting leaves no
        # half-deleted parts folder that would make the finished job look unfinished.
        trash = self.parts.with_name(self.parts.name + ".trash")
        shutil.rmtree(trash, ignore_errors=True)
        os.replace(self.parts, trash)
        shutil.rmtree(trash)

    def _regroup(self, group: int) -> Iterator[Any]:
        """Yield the committed rows as tables of exactly ``group`` rows (the last: fewer)."""
        pa = self._pa
        pending: list[Any] = []
        count = 0
        for part in self._committed:
            for batch in self._pq.ParquetFile(part).iter_batches(batch_size=group):
                pending.append(batch)
                count += batch.num_rows
                while count >= group:
                    table = pa.Table.from_batches(pending).combine_chunks()
                    yield table.slice(0, group)
                    rest = table.slice(group)
                    pending, count = rest.to_batches(), rest.num_rows
        if count:
            yield pa.Table.from_batches(pending, schema=self._schema()).combine_chunks()

    def _discard(self) -> None:
        super()._discard()
        shutil.rmtree(self.parts, ignore_errors=True)
