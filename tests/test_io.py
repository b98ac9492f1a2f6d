"""Corpus readers and output writers: formats, bad input, and byte-identical resume."""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from asyncembed._bulk._files import Checkpoint, RecordId
from asyncembed._bulk._formats import open_reader, open_writer
from asyncembed._bulk._parquet import ParquetWriter
from asyncembed._bulk._readers import Reader
from asyncembed._bulk._writers import Writer
from asyncembed._exceptions import (
    AsyncEmbedError,
    InputFileError,
    MissingExtraError,
    OutputFileError,
)

CORPUS = Path(__file__).parent.parent / "asyncembed" / "data" / "corpus.txt"


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def read_all(reader: Reader, start: int = 0) -> list[tuple[int | str, str]]:
    return list(reader.records(start))


def error_of(path: Path, **kwargs: str) -> InputFileError:
    with pytest.raises(InputFileError) as info:
        read_all(open_reader(path, **kwargs))
    assert "\n" not in str(info.value)
    assert str(path) in str(info.value)
    return info.value


# -- .txt ----------------------------------------------------------------------------------


def test_txt_reads_lines_with_line_number_ids(tmp_path: Path) -> None:
    path = write(tmp_path / "c.txt", "alpha\r\n  béta \ngamma".encode())
    reader = open_reader(path)
    assert reader.count() == 3
    assert read_all(reader) == [(0, "alpha"), (1, "  béta "), (2, "gamma")]
    assert read_all(reader, start=2) == [(2, "gamma")]
    assert read_all(reader, start=5) == []
    assert list(reader) == read_all(reader)


def test_txt_count_ignores_final_newline_and_drops_bom(tmp_path: Path) -> None:
    path = write(tmp_path / "c.txt", b"\xef\xbb\xbfone\ntwo\n")
    assert open_reader(path).count() == 2
    assert read_all(open_reader(path)) == [(0, "one"), (1, "two")]
    assert open_reader(write(tmp_path / "e.txt", b"")).count() == 0


@pytest.mark.parametrize("body", [b"a\n\nb\n", b"a\n \t\nb\n", b"a\n\r\nb\n"])
def test_txt_empty_line_is_an_error_naming_it(tmp_path: Path, body: bytes) -> None:
    err = error_of(write(tmp_path / "c.txt", body))
    assert err.line == 2
    assert "line 2: empty line" in str(err)


def test_txt_undecodable_line_is_named(tmp_path: Path) -> None:
    err = error_of(write(tmp_path / "c.txt", b"ok\nok\nbad \xff byte\n"))
    assert err.line == 3
    assert "not valid UTF-8 (byte 0xff at column 5)" in str(err)


def test_txt_rejects_field_options(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match=r"does not apply to \.txt"):
        open_reader(write(tmp_path / "c.txt", b"a\n"), field="text")


def test_missing_unknown_and_folder_inputs(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="no such file"):
        open_reader(tmp_path / "nope.txt")
    with pytest.raises(InputFileError, match=r"unknown input format '\.docx'"):
        open_reader(write(tmp_path / "c.docx", b"a"))
    (tmp_path / "dir.txt").mkdir()
    with pytest.raises(InputFileError, match="not a regular file"):
        open_reader(tmp_path / "dir.txt")


def test_input_errors_are_value_errors_of_the_package() -> None:
    assert issubclass(InputFileError, AsyncEmbedError)
    assert issubclass(InputFileError, ValueError)


def test_sample_corpus_is_valid_and_sized() -> None:
    reader = open_reader(CORPUS)
    texts = [text for _, text in reader]
    assert 2_000 <= reader.count() == len(texts) <= 5_000
    assert CORPUS.stat().st_size < 1_000_000
    assert all(text == text.strip() for text in texts)
    assert texts[0].startswith("It is a truth universally acknowledged")


# -- .jsonl --------------------------------------------------------------------------------


def jsonl(tmp_path: Path, *objs: object, name: str = "c.jsonl") -> Path:
    lines = [o if isinstance(o, str) else json.dumps(o) for o in objs]
    return write(tmp_path / name, ("\n".join(lines) + "\n").encode())


