"""A SyncEmbedder or LangChain object made before ``os.fork()`` (gunicorn ``--preload``,
an import-time object) works in the child: the child gets a fresh Embedder of its own.

The fork happens in a script run as a subprocess, never in the test process (forking
a process that runs other threads is only safe in code written for it, like ours).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from server_thread import ServerThread

from asyncembed.testing import expected_vector

DIMS = 8
MODEL = "test/fork"
ROOT = Path(__file__).resolve().parent.parent

SCRIPT = textwrap.dedent(
    """
    import asyncio, json, os, signal, sys
    import asyncembed
    from asyncembed.langchain import AsyncembedEmbeddings

    base_url, cache = sys.argv[1], sys.argv[2]
    sync = asyncembed.SyncEmbedder("test/fork", base_url=base_url, cache=cache)
    chain = AsyncembedEmbeddings("test/fork", base_url=base_url)
    # Started before the fork: a loop thread, a session, an open SQLite file, and a
    # LangChain Embedder held by a loop that is kept for later (not running).
    sync.embed("parent")
    chain.embed_query("parent")
    kept = asyncio.new_event_loop()
    kept.run_until_complete(chain.aembed_query("parent"))

    pid = os.fork()
    if pid == 0:
        signal.alarm(20)  # a hang shows as SIGALRM, not as the test's timeout
        report = {
            "sync": sync.embed("child").tolist(),
            "cached": sync.embed("parent").tolist(),
            "cache_hits": sync.stats.cache_hits,
            "chain": chain.embed_query("child"),
            "chain_async": asyncio.run(chain.aembed_query("child async")),
        }
        print(json.dumps(report), flush=True)
        sync.close()
        chain.close()
        sys.exit(0)  # a normal exit: atexit and collection run, and must stay quiet
    _, status = os.waitpid(pid, 0)
    report = {
        "status": status,
        "sync": sync.embed("parent after").tolist(),
        "chain_async": kept.run_until_complete(chain.aembed_query("parent after")),
    }
    print(json.dumps(report), flush=True)
    sync.close()
    chain.close()
    kept.close()
    """
)


@pytest.fixture(scope="module")
def served() -> Iterator[ServerThread]:
    with ServerThread(dimensions=DIMS) as running:
        yield running


def vector(text: str) -> np.ndarray:
    return expected_vector(MODEL, text, DIMS)


def test_objects_made_before_a_fork_work_in_the_child_and_the_parent(
    served: ServerThread, tmp_path: Path
) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    cache = str(tmp_path / "cache.sqlite")
    run = subprocess.run(
        [sys.executable, "-X", "dev", "-W", "always", "-c", SCRIPT, served.server.base_url, cache],
        capture_output=True,
        text=True,
        timeout=40,
        env=env,
        cwd=ROOT,
    )
    assert run.returncode == 0, run.stderr
    for noise in ("Warning", "Exception ignored", "Task was destroyed", "Unclosed", "Error"):
        assert noise not in run.stderr, run.stderr
    child_line, parent_line = run.stdout.splitlines()
    child: dict[str, Any] = json.loads(child_line)
    parent: dict[str, Any] = json.loads(parent_line)
    assert parent["status"] == 0  # the child exited by itself: no SIGALRM
    assert np.array_equal(np.array(child["sync"], np.float32), vector("child"))
    # The cache, given as a path, was reopened in the child and holds the parent's text.
    assert np.array_equal(np.array(child["cached"], np.float32), vector("parent"))
    assert child["cache_hits"] == 1
    assert np.array_equal(np.array(child["chain"], np.float32), vector("child"))
    assert np.array_equal(np.array(child["chain_async"], np.float32), vector("child async"))
    # The parent's objects were not touched by the child.
    assert np.array_equal(np.array(parent["sync"], np.float32), vector("parent after"))
    assert np.array_equal(np.array(parent["chain_async"], np.float32), vector("parent after"))
