"""Corpus readers: ``(id, text)`` records from .txt, .jsonl and .csv files (.parquet: ``_parquet``).

Every reader streams its file with bounded memory (one line, CSV row or Parquet record
batch at a time), can start at any record for a resumed job, and validates as it goes:
the first bad record raises :class:`~asyncembed.InputFileError` naming the file and
the 1-based line (or Parquet record) number.

Policy for empty texts: a text that is empty or only whitespace is an error, never
skipped. The API rejects empty inputs, and skipping would silently shift every later
row of the output away from its input line. In a ``.txt`` file this means an empty line
anywhere is an error; the newline that ends the last line is not an empty line.

Usage::

    reader = open_reader("corpus.jsonl", field="body", id_field="doc_id")
    n = reader.count()                      # cheap pre-pass: size a .npy output
    for record_id, text in reader.records(start=done):   # resume at record `done`
        ...
"""

from __future__ import annotations

import abc
import collections
import csv
import itertools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, TypeAlias

import msgspec

from .._exceptions import InputFileError
from ._files import RecordId

__all__ = ["CsvReader", "FieldReader", "JsonlReader", "Reader", "Record", "TxtReader"]

Record: TypeAlias = tuple[RecordId, str]
"""One input: ``(id, text)``."""

_CHUNK = 1 << 20
_BOM = "\ufeff"


