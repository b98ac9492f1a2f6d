"""What every peer shares: reading its config, timing a round, printing one JSON line."""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Meter",
    "Rounds",
    "arrivals",
    "config",
    "emit",
    "median",
    "percentile",
    "run",
    "texts",
]


def config() -> dict[str, Any]:
    """The peer's configuration: the JSON object in ``argv[1]``."""
    loaded: dict[str, Any] = json.loads(sys.argv[1])
    return loaded


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux: ru_maxrss is KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def emit(**fields: Any) -> None:
    """Print the one JSON result line (with the process's peak RSS) and flush."""
    fields.setdefault("peak_rss_mb", round(peak_rss_mb(), 1))
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def texts(n: int, tag: str = "") -> list[str]:
    """``n`` distinct short texts (about 40 characters, ~10 tokens); ``tag`` keeps rounds apart."""
    return [f"benchmark sentence {tag}{i} about the sea at night" for i in range(n)]


@dataclass(slots=True)
class Meter:
    """Wall and client CPU time (``time.process_time``: all threads of this process)."""

    wall: float = 0.0
    cpu: float = 0.0
    _wall0: float = 0.0
    _cpu0: float = 0.0

    def __enter__(self) -> Meter:
        self._wall0 = time.perf_counter()
        self._cpu0 = time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._wall0
        self.cpu = time.process_time() - self._cpu0


@dataclass(slots=True)
class Rounds:
    """Per-round wall and CPU seconds; the headline figures are the minima."""

    n: int
    walls: list[float] = field(default_factory=list)
    cpus: list[float] = field(default_factory=list)

    async def run(self, rounds: int, body: Callable[[int], Awaitable[object]]) -> Rounds:
        """Await ``body(round_number)`` ``rounds`` times, measuring each."""
        for k in range(rounds):
            with Meter() as meter:
                await body(k)
            self.walls.append(meter.wall)
            self.cpus.append(meter.cpu)
        return self

    def summary(self, pick: Callable[[list[float]], float] = min) -> dict[str, Any]:
        """Texts/s from the fastest round, CPU µs/text from the cheapest, and every round.

        ``pick=median`` takes the median round of each instead.
        """
        wall, cpu = pick(self.walls), pick(self.cpus)
        return {
            "n": self.n,
            "wall_s": wall,
            "cpu_s": cpu,
            "texts_per_s": self.n / wall,
            "cpu_us_per_text": cpu / self.n * 1e6,
            "rounds_wall_s": [round(w, 4) for w in self.walls],
            "rounds_cpu_s": [round(c, 4) for c in self.cpus],
        }


def run(main: Callable[[], Coroutine[Any, Any, None]], loop: str | None = None) -> None:
    """Run ``main()`` on a fresh event loop: asyncio's own, or uvloop's (``loop="uvloop"``)."""
    if loop == "uvloop":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(main())
    elif loop in (None, "asyncio"):
        asyncio.run(main())
    else:
        raise SystemExit(f"unknown event loop {loop!r}")


def median(values: list[float]) -> float:
    """The median (the mean of the middle two for an even count)."""
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by the nearest-rank method."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


async def arrivals(
    call: Callable[[Any], Awaitable[object]], items: list[Any], rate: float
) -> list[float]:
    """Start one caller per item, ``rate`` per second at a steady pace; return latencies (s)."""
    loop = asyncio.get_running_loop()
    latencies: list[float] = []

    async def caller(item: Any) -> None:
        t0 = time.perf_counter()
        await call(item)
        latencies.append(time.perf_counter() - t0)

    tasks = []
    start = loop.time()
    for i, item in enumerate(items):
        delay = start + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(caller(item)))
    await asyncio.gather(*tasks)
    return latencies
