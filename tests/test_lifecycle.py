"""An Embedder's life is not bound to one task: start on first use, close from anywhere.

Web frameworks open clients in a startup hook and close them in a shutdown hook, and a
notebook runs each cell in a task of its own; none of that may print a traceback, raise,
or leave a task behind.
"""

from __future__ import annotations

import asyncio
import gc
import sqlite3
import warnings
from pathlib import Path

import aiohttp
import anyio
import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

import asyncembed
from asyncembed import Cache, Embedder, RawResponse
from asyncembed.testing import LocalServer, MockTransport, expected_vector, wait_until

pytestmark = pytest.mark.anyio

DIMS = 8
MODEL = "test/lifecycle"


CLIENT = Path(asyncembed.__file__).parent


def our_tasks() -> set[asyncio.Task[object]]:
    """The client's tasks still running (the test server's, aiohttp's own are not ours)."""
    found = set()
    for task in asyncio.all_tasks():
        code = getattr(task.get_coro(), "cr_code", None)
        where = Path(code.co_filename) if code is not None else None
        if (
            not task.done()
            and where is not None
            and where.is_relative_to(CLIENT)
            and not where.is_relative_to(CLIENT / "testing")
        ):
            found.add(task)
    return found


async def test_open_in_one_task_use_in_others_close_in_a_third(
    capfd: pytest.CaptureFixture[str],
) -> None:
    before = our_tasks()
    async with LocalServer(dimensions=DIMS) as server:
        holder: list[Embedder] = []

        async def startup() -> None:
            holder.append(Embedder(MODEL, base_url=server.base_url))
            await holder[0].embed("warm up")  # starts it, in this task

        async def handler(i: int) -> np.ndarray:
            return await holder[0].embed(f"text {i}")

        async def shutdown() -> None:
            await holder[0].aclose()

        await asyncio.create_task(startup())
        vectors = await asyncio.gather(*(asyncio.create_task(handler(i)) for i in range(50)))
        await asyncio.create_task(shutdown())
        for i, v in enumerate(vectors):
            np.testing.assert_array_equal(v, expected_vector(MODEL, f"text {i}", DIMS))
        assert server.requests_count <= 3  # the 50 handlers shared requests
        embedder = holder[0]
        assert embedder.stats.active == 0 and "state=CLOSED" in repr(embedder)
        with pytest.raises(asyncembed.EmbedderClosedError):
            await embedder.embed("late")
    assert before == set() and our_tasks() == set()  # nothing left behind
    out, err = capfd.readouterr()
    assert out == "" and err == ""


async def test_a_notebook_each_step_its_own_task(capfd: pytest.CaptureFixture[str]) -> None:
    async with LocalServer(dimensions=DIMS) as server:
        ns: dict[str, object] = {}

        async def cell_1() -> None:
            ns["embedder"] = Embedder(MODEL, base_url=server.base_url)

        async def cell_2() -> None:
            embedder = ns["embedder"]
            assert isinstance(embedder, Embedder)
            ns["v"] = await embedder.embed("hello")

        async def cell_3() -> None:
            embedder = ns["embedder"]
            assert isinstance(embedder, Embedder)
            ns["m"] = await embedder.embed_many(["a", "b", "c"])
            async for _, block in embedder.stream(["x", "y"]):
                ns["s"] = block

        async def cell_4() -> None:
            embedder = ns["embedder"]
            assert isinstance(embedder, Embedder)
            await embedder.aclose()

        for cell in (cell_1, cell_2, cell_3, cell_4):
            await asyncio.create_task(cell())
        np.testing.assert_array_equal(ns["v"], expected_vector(MODEL, "hello", DIMS))
        assert np.asarray(ns["m"]).shape == (3, DIMS) and np.asarray(ns["s"]).shape == (2, DIMS)
    out, err = capfd.readouterr()
    assert out == "" and err == ""


async def test_aiohttp_startup_and_cleanup_hooks() -> None:
    async with LocalServer(dimensions=DIMS) as upstream:
        embedder_key = web.AppKey("embedder", Embedder)

        async def on_startup(app: web.Application) -> None:
            app[embedder_key] = Embedder(MODEL, base_url=upstream.base_url)

        async def on_cleanup(app: web.Application) -> None:
            await app[embedder_key].aclose()

        async def search(request: web.Request) -> web.Response:
            vector = await request.app[embedder_key].embed(request.query["q"])
            return web.json_response(vector.tolist())

        app = web.Application()
        app.on_startup.append(on_startup)
        app.on_cleanup.append(on_cleanup)
        app.router.add_get("/search", search)
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            answers = await asyncio.gather(
                *(client.get("/search", params={"q": f"q{i}"}) for i in range(20))
            )
            bodies = [await a.json() for a in answers]
        for i, body in enumerate(bodies):
            np.testing.assert_allclose(body, expected_vector(MODEL, f"q{i}", DIMS))
        assert upstream.requests_count < 20
        assert "state=CLOSED" in repr(app[embedder_key])


async def test_aclose_from_another_task_waits_for_the_calls_in_progress() -> None:
    async with LocalServer(dimensions=DIMS, latency=0.05) as server:
        embedder = Embedder(MODEL, base_url=server.base_url)
        calls = [asyncio.create_task(embedder.embed(f"t{i}")) for i in range(10)]
        await asyncio.sleep(0)  # the calls queue their texts
        await asyncio.create_task(embedder.aclose())
        assert all(c.done() for c in calls)  # closing sent them and waited
        for i, c in enumerate(calls):
            np.testing.assert_array_equal(c.result(), expected_vector(MODEL, f"t{i}", DIMS))


