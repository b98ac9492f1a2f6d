"""The ``asyncembed`` command, through ``main(argv)``, against LocalServer and ``--local``."""

from __future__ import annotations

import argparse
import ast
import csv
import ipaddress
import json
import re
import shlex
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from asyncembed._cli import CLI_TERMS, LOCAL_DIMENSIONS, LOCAL_MODELS, cli_terms, main
from asyncembed._cli_args import build_parser
from asyncembed.testing import LocalServer, expected_vector

MODEL = "openai/text-embedding-3-small"  # one of the models --local serves
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
    if fmt_out == "npy":  # it keeps no ids, and says so if given an id field
        options = options[:2]
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
    assert "asyncembed: 30/30 texts (100.0%)" in capsys.readouterr().err  # the final progress
    argv = ["embed", str(source), "-o", str(out), "--model", MODEL, "--local", "--dimensions", "5"]
    argv += ["--encoding", "float", "--quiet"]
    assert main(argv) == 2  # an existing output is refused...
    assert "exists already (pass --overwrite" in one_error_line(capsys.readouterr().err)
    np.testing.assert_array_equal(np.load(out), expected(dims=LOCAL_DIMENSIONS))
    assert main([*argv, "--overwrite"]) == 0  # ...unless told to replace it
    np.testing.assert_array_equal(np.load(out), expected(dims=5))


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
    assert main([*argv, "--model", MODEL, "--local-latency", "-1"]) == 2
    assert "--local-latency must be >= 0" in capsys.readouterr().err
    assert main([*argv, "--model", MODEL, "--local-latency", "0.001", "--quiet"]) == 0
    assert np.load(tmp_path / "o.npy").shape == (2, 384)


