"""The bulk CLI never destroys data, never pays for work it will throw away, never leaks."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from asyncembed import StoreError
from asyncembed._bulk import BulkJob
from asyncembed._cli import main
from asyncembed.testing import LocalServer

MODEL = "openai/text-embedding-3-small"  # one of the models --local serves


async def run(argv: list[str]) -> int:
    return await anyio.to_thread.run_sync(main, argv)


def one_error_line(err: str) -> str:
    assert err.startswith("asyncembed: error: ") and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_output_equal_to_input_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], suffix: str
) -> None:
    src = tmp_path / f"in{suffix}"
    if suffix == ".jsonl":
        src.write_text("".join(json.dumps({"text": f"t{i}"}) + "\n" for i in range(5)))
    else:
        pq.write_table(pa.table({"text": [f"t{i}" for i in range(5)]}), src)
    before = src.read_bytes()
    assert main(["embed", str(src), "-o", str(src), "--model", MODEL, "--local", "--quiet"]) == 2
    assert "same file" in one_error_line(capsys.readouterr().err)
    assert src.read_bytes() == before


def test_state_path_equal_to_output_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "in.txt").write_text("a\nb\nc\n")
    out = tmp_path / "o.npy"
    argv = ["embed", str(tmp_path / "in.txt"), "-o", str(out), "--resume", str(out)]
    assert main([*argv, "--model", MODEL, "--local", "--quiet"]) == 2
    assert "same file" in one_error_line(capsys.readouterr().err)
    assert not out.exists()


def test_a_usage_error_leaves_no_state_behind(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "in.txt").write_text("a\nb\n")
    state = tmp_path / "s.db"
    base = ["embed", str(tmp_path / "in.txt"), "--model", MODEL, "--local", "--quiet"]
    assert main([*base, "-o", str(tmp_path / "o.xlsx"), "--resume", str(state)]) == 2
    one_error_line(capsys.readouterr().err)
    assert main([*base, "-o", str(tmp_path / "o.npy"), "--resume", str(state)]) == 0


def test_cache_with_local_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "in.txt").write_text("a\n")
    argv = ["embed", str(tmp_path / "in.txt"), "-o", str(tmp_path / "o.npy"), "--local"]
    assert main([*argv, "--model", MODEL, "--cache", str(tmp_path / "c.db")]) == 2
    assert "stand-in vectors" in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "c.db").exists()


def test_api_key_env_given_a_key_does_not_print_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "in.txt").write_text("a\n")
    secret = "sk-or-v1-0123456789abcdef0123456789abcdef"
    argv = ["embed", str(tmp_path / "in.txt"), "-o", str(tmp_path / "o.npy"), "--model", MODEL]
    assert main([*argv, "--api-key-env", secret]) == 2
    captured = capsys.readouterr()
    assert secret not in captured.err + captured.out
    assert "name of an environment variable" in one_error_line(captured.err)


def jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("ids", "message"),
    [([2**63], "cannot be a Parquet int64/str"), ([1, "s2", 3], "ids mix int and str")],
    ids=["too-big", "mixed"],
)
async def test_bad_parquet_ids_are_reported_before_paying(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], ids: list[Any], message: str
) -> None:
    src = tmp_path / "in.jsonl"
    jsonl(src, [{"id": i, "text": f"text {n}"} for n, i in enumerate(ids)])
    async with LocalServer(dimensions=4) as server:
        argv = ["embed", str(src), "--id-field", "id", "-o", str(tmp_path / "o.parquet")]
        code = await run([*argv, "--model", MODEL, "--base-url", server.base_url, "--quiet"])
        assert server.inputs_count == 0
    assert code == 2
    assert message in one_error_line(capsys.readouterr().err)


@pytest.mark.anyio
async def test_an_over_long_line_is_reported_before_anything_is_paid(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "in.txt"
    src.write_text("".join(f"short {i}\n" for i in range(200)) + "x" * 40_000 + "\n")
    async with LocalServer(dimensions=4) as server:
        argv = ["embed", str(src), "-o", str(tmp_path / "o.npy"), "--model", MODEL, "--quiet"]
        code = await run([*argv, "--base-url", server.base_url, "--batch-size", "10"])
        assert server.inputs_count == 0
    assert code == 2
    assert "record 201" in one_error_line(capsys.readouterr().err)


@pytest.mark.anyio
async def test_an_output_name_the_file_system_refuses_is_found_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "in.txt").write_text("a\nb\n")
    out = tmp_path / ("x" * 250 + ".npy")  # legal; "<out>.partial" is too long
    async with LocalServer(dimensions=4) as server:
        argv = ["embed", str(tmp_path / "in.txt"), "-o", str(out), "--model", MODEL]
        code = await run([*argv, "--quiet", "--base-url", server.base_url])
        assert server.inputs_count == 0
    assert code == 2
    one_error_line(capsys.readouterr().err)


def test_ctrl_c_during_validation_stops_promptly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from asyncembed._bulk import _readers

    src = tmp_path / "in.txt"
    src.write_text("".join(f"text {i}\n" for i in range(50_000)))
    real = _readers.TxtReader.records
    after: list[int] = []

    def records(self: _readers.TxtReader, start: int = 0) -> Iterator[Any]:
        for n, record in enumerate(real(self, start)):
            if n == 10 and not after:
                after.append(0)
                os.kill(os.getpid(), signal.SIGINT)
            elif after:
                after[0] += 1
            yield record

    monkeypatch.setattr(_readers.TxtReader, "records", records)
    argv = ["embed", str(src), "-o", str(tmp_path / "o.npy"), "--model", MODEL, "--local"]
    assert main([*argv, "--quiet"]) == 130
    assert after[0] < 2048  # it yields to the loop every 1,024 records


def test_two_runs_of_one_job_are_not_allowed_at_once(tmp_path: Path) -> None:
    src = tmp_path / "in.txt"
    src.write_text("".join(f"text {i}\n" for i in range(30)))
    out, state = tmp_path / "o.jsonl", tmp_path / "s.db"
    first = BulkJob(src, out, model=MODEL, state=state)
    first.open()
    try:
        second = BulkJob(src, out, model=MODEL, state=state)
        with pytest.raises(StoreError, match="in use by another run"):
            second.open()
    finally:
        first.close()
    third = BulkJob(src, out, model=MODEL, state=state)  # free again once closed
    third.open()
    third.close()


def test_parquet_crash_while_removing_parts_still_resumes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from asyncembed._bulk import _parquet as pw

    class Killed(BaseException):
        pass

    src = tmp_path / "in.txt"
    src.write_text("".join(f"text {i}\n" for i in range(100)))
    argv = ["embed", str(src), "-o", str(tmp_path / "o.parquet"), "--model", MODEL, "--local"]
    argv += ["--quiet", "--dimensions", "4", "--resume", str(tmp_path / "s.db")]
    monkeypatch.setattr(pw.ParquetWriter, "part_rows", 10)
    import shutil

    real_rmtree = shutil.rmtree

    def dying_rmtree(path: Any, *args: Any, **kwargs: Any) -> None:
        if not Path(path).exists():
            return
        sorted(Path(path).iterdir())[0].unlink()  # one part gone, then the process dies
        raise Killed

    monkeypatch.setattr(shutil, "rmtree", dying_rmtree)
    with pytest.raises(Killed):
        main(argv)
    monkeypatch.setattr(shutil, "rmtree", real_rmtree)
    assert (tmp_path / "o.parquet").is_file()
    assert main(argv) == 0, capsys.readouterr().err
    assert pq.read_table(tmp_path / "o.parquet").num_rows == 100
    assert np.asarray(pq.read_table(tmp_path / "o.parquet")["vector"][0].as_py()).shape == (4,)


@pytest.mark.anyio
async def test_a_resume_against_another_endpoint_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "in.txt"
    src.write_text("".join(f"text {i}\n" for i in range(20)))
    argv = ["embed", str(src), "-o", str(tmp_path / "o.npy"), "--model", MODEL, "--quiet"]
    argv += ["--resume", str(tmp_path / "s.db"), "--dimensions", "4"]
    assert await run([*argv, "--local"]) == 0
    async with LocalServer(dimensions=4) as server:
        assert await run([*argv, "--base-url", server.base_url]) == 2
        assert server.inputs_count == 0
    assert "endpoint 'local'" in one_error_line(capsys.readouterr().err)


def _small_disk() -> None:
    """In the child: files may not grow past 256 KiB, as on a nearly full disk (EFBIG)."""
    import resource

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, 256 * 1024))


def test_a_full_disk_is_one_line_and_the_job_resumes_after(tmp_path: Path) -> None:
    import subprocess
    import sys

    source = tmp_path / "in.txt"
    source.write_text("".join(f"line {i} of the corpus\n" for i in range(2_000)))
    out, state = tmp_path / "o.npy", tmp_path / "s.db"
    argv = [sys.executable, "-m", "asyncembed", "embed", str(source), "-o", str(out)]
    argv += ["--model", MODEL, "--local", "--quiet", "--resume", str(state)]
    argv += ["--batch-size", "100"]
    full = subprocess.run(argv, capture_output=True, text=True, preexec_fn=_small_disk, check=False)
    assert full.returncode == 3, full.stderr
    err = one_error_line(full.stderr)
    assert "o.npy" in err and "cannot write" in err and "run the same command again" in err
    assert not out.exists()
    again = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert again.returncode == 0, again.stderr
    reference = tmp_path / "ref.npy"
    assert main([*argv[3:5], "-o", str(reference), *argv[7:11]]) == 0
    assert out.read_bytes() == reference.read_bytes()


def test_an_existing_output_is_refused_untouched_unless_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "in.txt").write_text("a\nb\nc\n")
    out, state = tmp_path / "o.jsonl", tmp_path / "s.db"
    out.write_text("someone's earlier work\n")
    argv = ["embed", str(tmp_path / "in.txt"), "-o", str(out), "--model", MODEL, "--local"]
    argv += ["--quiet", "--resume", str(state)]
    assert main(argv) == 2
    err = one_error_line(capsys.readouterr().err)
    assert f"{out}: exists already (pass --overwrite to replace it)" in err
    assert out.read_text() == "someone's earlier work\n"
    assert not state.exists()  # a fresh state file does not make it "the job being resumed"
    assert main([*argv, "--overwrite"]) == 0
    assert len(out.read_text().splitlines()) == 3
    # The job being resumed is its own output: no --overwrite needed to rerun it.
    assert main(argv) == 0
    assert "is already complete" in capsys.readouterr().out


def test_the_state_of_another_job_does_not_unlock_an_existing_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "in.txt").write_text("a\nb\nc\n")
    first, second, state = tmp_path / "first.npy", tmp_path / "second.npy", tmp_path / "s.db"
    base = ["embed", str(tmp_path / "in.txt"), "--model", MODEL, "--local", "--quiet"]
    assert main([*base, "-o", str(first), "--resume", str(state)]) == 0
    assert main([*base, "-o", str(second)]) == 0
    before = second.read_bytes()
    assert main([*base, "-o", str(second), "--resume", str(state)]) == 2
    assert "records a different job" in one_error_line(capsys.readouterr().err)
    assert second.read_bytes() == before
