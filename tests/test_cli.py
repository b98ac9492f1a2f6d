"""The ``asyncembed`` command, through ``main(argv)``, against LocalServer and ``--local``."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from asyncembed._cli import LOCAL_DIMENSIONS, main
from asyncembed.testing import LocalServer, expected_vector

MODEL = "test/model"
DIMS = 8
TEXTS = [f'text {i}, with "quotes" and ünïcode {"x" * (i % 5)}' for i in range(30)]

Ids = list[Any]


async def run(argv: list[str]) -> int:
    """``main`` in a worker thread: it runs its own event loop, the server runs in ours."""
    return await anyio.to_thread.run_sync(main, argv)


def expected(texts: list[str] = TEXTS, dims: int = DIMS) -> np.ndarray:
    return np.stack([expected_vector(MODEL, t, dims) for t in texts])


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def one_error_line(err: str) -> str:
    assert err.startswith("asyncembed: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


# -- corpus writers: (path, extra options, expected ids) -------------------------------------


def write_txt(folder: Path) -> tuple[Path, list[str], Ids]:
    path = folder / "in.txt"
    path.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    return path, [], list(range(len(TEXTS)))


def write_jsonl(folder: Path) -> tuple[Path, list[str], Ids]:
    path = folder / "in.jsonl"
    lines = [json.dumps({"doc": f"d{i}", "body": t}) for i, t in enumerate(TEXTS)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path, ["--field", "body", "--id-field", "doc"], [f"d{i}" for i in range(len(TEXTS))]


def write_csv(folder: Path) -> tuple[Path, list[str], Ids]:
    path = folder / "in.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["key", "body"])
        writer.writerows([f"k{i}", t] for i, t in enumerate(TEXTS))
    return path, ["--column", "body", "--id-column", "key"], [f"k{i}" for i in range(len(TEXTS))]


def write_parquet(folder: Path) -> tuple[Path, list[str], Ids]:
    path = folder / "in.parquet"
    table = pa.table({"body": TEXTS, "n": list(range(100, 100 + len(TEXTS)))})
    pq.write_table(table, path, row_group_size=7)
    return path, ["--column", "body", "--id-field", "n"], list(range(100, 100 + len(TEXTS)))


def read_output(path: Path) -> tuple[Ids | None, np.ndarray]:
    if path.suffix == ".npy":
        return None, np.load(path)
    if path.suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        return [r["id"] for r in rows], np.array([r["vector"] for r in rows], dtype=np.float32)
    table = pq.read_table(path)
    vectors = np.array(table.column("vector").to_pylist(), dtype=np.float32)
    return table.column("id").to_pylist(), vectors


WRITERS: dict[str, Callable[[Path], tuple[Path, list[str], Ids]]] = {
    "txt": write_txt,
    "jsonl": write_jsonl,
    "csv": write_csv,
    "parquet": write_parquet,
}


@pytest.mark.anyio
@pytest.mark.parametrize("fmt_out", ["npy", "jsonl", "parquet"])
@pytest.mark.parametrize("fmt_in", sorted(WRITERS))
async def test_each_input_format_to_each_output_format(
    tmp_path: Path, fmt_in: str, fmt_out: str, capsys: pytest.CaptureFixture[str]
) -> None:
    source, options, ids = WRITERS[fmt_in](tmp_path)
    out = tmp_path / f"out.{fmt_out}"
    async with LocalServer(dimensions=DIMS) as server:
        argv = ["embed", str(source), "-o", str(out), "--model", MODEL]
        argv += ["--base-url", server.base_url, "--batch-size", "7", *options]
        assert await run(argv) == 0
        assert server.inputs_count == len(TEXTS)
    got_ids, matrix = read_output(out)
    np.testing.assert_array_equal(matrix, expected())
    if got_ids is not None:
        assert got_ids == ids
    assert names(tmp_path) == sorted([source.name, out.name])
    stdout = capsys.readouterr().out
    assert f"wrote {len(TEXTS)} vectors of {DIMS} dims to {out}" in stdout
    assert "requests 5, retries 0" in stdout


def test_local_needs_no_key_and_no_network(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source, _, _ = write_txt(tmp_path)
    out = tmp_path / "o.npy"
    assert main(["embed", str(source), "-o", str(out), "--model", MODEL, "--local"]) == 0
    np.testing.assert_array_equal(np.load(out), expected(dims=LOCAL_DIMENSIONS))
    argv = ["embed", str(source), "-o", str(out), "--model", MODEL, "--local", "--dimensions", "5"]
    assert main([*argv, "--encoding", "float"]) == 0  # a finished output is replaced
    np.testing.assert_array_equal(np.load(out), expected(dims=5))
    captured = capsys.readouterr()
    assert "asyncembed: 30/30 texts (100.0%)" in captured.err  # the final progress line


def test_query_prints_the_three_nearest_texts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source, _, _ = write_txt(tmp_path)
    argv = ["embed", str(source), "-o", str(tmp_path / "o.npy"), "--model", MODEL, "--local"]
    assert main([*argv, "--query", TEXTS[4], "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    lines = captured.out.splitlines()
    start = lines.index(f"nearest to {TEXTS[4]!r} (cosine):")
    assert lines[start + 1] == f"  +1.0000  #5  {TEXTS[4]}"  # the query itself is in the corpus
    assert len(lines) == start + 5 and "hashes" in lines[-1]


@pytest.mark.anyio
async def test_cache_makes_a_second_run_send_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source, _, _ = write_txt(tmp_path)
    cache = tmp_path / "cache.db"
    async with LocalServer(dimensions=DIMS) as server:
        base = ["embed", str(source), "--model", MODEL, "--base-url", server.base_url]
        assert await run([*base, "-o", str(tmp_path / "a.npy"), "--cache", str(cache)]) == 0
        sent = server.requests_count
        assert await run([*base, "-o", str(tmp_path / "b.jsonl"), "--cache", str(cache)]) == 0
        assert server.requests_count == sent  # nothing sent the second time
    assert "cache hits 30" in capsys.readouterr().out
    np.testing.assert_array_equal(read_output(tmp_path / "b.jsonl")[1], expected())


@pytest.mark.anyio
async def test_resume_of_a_finished_job_does_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source, _, _ = write_txt(tmp_path)
    out, state = tmp_path / "o.npy", tmp_path / "s.db"
    async with LocalServer(dimensions=DIMS) as server:
        argv = ["embed", str(source), "-o", str(out), "--model", MODEL, "--resume", str(state)]
        argv += ["--base-url", server.base_url, "--quiet"]
        assert await run(argv) == 0
        assert await run(argv) == 0
        assert server.inputs_count == len(TEXTS)
        assert "is already complete" in capsys.readouterr().out
        out.unlink()
        assert await run(argv) == 2  # the state says finished, the output is gone
    assert "delete the state file" in one_error_line(capsys.readouterr().err)


# -- bad usage and bad input: exit 2, one line, nothing written ------------------------------

BAD_INPUTS: dict[str, tuple[bytes, str, list[str], str]] = {
    "undecodable": (b"good\n\xff\xfe bad\n", "in.txt", [], "line 2: not valid UTF-8"),
    "empty line": (b"one\n\nthree\n", "in.txt", [], "line 2: empty"),
    "missing field": (b'{"text": "a"}\n{"body": "b"}\n', "in.jsonl", [], "line 2: missing field"),
    "missing column": (b"id,body\n1,a\n", "in.csv", ["--column", "text"], "no column 'text'"),
    "no text": (b"", "in.txt", [], "no text to embed"),
    "unknown format": (b"a\n", "in.docx", [], "unknown input format"),
    "field on txt": (b"a\n", "in.txt", ["--field", "x"], "does not apply to .txt"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_exits_2_with_one_line(
    tmp_path: Path, case: str, capsys: pytest.CaptureFixture[str]
) -> None:
    data, name, options, message = BAD_INPUTS[case]
    (tmp_path / name).write_bytes(data)
    out = tmp_path / "o.npy"
    argv = ["embed", str(tmp_path / name), "-o", str(out), "--model", MODEL, "--local"]
    assert main([*argv, *options, "--resume", str(tmp_path / "s.db")]) == 2
    assert message in one_error_line(capsys.readouterr().err)
    assert names(tmp_path) == [name]  # no output, no state


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["embed", "{d}/missing.txt", "-o", "{d}/o.npy"], "missing.txt: no such file"),
        (["embed", "{d}/in.txt", "-o", "{d}/nope/o.npy"], "output folder"),
        (["embed", "{d}/in.txt", "-o", "{d}/o.xlsx"], "unknown output format"),
        (["embed", "{d}/in.txt", "-o", "{d}/o.npy", "--resume", "{d}/nope/s.db"], "does not"),
        (["embed", "{d}/in.txt", "-o", "{d}/o.jsonl", "--query", "q"], "needs a .npy output"),
        (["embed", "{d}/in.txt", "-o", "{d}/o.npy", "--base-url", "http://x"], "--local and"),
    ],
)
def test_bad_paths_and_options_exit_2(
    tmp_path: Path, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "in.txt").write_text("a\nb\n")
    argv = [a.format(d=tmp_path) for a in argv]
    assert main([*argv, "--model", MODEL, "--local"]) == 2
    assert message in one_error_line(capsys.readouterr().err)
    assert names(tmp_path) == ["in.txt"]


def test_argparse_errors_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["embed", "in.txt", "-o", "o.npy"]) == 2  # --model is required
    assert "--model" in capsys.readouterr().err
    assert main(["embed", "in.txt", "-o", "o.npy", "--model", MODEL, "--batch-size", "0"]) == 2
    assert main(["serve", "--help"]) == 0
    assert "--latency" in capsys.readouterr().out
    assert main([]) == 2


def test_no_key_for_openrouter_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "in.txt").write_text("a\n")
    argv = ["embed", str(tmp_path / "in.txt"), "-o", str(tmp_path / "o.npy"), "--model", MODEL]
    assert main(argv) == 2
    assert "no API key: set $OPENROUTER_API_KEY" in one_error_line(capsys.readouterr().err)
    assert main([*argv, "--api-key-env", "MY_KEY"]) == 2
    assert "$MY_KEY is not set" in one_error_line(capsys.readouterr().err)


@pytest.mark.anyio
async def test_the_environment_key_goes_to_another_endpoint_only_when_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "in.txt").write_text("a\nb\n")
    monkeypatch.setenv("OPENROUTER_API_KEY", "or-key")
    monkeypatch.setenv("MY_KEY", "my-key")
    async with LocalServer(dimensions=DIMS, api_key="or-key") as server:
        argv = ["embed", str(tmp_path / "in.txt"), "-o", str(tmp_path / "o.npy"), "--quiet"]
        argv += ["--model", MODEL, "--base-url", server.base_url]
        assert await run(argv) == 1  # the OpenRouter key is not sent to another host
        err = one_error_line(capsys.readouterr().err)
        assert "401" in err and "--api-key-env NAME" in err and "or-key" not in err
        assert await run([*argv, "--api-key-env", "MY_KEY"]) == 1  # the wrong key, named
        assert await run([*argv, "--api-key-env", "OPENROUTER_API_KEY"]) == 0
        capsys.readouterr()


@pytest.mark.anyio
async def test_job_mismatch_on_resume_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source, _, _ = write_txt(tmp_path)
    out, state = tmp_path / "o.npy", tmp_path / "s.db"
    async with LocalServer(dimensions=DIMS) as server:
        argv = ["embed", str(source), "-o", str(out), "--resume", str(state)]
        argv += ["--base-url", server.base_url]
        assert await run([*argv, "--model", MODEL, "--quiet"]) == 0
        before = out.read_bytes()
        assert await run([*argv, "--model", "other/model"]) == 2
        assert server.inputs_count == len(TEXTS)
    assert "records a different job" in one_error_line(capsys.readouterr().err)
    assert out.read_bytes() == before


# -- API failures: exit 1, one line ------------------------------------------------------------


@pytest.mark.anyio
async def test_wrong_key_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    source, _, _ = write_txt(tmp_path)
    monkeypatch.setenv("MY_KEY", "sk-wrong-key")
    async with LocalServer(dimensions=DIMS, api_key="sk-right-key") as server:
        argv = ["embed", str(source), "-o", str(tmp_path / "o.npy"), "--model", MODEL]
        assert await run([*argv, "--base-url", server.base_url, "--api-key-env", "MY_KEY"]) == 1
    err = one_error_line(capsys.readouterr().err.split("\n", 1)[-1])  # after the progress line
    assert "401" in err or "User not found" in err
    assert "sk-wrong-key" not in err
    assert names(tmp_path) == [source.name]


@pytest.mark.anyio
async def test_402_exits_1_and_resume_pays_only_the_rest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source, _, _ = write_txt(tmp_path)
    out, state = tmp_path / "o.npy", tmp_path / "s.db"
    async with LocalServer(dimensions=DIMS, script=["ok", "ok", "402"]) as server:
        argv = ["embed", str(source), "-o", str(out), "--model", MODEL, "--quiet"]
        argv += ["--base-url", server.base_url, "--resume", str(state)]
        argv += ["--batch-size", "5", "--concurrency", "1"]
        assert await run(argv) == 1
        err = one_error_line(capsys.readouterr().err)
        assert "402" in err or "credits" in err.lower()
        assert not out.exists()
        first = server.inputs_count
        assert await run(argv) == 0  # resumes after the 10 rows written before the 402
        assert server.inputs_count - first == len(TEXTS) - 10
    np.testing.assert_array_equal(np.load(out), expected())


def test_bench_prints_json_lines(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--local", "--texts", "300", "--concurrency", "4"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["phase"] for line in lines] == ["embed", "embed_many"]
    assert all(line["texts"] == 300 and line["texts_per_s"] > 0 for line in lines)
    assert lines[1]["stats"]["inputs"] == 600
    assert lines[0]["stats"]["requests"] < 300  # single calls were coalesced


def test_interrupted_hint_says_how_to_resume(tmp_path: Path) -> None:
    from asyncembed._bulk import BulkJob
    from asyncembed._cli import _Run

    (tmp_path / "in.txt").write_text("a\nb\n")
    assert _Run().interrupted_hint() == ""
    with BulkJob(tmp_path / "in.txt", tmp_path / "o.npy", model=MODEL) as job:
        assert "nothing saved (pass --resume STATE" in _Run(job).interrupted_hint()
    state = tmp_path / "s.db"
    with BulkJob(tmp_path / "in.txt", tmp_path / "o.npy", model=MODEL, state=state) as job:
        hint = _Run(job).interrupted_hint()
    assert hint == (
        f" at 0 of 2 texts; progress saved in {state} (0 texts):"
        " run the same command again to resume"
    )


def test_local_latency_must_not_be_negative(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "in.txt").write_text("a\nb\n")
    argv = ["embed", str(tmp_path / "in.txt"), "-o", str(tmp_path / "o.npy"), "--local"]
    assert main([*argv, "--model", "m", "--local-latency", "-1"]) == 2
    assert "--local-latency must be >= 0" in capsys.readouterr().err
    assert main([*argv, "--model", "m", "--local-latency", "0.001", "--quiet"]) == 0
    assert np.load(tmp_path / "o.npy").shape == (2, 384)


def test_an_over_long_text_names_its_record(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "in.txt").write_text("short\nanother\n" + "x" * 40_000 + "\nlast\n")
    argv = ["embed", str(tmp_path / "in.txt"), "-o", str(tmp_path / "o.npy"), "--local"]
    assert main([*argv, "--model", "m", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "record 3" in err and "max_input_tokens" in err and err.count("\n") == 1
    assert not (tmp_path / "o.npy").exists()