def test_an_over_long_text_names_its_record(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "in.txt").write_text("short\nanother\n" + "x" * 40_000 + "\nlast\n")
    argv = ["embed", str(tmp_path / "in.txt"), "-o", str(tmp_path / "o.npy"), "--local"]
    assert main([*argv, "--model", MODEL, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "record 3" in err and err.count("\n") == 1
    assert "over --max-input-tokens 8192 (pass --truncate to cut it instead)" in err
    assert not (tmp_path / "o.npy").exists()


# -- help ---------------------------------------------------------------------------------------


def test_no_arguments_prints_the_help_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("usage: asyncembed") and captured.err == ""
    assert all(command in captured.out for command in ("embed", "serve", "bench", "examples:"))


def subcommand_parser(command: str) -> argparse.ArgumentParser:
    from asyncembed.testing import add_serve_arguments

    parser = build_parser(command, add_serve_arguments=add_serve_arguments)
    (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    found: argparse.ArgumentParser = sub.choices[command]
    return found


def examples(help_text: str) -> list[list[str]]:
    """The example commands of a --help, their continuation lines joined."""
    block = help_text.split("\nexamples:\n", 1)[1].split("\n\n" + "options:", 1)[0]
    joined = re.sub(r"\\\n\s*", "", block)
    return [
        shlex.split(line) for line in joined.splitlines() if line.strip().startswith("asyncembed")
    ]


@pytest.mark.parametrize("command", ["embed", "serve", "bench"])
def test_each_command_help_starts_with_what_it_does_then_examples(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    description = out.split("\n\n")[1]
    assert description[0].isupper() and len(description.split()) >= 10, description
    assert out.index("examples:") < out.index("options:")
    found = examples(out)
    assert found and all(argv[1] == command for argv in found)
    for argv in found:  # every example is a valid command line
        subcommand_parser(command).parse_args(argv[2:])
    assert all(len(line) <= 90 for line in out.splitlines())


@pytest.mark.parametrize("command", ["embed", "serve", "bench"])
def test_each_option_with_a_default_shows_it(command: str) -> None:
    parser = subcommand_parser(command)
    shown = 0
    for action in parser._actions:
        if not action.option_strings or action.help in (None, argparse.SUPPRESS):
            continue
        if action.default in (None, False, []) or isinstance(action, argparse._HelpAction):
            continue
        assert "(default: " in str(action.help) or "; default: " in str(action.help), action
        shown += 1
    assert shown >= 2


# -- messages name the flags, never a Python option ------------------------------------------

PYTHON_OPTION = re.compile(r"\b[A-Z]\w*\(\w+=|\b[a-z_]+=(True|False|\.\.\.)|\b[a-z]+_[a-z_]+=")


NOT_CLI = {
    "ray.py",
    "langchain.py",
    "llama_index.py",
    "_sync.py",
    "_loop_thread.py",
    "_per_loop.py",
    "_options.py",
    "_redis_limiter.py",
}


def message_strings() -> list[str]:
    """Every string the package could put in a message a CLI user sees.

    Not the test server's, the CLI's own, nor the integrations' (Ray, LangChain,
    LlamaIndex, the sync wrapper and the limiters): the CLI never runs those.
    """
    package = Path(__file__).resolve().parent.parent / "asyncembed"
    found: list[str] = []
    for path in sorted(package.rglob("*.py")):
        if "testing" in path.parts or path.name.startswith("_cli") or path.name in NOT_CLI:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skip: set[int] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
                skip.add(id(node.value))  # docstrings
            if isinstance(node, ast.JoinedStr):
                skip.update(id(v) for v in node.values)
                texts = [v.value if isinstance(v, ast.Constant) else "{}" for v in node.values]
                found.append("".join(str(t) for t in texts))
        found += [
            n.value
            for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in skip
        ]
    # Reprs and SQL are not messages.
    return [t for t in found if not t.startswith("<") and "PRAGMA" not in t]


def test_every_python_option_a_message_names_has_a_cli_flag() -> None:
    strings = message_strings()
    hits = [text for text in strings if PYTHON_OPTION.search(text)]
    assert len(hits) >= 5  # the scan sees the messages
    for text in hits:
        assert not PYTHON_OPTION.search(cli_terms(text)), (text, cli_terms(text))
    package = "\n".join(strings)
    for python, _ in CLI_TERMS:  # no dead entry: each phrase is still in a message
        assert python in package, python


def test_over_long_texts_are_cut_with_truncate_or_let_through_with_a_higher_limit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    long = "word " * 8_000  # about 10,000 estimated tokens
    (tmp_path / "in.txt").write_text(f"short\n{long}\nlast\n")
    argv = ["embed", str(tmp_path / "in.txt"), "-o", str(tmp_path / "o.npy"), "--local"]
    argv += ["--model", MODEL, "--quiet", "--dimensions", "4"]
    assert main(argv) == 2
    err = one_error_line(capsys.readouterr().err)
    assert "record 2" in err and "--truncate" in err and "Batching(" not in err
    assert main([*argv, "--truncate"]) == 0
    cut = np.load(tmp_path / "o.npy")
    assert main([*argv, "--max-input-tokens", "20000", "--overwrite"]) == 0
    whole = np.load(tmp_path / "o.npy")
    np.testing.assert_array_equal(whole[1], expected_vector(MODEL, long, 4))
    assert not np.array_equal(cut[1], whole[1]) and np.array_equal(cut[0], whole[0])


@pytest.mark.anyio
async def test_a_truncated_text_is_sent_cut(tmp_path: Path) -> None:
    long = "x" * 40_000
    (tmp_path / "in.txt").write_text(f"short\n{long}\n")
    async with LocalServer(dimensions=DIMS) as server:
        argv = ["embed", str(tmp_path / "in.txt"), "-o", str(tmp_path / "o.npy"), "--quiet"]
        argv += ["--model", MODEL, "--base-url", server.base_url, "--truncate"]
        argv += ["--max-input-tokens", "100"]
        assert await run(argv) == 0
        sent = [str(t) for r in server.requests for t in r.inputs or ()]
    assert sent[0] == "short" and long.startswith(sent[1]) and 0 < len(sent[1]) <= 400


def test_an_insecure_url_names_the_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "in.txt").write_text("a\n")
    monkeypatch.setenv("MY_KEY", "sk-test-key")
    argv = ["embed", str(tmp_path / "in.txt"), "-o", str(tmp_path / "o.npy"), "--model", MODEL]
    argv += ["--base-url", "http://example.invalid/v1", "--api-key-env", "MY_KEY"]
    assert main(argv) == 2  # refused before any connection is tried
    err = one_error_line(capsys.readouterr().err)
    assert "pass --allow-insecure" in err and "allow_insecure" not in err


@pytest.mark.anyio
async def test_allow_insecure_sends_the_key_over_http_to_a_named_host(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    host = socket.gethostname()  # a name, not a loopback address, so the guard applies
    addresses = {a[4][0] for a in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)}
    if not addresses or not all(ipaddress.ip_address(a).is_loopback for a in addresses):
        pytest.skip(f"{host} does not resolve to this machine's loopback only")
    (tmp_path / "in.txt").write_text("a\nb\n")
    monkeypatch.setenv("MY_KEY", "sk-test-key")
    async with LocalServer(dimensions=DIMS, api_key="sk-test-key") as server:
        url = f"http://{host}:{server.port}/api/v1"
        argv = ["embed", str(tmp_path / "in.txt"), "-o", str(tmp_path / "o.npy"), "--quiet"]
        argv += ["--model", MODEL, "--base-url", url, "--api-key-env", "MY_KEY"]
        assert await run(argv) == 2
        assert "--allow-insecure" in one_error_line(capsys.readouterr().err)
        assert await run([*argv, "--allow-insecure"]) == 0
        assert server.stats.statuses == {200: 1}


@pytest.mark.anyio
async def test_the_spending_cap_and_a_401_name_the_flags(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "in.txt").write_text("\n".join(TEXTS) + "\n")
    async with LocalServer(dimensions=DIMS, price_per_token=1e-4) as server:
        argv = ["embed", str(tmp_path / "in.txt"), "-o", str(tmp_path / "o.npy"), "--quiet"]
        argv += ["--model", MODEL, "--base-url", server.base_url, "--max-cost", "0.001"]
        assert await run([*argv, "--batch-size", "5", "--concurrency", "1"]) == 1
    err = one_error_line(capsys.readouterr().err)
    assert "spending cap reached" in err and "of --max-cost 0.001" in err
    assert "max_cost" not in err
    monkeypatch.setenv("MY_KEY", "sk-wrong")
    async with LocalServer(dimensions=DIMS, api_key="sk-right") as server:
        argv = ["embed", str(tmp_path / "in.txt"), "-o", str(tmp_path / "o.npy"), "--quiet"]
        argv += ["--model", MODEL, "--base-url", server.base_url, "--api-key-env", "MY_KEY"]
        assert await run(argv) == 1
    err = one_error_line(capsys.readouterr().err)
    assert "check the API key: --api-key-env NAME" in err and "Embedder(" not in err


@pytest.mark.anyio
async def test_library_warnings_are_one_line_each_in_the_clis_terms(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "in.txt").write_text("\n".join(TEXTS) + "\n")
    async with LocalServer(dimensions=DIMS, base64_unsupported_models=[MODEL]) as server:
        argv = ["embed", str(tmp_path / "in.txt"), "-o", str(tmp_path / "o.npy"), "--quiet"]
        assert await run([*argv, "--model", MODEL, "--base-url", server.base_url]) == 0
    err = capsys.readouterr().err
    assert err == f"asyncembed: warning: model {MODEL} does not honour base64; switching to float\n"
    assert cli_terms("max_cost is set but the server reports no usage.cost") == (
        "--max-cost is set but the server reports no usage.cost"
    )


# -- --local serves the models it names --------------------------------------------------------


def test_local_refuses_a_model_it_does_not_serve_and_names_those_it_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "in.txt").write_text("a\nb\n")
    argv = ["embed", str(tmp_path / "in.txt"), "-o", str(tmp_path / "o.npy"), "--local"]
    argv += ["--quiet", "--resume", str(tmp_path / "s.db")]
    assert main([*argv, "--model", "openai/text-embeding-3-small"]) == 2  # a typo
    err = one_error_line(capsys.readouterr().err)
    assert "not 'openai/text-embeding-3-small'" in err
    assert all(model in err for model in LOCAL_MODELS)
    assert "--local-model openai/text-embeding-3-small" in err
    assert names(tmp_path) == ["in.txt"]  # refused before anything was written
    assert main([*argv, "--model", "my/model", "--local-model", "my/model"]) == 0
    assert np.load(tmp_path / "o.npy").shape == (2, LOCAL_DIMENSIONS)
    assert main(["bench", "--local", "--model", "nope/nope", "--texts", "1"]) == 2
    assert "--local serves these models" in one_error_line(capsys.readouterr().err)


# -- outputs are never silently replaced or dropped --------------------------------------------


def test_an_id_field_with_a_npy_output_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source, options, _ = write_jsonl(tmp_path)
    argv = ["embed", str(source), "-o", str(tmp_path / "o.npy"), *options, "--model", MODEL]
    assert main([*argv, "--local", "--resume", str(tmp_path / "s.db")]) == 2
    err = one_error_line(capsys.readouterr().err)
    assert "keeps vectors only, not the ids of 'doc'" in err and ".jsonl or .parquet" in err
    assert names(tmp_path) == [source.name]