class HeldTransport:
    """A MockTransport whose answers wait until ``release`` is set."""

    def __init__(self) -> None:
        self.inner = MockTransport(dimensions=DIMS)
        self.release = asyncio.Event()

    async def post(self, content: bytes) -> RawResponse:
        await self.release.wait()
        return await self.inner.post(content)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_concurrent_aclose_calls_all_return_once_closed() -> None:
    transport = HeldTransport()
    embedder = Embedder(MODEL, transport=transport)
    call = asyncio.create_task(embedder.embed("x"))
    await wait_until(lambda: embedder.stats.in_flight == 1)
    closers = [asyncio.create_task(embedder.aclose()) for _ in range(5)]
    await asyncio.sleep(0)  # every closer has started and is waiting
    assert not any(c.done() for c in closers)  # none returns while the request is out
    transport.release.set()
    await asyncio.gather(*closers)
    assert call.done() and "state=CLOSED" in repr(embedder)
    np.testing.assert_array_equal(call.result(), expected_vector(MODEL, "x", DIMS))


async def test_an_unused_embedder_closes_what_it_opened(tmp_path: Path) -> None:
    embedder = Embedder(MODEL, transport=MockTransport(dimensions=DIMS), cache=tmp_path / "c.db")
    cache = embedder.cache
    assert isinstance(cache, Cache)
    await embedder.aclose()
    with pytest.raises(sqlite3.ProgrammingError):  # the connection it opened is closed
        len(cache)
    with pytest.raises(asyncembed.EmbedderClosedError):
        await embedder.embed("x")


async def test_entering_after_use_is_refused() -> None:
    embedder = Embedder(MODEL, transport=MockTransport(dimensions=DIMS))
    await embedder.embed("x")
    with pytest.raises(asyncembed.EmbedderClosedError, match="only once"):
        async with embedder:
            pass
    await embedder.aclose()


async def test_an_embedder_collected_unclosed_warns() -> None:
    embedder = Embedder(MODEL, transport=MockTransport(dimensions=DIMS))
    await embedder.embed("x")
    with pytest.warns(ResourceWarning, match="unclosed <Embedder"):
        del embedder
        gc.collect()


async def test_an_embedder_never_used_does_not_warn() -> None:
    embedder = Embedder(MODEL, transport=MockTransport(dimensions=DIMS))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        del embedder
        gc.collect()


def test_use_from_another_event_loop_is_refused() -> None:
    embedder = Embedder(MODEL, transport=MockTransport(dimensions=DIMS))
    asyncio.run(embedder.embed("first loop"))
    with pytest.raises(RuntimeError, match="event loop it was first used in"):
        asyncio.run(embedder.embed("second loop"))
    with pytest.raises(RuntimeError, match="event loop it was first used in"):
        asyncio.run(embedder.aclose())
    with pytest.warns(ResourceWarning):  # never closed in its own loop
        del embedder
        gc.collect()


async def test_a_caller_owned_session_stays_open() -> None:
    async with LocalServer(dimensions=DIMS) as server, aiohttp.ClientSession() as session:
        embedder = Embedder(MODEL, base_url=server.base_url, session=session)
        await embedder.embed("x")
        await embedder.aclose()
        assert not session.closed


async def test_leaving_on_an_error_cancels_bulk_calls_in_other_tasks_too() -> None:
    async with LocalServer(dimensions=DIMS, latency=30.0) as server:
        outcomes: dict[str, BaseException | None] = {}

        async def bulk(embedder: Embedder) -> None:
            try:
                await embedder.embed_many(["a", "b", "c"])
                outcomes["embed_many"] = None
            except BaseException as exc:
                outcomes["embed_many"] = exc

        async def streaming(embedder: Embedder) -> None:
            try:
                async for _ in embedder.stream(["d", "e"]):
                    pass
                outcomes["stream"] = None
            except BaseException as exc:
                outcomes["stream"] = exc

        with anyio.fail_after(5):  # the 30 s requests are not waited for
            embedder = Embedder(MODEL, base_url=server.base_url)
            tasks: list[asyncio.Task[None]] = []
            with pytest.raises(KeyError):
                async with embedder:
                    tasks = [
                        asyncio.create_task(bulk(embedder)),
                        asyncio.create_task(streaming(embedder)),
                    ]
                    await wait_until(lambda: server.stats.in_flight >= 2)
                    raise KeyError("the app failed")
            await asyncio.gather(*tasks)
        assert isinstance(outcomes["embed_many"], asyncembed.EmbedderClosedError)
        assert isinstance(outcomes["stream"], asyncembed.EmbedderClosedError)
        assert embedder.stats.active == 0


async def test_a_cancelled_aclose_does_not_cut_the_close_short() -> None:
    async with LocalServer(dimensions=DIMS, latency=0.3) as server:
        embedder = Embedder(MODEL, base_url=server.base_url)
        call = asyncio.create_task(embedder.embed("in flight"))
        await wait_until(lambda: server.stats.in_flight == 1)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(embedder.aclose(), 0.01)  # the caller gives up waiting
        await embedder.aclose()  # ...but the close went on: this waits for the same one
        assert call.done()  # the request in flight was waited for, not dropped
        np.testing.assert_array_equal(call.result(), expected_vector(MODEL, "in flight", DIMS))
        assert embedder.stats.active == 0
    gc.collect()  # an unclosed aiohttp session would warn here (warnings are errors)