class Reader(abc.ABC):
    """A corpus file read lazily as ``(id, text)`` records, in file order.

    Args:
        path: The input file.

    Raises:
        InputFileError: The file does not exist or is not a regular file.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise InputFileError(self.path, "no such file")
        if not self.path.is_file():
            raise InputFileError(self.path, "not a regular file")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} path={str(self.path)!r}>"

    @abc.abstractmethod
    def count(self) -> int:
        """Return the number of records, with a fast pass that does not validate texts.

        Raises:
            InputFileError: The file cannot be read.
        """

    @abc.abstractmethod
    def records(self, start: int = 0) -> Iterator[Record]:
        """Yield ``(id, text)`` for records ``start, start + 1, ...`` to the end of the file.

        Args:
            start: How many records to skip (the rows a resumed job already wrote).

        Raises:
            InputFileError: At the first bad record (undecodable, malformed, empty text...).
        """

    def __iter__(self) -> Iterator[Record]:
        return self.records()

    def _open(self) -> IO[bytes]:
        try:
            return open(self.path, "rb")  # the caller closes it
        except OSError as exc:
            raise InputFileError(self.path, f"cannot open: {exc.strerror or exc}") from exc

    def _check_text(self, text: str, line: int, what: str = "text", unit: str = "line") -> str:
        if not text or text.isspace():
            msg = f"empty {what} (empty texts cannot be embedded)"
            raise InputFileError(self.path, msg, line=line, unit=unit)
        return text

    def _decode(self, raw: bytes, line: int) -> str:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            msg = f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})"
            raise InputFileError(self.path, msg, line=line) from None
        return text[1:] if line == 1 and text.startswith(_BOM) else text

    def _lines(self, f: IO[bytes], start: int) -> Iterator[tuple[int, bytes]]:
        """Yield ``(1-based line number, raw line)`` from line ``start + 1`` on."""
        collections.deque(itertools.islice(f, start), maxlen=0)  # skip without decoding
        return enumerate(f, start + 1)

    def _count_lines(self) -> int:
        n, last = 0, b"\n"
        with self._open() as f:
            while chunk := f.read(_CHUNK):
                n += chunk.count(b"\n")
                last = chunk[-1:]
        return n + (last != b"\n")


class TxtReader(Reader):
    """One text per line, UTF-8; ids are 0-based line numbers.

    The line's ``\\n`` or ``\\r\\n`` ending is removed; other whitespace is kept. A UTF-8
    byte-order mark at the start of the file is dropped.
    """

    def count(self) -> int:
        return self._count_lines()

    def records(self, start: int = 0) -> Iterator[Record]:
        with self._open() as f:
            for line, raw in self._lines(f, start):
                text = self._decode(raw, line)
                if text.endswith("\n"):
                    text = text[:-2] if text.endswith("\r\n") else text[:-1]
                yield line - 1, self._check_text(text, line, "line")


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


class FieldReader(Reader):
    """A reader of records whose text (and optional id) sit in a named field or column."""

    def __init__(
        self, path: str | os.PathLike[str], *, field: str = "text", id_field: str | None = None
    ) -> None:
        super().__init__(path)
        self.field = field
        self.id_field = id_field

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} path={str(self.path)!r} field={self.field!r}"
            f" id_field={self.id_field!r}>"
        )


class JsonlReader(FieldReader):
    """One JSON object per line; the text is in ``field``, the id in ``id_field``.

    Ids are the ``id_field`` values (strings or integers), or 0-based line numbers when
    ``id_field`` is ``None``. A blank line is an error, like any line that is not an object.
    """

    _decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder()

    def count(self) -> int:
        return self._count_lines()

    def records(self, start: int = 0) -> Iterator[Record]:
        with self._open() as f:
            for line, raw in self._lines(f, start):
                yield self._parse(raw, line)

    def _parse(self, raw: bytes, line: int) -> Record:
        if line == 1 and raw.startswith(_BOM.encode()):
            raw = raw[3:]
        if not raw.strip():
            raise InputFileError(self.path, "empty line (expected a JSON object)", line=line)
        try:
            obj = self._decoder.decode(raw)
        except (UnicodeDecodeError, msgspec.DecodeError) as exc:
            # msgspec reports bad UTF-8 as UnicodeDecodeError before 0.23 and as DecodeError
            # since: find the byte ourselves so the message names it under every version.
            self._decode(raw, line)  # raises if the line is not UTF-8, naming the byte
            raise InputFileError(self.path, f"invalid JSON: {exc}", line=line) from None
        if not isinstance(obj, dict):
            msg = f"expected a JSON object, got {_type_name(obj)}"
            raise InputFileError(self.path, msg, line=line)
        if self.field not in obj:
            raise InputFileError(self.path, f"missing field {self.field!r}", line=line)
        text = obj[self.field]
        if not isinstance(text, str):
            msg = f"field {self.field!r} is not a string (got {_type_name(text)})"
            raise InputFileError(self.path, msg, line=line)
        self._check_text(text, line)
        if self.id_field is None:
            return line - 1, text
        if self.id_field not in obj:
            raise InputFileError(self.path, f"missing id field {self.id_field!r}", line=line)
        record_id = obj[self.id_field]
        if isinstance(record_id, bool) or not isinstance(record_id, int | str):
            got = _type_name(record_id)
            msg = f"id field {self.id_field!r} must be a string or an integer, got {got}"
            raise InputFileError(self.path, msg, line=line)
        return record_id, text


class CsvReader(FieldReader):
    """A CSV file with a header row; the text is in column ``field``, the id in ``id_field``.

    Parsed with the standard :mod:`csv` module (default dialect: commas, double quotes;
    quoted fields may span lines). Ids are strings from ``id_field``, or 0-based data-row
    numbers. Error line numbers are physical lines, counting the header.

    Args:
        path: The input file.
        field: The name of the column holding the text.
        id_field: The column holding each record's id, or ``None`` for row numbers.

    Raises:
        InputFileError: The file does not exist, has no header, or lacks a named column.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, field: str = "text", id_field: str | None = None
    ) -> None:
        super().__init__(path, field=field, id_field=id_field)
        with self._open() as f:
            header = next(self._rows(f), None)
        if header is None:
            raise InputFileError(self.path, "empty file (expected a header row)")
        columns = header[1]
        self._text_col = self._column(columns, field)
        self._id_col = None if id_field is None else self._column(columns, id_field)

    def _column(self, columns: list[str], name: str) -> int:
        try:
            return columns.index(name)
        except ValueError:
            listed = ", ".join(repr(c) for c in columns)
            raise InputFileError(
                self.path, f"no column {name!r} (columns: {listed})", line=1
            ) from None

    def _rows(self, f: IO[bytes]) -> Iterator[tuple[int, list[str]]]:
        """Yield ``(last physical line, fields)`` for every row, the header included."""
        reader = csv.reader(self._decode(raw, line) for line, raw in enumerate(f, 1))
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise InputFileError(self.path, f"bad CSV: {exc}", line=reader.line_num) from None
            yield reader.line_num, row

    def count(self) -> int:
        with self._open() as f:
            return max(sum(1 for _ in self._rows(f)) - 1, 0)

    def records(self, start: int = 0) -> Iterator[Record]:
        width = max(self._text_col, -1 if self._id_col is None else self._id_col) + 1
        with self._open() as f:
            rows = itertools.islice(self._rows(f), start + 1, None)  # +1: the header
            for index, (line, row) in enumerate(rows, start):
                if not row:
                    raise InputFileError(self.path, "empty line (expected a CSV row)", line=line)
                if len(row) < width:
                    msg = f"row has {len(row)} fields, too few for the named column(s)"
                    raise InputFileError(self.path, msg, line=line)
                text = self._check_text(row[self._text_col], line)
                yield (index if self._id_col is None else row[self._id_col]), text