def test_jsonl_default_field_and_ids(tmp_path: Path) -> None:
    path = jsonl(tmp_path, {"text": "a", "k": 7}, {"text": "b", "k": "x"})
    assert open_reader(path).count() == 2
    assert read_all(open_reader(path)) == [(0, "a"), (1, "b")]
    assert read_all(open_reader(path, id_field="k")) == [(7, "a"), ("x", "b")]
    assert read_all(open_reader(path, id_field="k"), start=1) == [("x", "b")]


def test_jsonl_named_field_and_ndjson(tmp_path: Path) -> None:
    path = jsonl(tmp_path, {"body": "hello"}, name="c.ndjson")
    assert read_all(open_reader(path, field="body")) == [(0, "hello")]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "invalid JSON"),
        ('{"a": 1}{"b": 2}', "invalid JSON"),
        ("", "empty line (expected a JSON object)"),
        ("[1, 2]", "expected a JSON object, got list"),
        ({"other": "x"}, "missing field 'text'"),
        ({"text": 3}, "field 'text' is not a string (got int)"),
        ({"text": None}, "field 'text' is not a string (got null)"),
        ({"text": "  "}, "empty text"),
    ],
)
def test_jsonl_bad_lines_are_named(tmp_path: Path, line: object, message: str) -> None:
    err = error_of(jsonl(tmp_path, {"text": "fine"}, line))
    assert err.line == 2
    assert message in str(err)


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"text": "a"}, "missing id field 'k'"),
        ({"text": "a", "k": True}, "must be a string or an integer, got bool"),
        ({"text": "a", "k": 1.5}, "must be a string or an integer, got float"),
    ],
)
def test_jsonl_bad_ids(tmp_path: Path, record: object, message: str) -> None:
    err = error_of(jsonl(tmp_path, record), id_field="k")
    assert err.line == 1 and message in str(err)


def test_jsonl_undecodable_string_is_named(tmp_path: Path) -> None:
    path = write(tmp_path / "c.jsonl", b'{"text": "a"}\n{"text": "\xc3("}\n')
    err = error_of(path)
    assert err.line == 2 and "not valid UTF-8 (byte 0xc3 at column 11)" in str(err)


# -- .csv ----------------------------------------------------------------------------------


def test_csv_columns_ids_and_quoted_newlines(tmp_path: Path) -> None:
    body = 'id,text\nA,"one, two"\nB,"multi\nline"\nC,three\n'
    path = write(tmp_path / "c.csv", body.encode())
    assert open_reader(path).count() == 3
    assert read_all(open_reader(path)) == [(0, "one, two"), (1, "multi\nline"), (2, "three")]
    assert read_all(open_reader(path, id_field="id"), start=1) == [
        ("B", "multi\nline"),
        ("C", "three"),
    ]


def test_csv_named_column_and_bom(tmp_path: Path) -> None:
    path = write(tmp_path / "c.csv", "\ufeffbody,x\r\nhi,1\r\n".encode())
    assert read_all(open_reader(path, field="body")) == [(0, "hi")]


def test_csv_missing_column_is_reported_up_front(tmp_path: Path) -> None:
    path = write(tmp_path / "c.csv", b"a,b\n1,2\n")
    with pytest.raises(InputFileError, match=r"no column 'text' \(columns: 'a', 'b'\)"):
        open_reader(path)
    with pytest.raises(InputFileError, match="no column 'zz'"):
        open_reader(path, field="a", id_field="zz")
    with pytest.raises(InputFileError, match="expected a header row"):
        open_reader(write(tmp_path / "e.csv", b""))


@pytest.mark.parametrize(
    ("body", "line", "message"),
    [
        (b"text\nok\n\nok\n", 3, "empty line"),
        (b'text\nok\n""\n', 3, "empty text"),
        (b"n,text\n1,ok\n2\n", 3, "row has 1 fields"),
        (b"text\nok\nbad\xe9\n", 3, "not valid UTF-8"),
    ],
)
def test_csv_bad_rows_are_named(tmp_path: Path, body: bytes, line: int, message: str) -> None:
    err = error_of(write(tmp_path / "c.csv", body))
    assert err.line == line and message in str(err)


