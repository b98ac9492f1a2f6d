"""The benchmark suite still runs end to end (tiny sizes; numbers are not checked here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXPECTED = {
    "coalescers",
    "coalesce",
    "bulk",
    "latency_hiding",
    "added_latency",
    "loop_stalls",
    "decode",
    "memory",
    "shared_budget",
}


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_quick_benchmarks_run_and_report_json() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    reports = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert {report["name"] for report in reports} == EXPECTED
    for report in reports:
        assert report["machine"]["cores"] >= 1
