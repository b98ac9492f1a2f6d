"""A worker process of the shared-budget tests: ``python shared_budget_worker.py``.

It reads one job (a JSON line) at a time from stdin until stdin closes. For each, it
unpickles the ``RedisLimiter`` it is given (so pickling across processes is part of
what is tested), builds an Embedder on it, prints ``ready``, waits for a line on
stdin (so that every worker starts at once), sends its requests, and prints one JSON
line: how many succeeded, the names of the errors of the others, its stats.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import json
import pickle
import sys
from typing import Any

from asyncembed import (
    Batching,
    Embedder,
    Limiter,
    Limits,
    PartialResultError,
    Retry,
)


async def main(config: dict[str, Any]) -> dict[str, Any]:
    limiter = pickle.loads(base64.b64decode(config["limiter"]))
    assert isinstance(limiter, Limiter)
    limits = Limits(**config["limits"])
    tag, n, length = config["tag"], config["n"], config["length"]
    texts = [f"{tag} {i} ".ljust(length, "x") for i in range(n)]
    errors: collections.Counter[str] = collections.Counter()
    ok = 0
    async with limiter:
        embedder = Embedder(
            config["model"],
            base_url=config["base_url"],
            limits=limits,
            limiter=limiter,
            batching=Batching(max_size=config.get("batch", 256)),
            retry=Retry(attempts=3, initial_delay=0.05),
        )
        async with embedder:
            await asyncio.to_thread(_ready)
            if config["mode"] == "create":
                results = await asyncio.gather(
                    *(embedder.create([text]) for text in texts), return_exceptions=True
                )
                for result in results:
                    if isinstance(result, BaseException):
                        errors[type(result).__name__] += 1
                    else:
                        ok += 1
            else:
                try:
                    ok = len(await embedder.embed_many(texts))
                except PartialResultError as exc:
                    ok = n - len(exc.errors)
                    errors.update(type(e).__name__ for e in exc.errors.values())
                except Exception as exc:
                    errors[type(exc).__name__] += n
            stats = embedder.stats
    return {"ok": ok, "errors": dict(errors), "cost": stats.cost, "requests": stats.requests}


def _ready() -> None:
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    sys.stdin.readline()  # the go signal


if __name__ == "__main__":
    for line in sys.stdin:
        result = asyncio.run(main(json.loads(line)))
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()