# -- .parquet ------------------------------------------------------------------------------


def parquet(tmp_path: Path, columns: dict[str, list[Any]], group: int = 3) -> Path:
    path = tmp_path / "c.parquet"
    pq.write_table(pa.table(columns), path, row_group_size=group)
    return path


def test_parquet_reads_across_row_groups_from_any_start(tmp_path: Path) -> None:
    texts = [f"t{i}" for i in range(10)]
    path = parquet(tmp_path, {"text": texts, "k": [100 + i for i in range(10)]})
    reader = open_reader(path)
    assert reader.count() == 10
    assert read_all(reader) == list(enumerate(texts))
    for start in range(12):
        assert read_all(reader, start) == list(enumerate(texts))[start:]
    assert read_all(open_reader(path, id_field="k"), 4)[0] == (104, "t4")


def test_parquet_small_batches_keep_positions(tmp_path: Path) -> None:
    from asyncembed._bulk._parquet import ParquetReader

    path = parquet(tmp_path, {"text": [f"t{i}" for i in range(10)]}, group=4)
    reader = ParquetReader(path, batch_size=3)
    assert read_all(reader, 5) == [(i, f"t{i}") for i in range(5, 10)]


def test_parquet_schema_errors(tmp_path: Path) -> None:
    path = parquet(tmp_path, {"body": ["a"], "n": [1.5]})
    with pytest.raises(InputFileError, match="no column 'text'"):
        open_reader(path)
    with pytest.raises(InputFileError, match="column 'n' has unsupported type double"):
        open_reader(path, field="n")
    with pytest.raises(InputFileError, match="column 'n' has unsupported type"):
        open_reader(path, field="body", id_field="n")
    with pytest.raises(InputFileError, match="not a readable Parquet file"):
        open_reader(write(tmp_path / "x.parquet", b"not parquet at all"))


def test_parquet_null_and_empty_texts(tmp_path: Path) -> None:
    err = error_of(parquet(tmp_path, {"text": ["a", "b", "c", None]}))
    assert err.line == 4 and "record 4: null text" in str(err)
    err = error_of(parquet(tmp_path, {"text": ["a", ""]}))
    assert err.line == 2 and "record 2: empty text" in str(err)


def test_missing_pyarrow_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = parquet(tmp_path, {"text": ["a"]})
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'asyncembed\[parquet\]'"):
        open_reader(path)
    with pytest.raises(MissingExtraError, match="asyncembed"):
        open_writer(tmp_path / "out.parquet", rows=1)
    assert issubclass(MissingExtraError, ImportError)


# -- writers -------------------------------------------------------------------------------

FORMATS = ["npy", "jsonl", "parquet"]
ROWS, DIM = 300, 6
DATA = np.random.default_rng(7).standard_normal((ROWS, DIM)).astype(np.float32)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def small_parts(writer: Writer) -> Writer:
    # Small parts and row groups so a 300-row test exercises several of each.
    if isinstance(writer, ParquetWriter):
        writer.part_rows = 40
        writer.row_group_bytes = 70 * (4 * DIM + 8)
    return writer


def load(path: Path) -> tuple[list[object], npt.NDArray[np.float32]]:
    if path.suffix == ".npy":
        arr = np.load(path)
        return list(range(len(arr))), arr
    if path.suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        return [r["id"] for r in rows], np.array([r["vector"] for r in rows], dtype=np.float32)
    table = pq.read_table(path)
    vectors = table.column("vector").combine_chunks().flatten().to_numpy()
    return table.column("id").to_pylist(), vectors.reshape(-1, DIM)


def uninterrupted(path: Path, ids: list[RecordId] | None = None) -> str:
    writer = small_parts(open_writer(path, rows=ROWS))
    for start in range(0, ROWS, 64):
        block_ids = None if ids is None else ids[start : start + 64]
        writer.write(start, DATA[start : start + 64], block_ids)
    writer.finish()
    return digest(path)


