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


# Three groups run at once: much of each benchmark waits on its servers' latency, and
# one after another they took ~45 s of the suite.
GROUPS = [
    ["shared_budget"],
    ["coalesce", "latency_hiding", "bulk"],
    ["coalescers", "added_latency", "loop_stalls", "decode", "memory"],
]


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_quick_benchmarks_run_and_report_json() -> None:
    assert {name for group in GROUPS for name in group} == EXPECTED
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "benchmarks", "--quick", "--json", *group],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for group in GROUPS
    ]
    reports = []
    for run in runs:
        out, err = run.communicate(timeout=170)
        assert run.returncode == 0, err[-2000:]
        reports += [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert {report["name"] for report in reports} == EXPECTED
    for report in reports:
        assert report["machine"]["cores"] >= 1