@pytest.mark.parametrize("fmt", FORMATS)
def test_writer_round_trip(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"out.{fmt}"
    uninterrupted(path)
    ids, vectors = load(path)
    assert ids == list(range(ROWS))
    np.testing.assert_array_equal(vectors, DATA)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_npy_is_what_numpy_save_writes(tmp_path: Path) -> None:
    uninterrupted(tmp_path / "out.npy")
    np.save(tmp_path / "ref.npy", DATA)
    assert digest(tmp_path / "out.npy") == digest(tmp_path / "ref.npy")


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_string_ids_are_kept(tmp_path: Path, fmt: str) -> None:
    ids: list[RecordId] = [f"doc-{i}" for i in range(ROWS)]
    uninterrupted(tmp_path / f"out.{fmt}", ids)
    assert load(tmp_path / f"out.{fmt}")[0] == ids


def test_parquet_schema_and_row_groups(tmp_path: Path) -> None:
    uninterrupted(tmp_path / "out.parquet")
    meta = pq.ParquetFile(tmp_path / "out.parquet")
    assert meta.schema_arrow.field("vector").type == pa.list_(pa.float32(), DIM)
    assert meta.schema_arrow.field("id").type == pa.int64()
    groups = [meta.metadata.row_group(i).num_rows for i in range(meta.num_row_groups)]
    assert groups == [70, 70, 70, 70, 20]


def test_parquet_refuses_mixed_ids(tmp_path: Path) -> None:
    writer = open_writer(tmp_path / "out.parquet", rows=2, dim=DIM)
    writer.write(0, DATA[:2], [1, "two"])
    with pytest.raises(ValueError, match="ids must all be integers"):
        writer.flush()


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(("crash_after", "flush_every"), [(1, 1), (3, 2), (4, 3)])
def test_resume_after_crash_is_byte_identical(
    tmp_path: Path, fmt: str, crash_after: int, flush_every: int
) -> None:
    reference = uninterrupted(tmp_path / f"ref.{fmt}")
    path = tmp_path / f"out.{fmt}"
    writer = small_parts(open_writer(path, rows=ROWS))
    recorded = Checkpoint()
    for k, start in enumerate(range(0, (crash_after + 1) * 50, 50)):
        writer.write(start, DATA[start : start + 50])
        if k % flush_every == flush_every - 1 and k < crash_after:
            recorded = writer.flush()
    # "Crash": rows past the checkpoint were written, nothing is closed or finished.
    assert not path.exists()
    assert recorded.rows < writer.written
    writer.close()  # as the OS would at exit; nothing is finalized
    writer = small_parts(open_writer(path, rows=ROWS, resume=recorded))
    assert writer.written == recorded.rows
    # Nothing written past the checkpoint survives the reopen.
    if isinstance(writer, ParquetWriter):
        ends = [int(p.stem.split("-")[2]) for p in writer.parts.glob("part-*.parquet")]
        assert len(ends) == recorded.offset and max(ends, default=0) == recorded.rows
    elif fmt == "jsonl":
        assert writer.partial.stat().st_size == recorded.offset
    for start in range(recorded.rows, ROWS, 37):  # other block sizes than the first run
        writer.write(start, DATA[start : start + 37])
    writer.finish()
    assert digest(path) == reference
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, f"ref.{fmt}"])


@pytest.mark.parametrize("fmt", FORMATS)
def test_resume_after_finish_renamed_is_finished(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"out.{fmt}"
    writer = open_writer(path, rows=ROWS)
    writer.write(0, DATA)
    checkpoint = writer.flush()
    writer.finish()  # ...and the process dies before the state records it
    before = digest(path)
    again = open_writer(path, rows=ROWS, resume=checkpoint)
    assert again.finished
    again.finish()
    assert digest(path) == before


@pytest.mark.parametrize("fmt", FORMATS)
def test_resume_without_partial_output_fails(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"out.{fmt}"
    writer = open_writer(path, rows=ROWS)
    writer.write(0, DATA[:10])
    checkpoint = writer.flush()
    writer.discard()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(OutputFileError, match="cannot resume"):
        open_writer(path, rows=ROWS, resume=checkpoint)


def test_resume_rejects_a_checkpoint_the_file_does_not_match(tmp_path: Path) -> None:
    writer = open_writer(tmp_path / "out.npy", rows=ROWS)
    writer.write(0, DATA[:10])
    writer.flush()
    writer.close()
    with pytest.raises(OutputFileError, match=r"expected \(300, 9\) float32"):
        open_writer(tmp_path / "out.npy", rows=ROWS, resume=Checkpoint(rows=10, dim=9))
    jsonl_writer = open_writer(tmp_path / "out.jsonl", rows=ROWS)
    jsonl_writer.write(0, DATA[:1])
    jsonl_writer.close()
    with pytest.raises(OutputFileError, match="bytes"):
        open_writer(tmp_path / "out.jsonl", rows=ROWS, resume=Checkpoint(1, DIM, 10**6))


def test_open_writer_checks_the_path_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(OutputFileError, match="does not exist"):
        open_writer(tmp_path / "missing" / "out.npy", rows=1)
    with pytest.raises(OutputFileError, match=r"unknown output format '\.csv'"):
        open_writer(tmp_path / "out.csv", rows=1)
    (tmp_path / "d.npy").mkdir()
    with pytest.raises(OutputFileError, match="is a folder"):
        open_writer(tmp_path / "d.npy", rows=1)
    with pytest.raises(ValueError, match="rows must be >= 0"):
        open_writer(tmp_path / "out.npy", rows=-1)


@pytest.mark.parametrize("fmt", FORMATS)
def test_dim_is_taken_from_the_first_block(tmp_path: Path, fmt: str) -> None:
    writer = open_writer(tmp_path / f"out.{fmt}", rows=4)
    with writer:
        assert writer.dim is None and writer.flush() == Checkpoint()
        assert list(tmp_path.iterdir()) == []  # nothing created before the dimension is known
        writer.write(0, DATA[:2])
        assert writer.dim == DIM
        with pytest.raises(ValueError, match=r"shape \(n, 6\)"):
            writer.write(2, np.zeros((2, 5), np.float32))


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda w: w.write(1, DATA[:1]), "in order"),
        (lambda w: w.write(0, DATA[:5]), "exceed"),
        (lambda w: w.write(0, DATA[:2], [1]), "got 1 ids for 2 rows"),
        (lambda w: w.write(0, DATA[0]), "shape"),
    ],
)
def test_write_validates_blocks(tmp_path: Path, call: Callable[[Writer], None], error: str) -> None:
    with (
        open_writer(tmp_path / "out.npy", rows=4, dim=DIM) as writer,
        pytest.raises(ValueError, match=error),
    ):
        call(writer)


def test_finish_needs_every_row_and_leaves_nothing_complete(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    writer = open_writer(path, rows=4)
    writer.write(0, DATA[:2])
    with pytest.raises(OutputFileError, match="only 2 of 4 rows written"):
        writer.finish()
    assert not path.exists()
    writer.close()
    with pytest.raises(RuntimeError, match="closed"):
        writer.write(2, DATA[2:4])
    with pytest.raises(OutputFileError, match="dimension is unknown"):
        open_writer(tmp_path / "empty.npy", rows=0).finish()


@pytest.mark.parametrize("fmt", FORMATS)
def test_empty_output_with_known_dim(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"out.{fmt}"
    writer = open_writer(path, rows=0, dim=DIM)
    writer.finish()
    assert writer.finished
    ids, vectors = load(path)
    assert ids == [] and vectors.size == 0


def test_parquet_parts_are_bounded_in_bytes_at_high_dimensions(tmp_path: Path) -> None:
    from asyncembed._bulk._parquet import ParquetWriter

    writer = open_writer(tmp_path / "o.parquet", rows=64, dim=None)
    assert isinstance(writer, ParquetWriter)
    writer.part_bytes = 4 * 3072 * 8  # eight 3072-d rows per part
    for start in range(0, 64, 4):
        writer.write(start, np.ones((4, 3072), np.float32), list(range(start, start + 4)))
        assert writer._buffered < 8  # a part is written as soon as 8 rows are buffered
    writer.finish()
    assert pq.read_table(tmp_path / "o.parquet").num_rows == 64
