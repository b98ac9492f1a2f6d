"""The ``asyncembed`` command: ``embed`` a corpus file, ``serve`` the local server, ``bench``.

A thin adapter: it parses options, builds an :class:`~asyncembed.Embedder`, and hands
the work to :class:`~asyncembed._bulk.BulkJob` and :class:`~asyncembed._bulk.Progress`.

Exit codes: 0 done; 1 the API failed; 2 bad usage or input (one ``asyncembed: error:``
line on stderr, never a traceback); 130 interrupted (Ctrl-C), progress saved when
``--resume`` names a state file.

Output rule: the output is written under a temporary name and renamed over OUTPUT only
when complete, so an existing OUTPUT is replaced atomically at the end of a successful
run and left untouched otherwise. Without ``--resume`` an interrupted run keeps
nothing; with it, running the same command again continues where it stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import numpy as np

from ._bulk import BulkJob, BulkResult, Progress, open_reader
from ._config import Batching, Limits
from ._embedder import Embedder, is_openrouter, resolve_base_url
from ._exceptions import (
    APIConnectionError,
    APIStatusError,
    BudgetExceededError,
    InputFileError,
    InvalidInputError,
    JobIOError,
    MissingExtraError,
    OutputFileError,
    PartialResultError,
    ProtocolError,
    StoreError,
)
from ._version import __version__

__all__ = ["main"]

LOCAL_DIMENSIONS = 384
"""The vector length of ``--local`` when ``--dimensions`` is not given."""

_API_ERRORS = (
    APIStatusError,
    APIConnectionError,
    ProtocolError,
    BudgetExceededError,
    PartialResultError,
    OSError,
)
_USER_ERRORS = (
    InputFileError,
    OutputFileError,
    StoreError,
    MissingExtraError,
    InvalidInputError,
    ValueError,
    TypeError,
)


class _UsageError(Exception):
    """A bad combination of options, found after parsing (exit 2)."""


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def _add_client_arguments(p: argparse.ArgumentParser, *, model: str | None) -> None:
    p.add_argument(
        "--model",
        required=model is None,
        default=model,
        help="embedding model, e.g. openai/text-embedding-3-small",
    )
    p.add_argument("--concurrency", type=_positive, default=16, help="requests in flight at most")
    p.add_argument("--local", action="store_true", help="use an in-process local server")
    p.add_argument(
        "--local-latency",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="with --local: seconds the server takes per request, like a real API",
    )
    p.add_argument("--base-url", help="API root (default: $OPENROUTER_BASE_URL or OpenRouter)")
    p.add_argument(
        "--api-key-env",
        metavar="NAME",
        help="environment variable holding the API key, sent to any --base-url "
        "(default: $OPENROUTER_API_KEY, sent only to OpenRouter)",
    )


def _parser(command: str | None = None) -> argparse.ArgumentParser:
    """The command line; ``serve``'s options (the test server's) only when it is run."""
    parser = argparse.ArgumentParser(
        prog="asyncembed", description="Batching client for OpenRouter-compatible embeddings."
    )
    parser.add_argument("--version", action="version", version=f"asyncembed {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    embed = sub.add_parser("embed", help="embed a corpus file into .npy/.jsonl/.parquet")
    embed.add_argument("input", metavar="INPUT", help=".txt, .jsonl, .csv or .parquet corpus")
    embed.add_argument("-o", "--output", required=True, help=".npy, .jsonl or .parquet file")
    _add_client_arguments(embed, model=None)
    add = embed.add_argument
    add("--field", "--column", dest="field", help="JSON field / column with the text")
    add("--id-field", "--id-column", dest="id_field", help="JSON field / column with ids")
    add("--batch-size", type=_positive, default=256, help="texts per request (default 256)")
    add("--rpm", type=_positive, help="client-side requests-per-minute limit")
    add("--tpm", type=_positive, help="client-side tokens-per-minute limit")
    add("--dimensions", type=_positive, help="ask for vectors of this length")
    add(
        "--max-cost",
        type=_non_negative,
        metavar="CREDITS",
        help="spending cap: send no request that would take the billed cost past this",
    )
    add("--resume", metavar="STATE", help="SQLite job state file: makes the run resumable")
    add("--cache", metavar="PATH", help="SQLite embeddings cache shared across runs")
    add("--encoding", choices=("base64", "float"), default="base64", help="wire encoding")
    add("--checkpoint-every", type=float, default=0.0, metavar="SECONDS", help=argparse.SUPPRESS)
    add("--query", metavar="TEXT", help="after writing (.npy), print the 3 nearest texts")
    add("--quiet", action="store_true", help="no progress display")

    serve = sub.add_parser("serve", help="run the local OpenRouter-compatible server")
    if command == "serve":  # the test server is imported only to be served
        from .testing import add_serve_arguments

        add_serve_arguments(serve)

    bench = sub.add_parser("bench", help="a quick throughput check, JSON lines on stdout")
    _add_client_arguments(bench, model="openai/text-embedding-3-small")
    bench.add_argument("--texts", type=_positive, default=10_000, help="texts per phase")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``asyncembed`` command.

    Args:
        argv: The arguments after the program name (``None``: ``sys.argv[1:]``).

    Returns:
        The exit code: 0 done, 1 API failure, 2 bad usage or input, 3 the output or
        state could not be written (a full disk), 130 interrupted (143 on SIGTERM).
    """
    try:
        argv = sys.argv[1:] if argv is None else argv
        args = _parser(next((a for a in argv if not a.startswith("-")), None)).parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error already printed
        return exc.code if isinstance(exc.code, int) else 2
    run = _Run()
    try:
        if args.command == "serve":
            from .testing import run_serve

            asyncio.run(run_serve(args))
        elif args.command == "bench":
            asyncio.run(_bench(args))
        else:
            asyncio.run(_embed(args, run))
    except KeyboardInterrupt:
        sys.stderr.write(f"asyncembed: interrupted{run.interrupted_hint()}\n")
        return 0 if args.command == "serve" else 130
    except asyncio.CancelledError:  # SIGTERM: the same clean stop as Ctrl-C
        sys.stderr.write(f"asyncembed: terminated{run.interrupted_hint()}\n")
        return 143
    except BaseException as exc:
        error = _root(exc)
        if isinstance(error, JobIOError):
            return _fail(error, 3)
        if isinstance(error, _API_ERRORS):
            return _fail(error, 1)
        if isinstance(error, (*_USER_ERRORS, _UsageError)):
            return _fail(error, 2)
        raise
    return 0


def _fail(error: BaseException, code: int) -> int:
    message = " ".join(str(error).split()) or type(error).__name__
    sys.stderr.write(f"asyncembed: error: {message}\n")
    return code


def _root(exc: BaseException) -> BaseException:
    """The first real error inside (possibly nested) exception groups."""
    while isinstance(exc, BaseExceptionGroup):
        real = [e for e in exc.exceptions if not isinstance(e, asyncio.CancelledError)]
        exc = (real or list(exc.exceptions))[0]
    return exc


@dataclasses.dataclass
class _Run:
    """What ``main`` needs to know after an interrupted ``embed``."""

    job: BulkJob | None = None

    def interrupted_hint(self) -> str:
        job = self.job
        if job is None or not job.total:
            return ""
        if job.state_path is None:
            return (
                f" at {job.done:,} of {job.total:,} texts; nothing saved"
                " (pass --resume STATE to make a run resumable)"
            )
        return (
            f" at {job.done:,} of {job.total:,} texts; progress saved in {job.state_path}"
            f" ({job.saved:,} texts): run the same command again to resume"
        )


@asynccontextmanager
async def _client(args: argparse.Namespace, **options: Any) -> AsyncIterator[Embedder]:
    """An open Embedder for the options, against an in-process server with ``--local``."""
    async with AsyncExitStack() as stack:
        if args.local:
            if args.base_url:
                raise _UsageError("--local and --base-url cannot be used together")
            dims = getattr(args, "dimensions", None) or LOCAL_DIMENSIONS
            if args.local_latency < 0:
                raise _UsageError("--local-latency must be >= 0")
            from .testing import LocalServer  # --local only: the client never needs it

            server = LocalServer(dimensions=dims, latency=args.local_latency, record_requests=False)
            await stack.enter_async_context(server)
            base_url, api_key = server.base_url, ""
        else:
            base_url, api_key = args.base_url, _api_key(args)
        embedder = Embedder(args.model, base_url=base_url, api_key=api_key, **options)
        yield await stack.enter_async_context(embedder)


def _same_file(path: str, *others: str | None) -> bool:
    resolved = Path(path).resolve()
    return any(Path(other).resolve() == resolved for other in others if other)


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _api_key(args: argparse.Namespace) -> str:
    """The key for the endpoint: the named variable's, else $OPENROUTER_API_KEY for OpenRouter."""
    name = args.api_key_env
    if name is not None:
        if not _ENV_NAME.fullmatch(name):
            # Never echo it: people pass the key itself here by mistake.
            raise _UsageError("--api-key-env takes the name of an environment variable, not a key")
        if not os.environ.get(name):
            raise _UsageError(f"--api-key-env {name}: the environment variable ${name} is not set")
        return os.environ[name]
    if not is_openrouter(resolve_base_url(args.base_url)):
        return ""  # another endpoint (vLLM, TEI...) gets a key only when one is named
    key = os.environ.get("OPENROUTER_API_KEY", "")
    if not key:
        raise _UsageError(
            "no API key: set $OPENROUTER_API_KEY (or name another variable with "
            "--api-key-env), or use --local for the offline local server"
        )
    return key


async def _embed(args: argparse.Namespace, run: _Run) -> None:
    task = asyncio.current_task()
    if task is not None:
        # A service manager's stop (SIGTERM) cancels the job like Ctrl-C does, so the
        # progress is saved instead of lost. Only the main thread can take signals.
        with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    if args.query and not args.output.lower().endswith(".npy"):
        raise _UsageError("--query needs a .npy output")
    if args.checkpoint_every < 0:
        raise _UsageError("--checkpoint-every must be >= 0")
    job = run.job = BulkJob(
        args.input,
        args.output,
        model=args.model,
        dimensions=args.dimensions,
        field=args.field,
        id_field=args.id_field,
        state=args.resume,
        checkpoint_every=args.checkpoint_every,
        endpoint="local" if args.local else resolve_base_url(args.base_url),
        batching=(batching := Batching(max_size=args.batch_size)),
    )
    if args.cache and args.local:
        raise _UsageError(
            "--cache with --local would store the local server's stand-in vectors under "
            f"the name {args.model!r}; use a separate cache, or none, for --local runs"
        )
    if args.cache and _same_file(args.cache, args.input, args.output, args.resume):
        raise _UsageError("--cache must be a file of its own, not the input, output or state")
    await job.aopen()  # validation a Ctrl-C can stop
    with job:
        options: dict[str, Any] = {
            "batching": batching,
            "limits": Limits(
                max_concurrency=args.concurrency,
                requests_per_minute=args.rpm,
                tokens_per_minute=args.tpm,
                max_cost=args.max_cost,
            ),
            "dimensions": args.dimensions,
            "encoding_format": args.encoding,
            "cache": args.cache,
        }
        async with _client(args, **options) as embedder:
            result = await _run_with_progress(job, embedder, quiet=args.quiet)
            _print_totals(result)
            if args.query:
                await _print_nearest(embedder, args, job)


async def _run_with_progress(job: BulkJob, embedder: Embedder, *, quiet: bool) -> BulkResult:
    if quiet or job.complete:
        return await job.run(embedder)
    progress = Progress(job.total, done=job.done, stream=sys.stderr)

    async def tick() -> None:
        while True:
            await anyio.sleep(progress.refresh if progress.tty else 0.5)
            progress.update(job.done, embedder.stats)

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(tick)
            try:
                result = await job.run(embedder)
            finally:
                tg.cancel_scope.cancel()
    finally:
        progress.close(job.done, embedder.stats)
    return result


def _print_totals(result: BulkResult) -> None:
    out = sys.stdout
    if result.already_finished:
        out.write(f"asyncembed: {result.output} is already complete (nothing to do)\n")
        return
    s = result.stats
    resumed = f", resumed at {result.resumed_from:,}" if result.resumed_from else ""
    out.write(
        f"asyncembed: wrote {result.rows:,} vectors of {result.dim} dims to {result.output}\n"
        f"  texts {result.embedded:,} this run{resumed}, tokens {s.prompt_tokens:,},"
        f" cost ${s.cost:.6f}, requests {s.requests:,}, retries {s.retries:,},"
        f" cache hits {s.cache_hits:,}\n"
        f"  elapsed {result.elapsed:.2f}s, {result.texts_per_second:,.0f} texts/s\n"
    )
    out.flush()


async def _print_nearest(
    embedder: Embedder, args: argparse.Namespace, job: BulkJob, k: int = 3
) -> None:
    """Embed the query and print the ``k`` rows of the output nearest to it (cosine)."""
    query = np.asarray(await embedder.embed(args.query), dtype=np.float64)
    matrix = np.load(job.output, mmap_mode="r")
    top: list[tuple[float, int]] = []  # the k best so far: memory bounded by k, not rows
    step = 65_536
    for start in range(0, len(matrix), step):
        block = np.asarray(matrix[start : start + step], dtype=np.float64)
        norms = np.linalg.norm(block, axis=1) * (np.linalg.norm(query) or 1.0)
        scores = block @ query / np.where(norms == 0, 1.0, norms)
        top.extend((float(scores[i]), start + int(i)) for i in np.argsort(-scores)[:k])
        top = sorted(top, key=lambda pair: (-pair[0], pair[1]))[:k]
    best = [row for _, row in top]
    score_of = {row: score for score, row in top}
    texts = _texts_at(job, set(best))
    lines = [f"nearest to {args.query!r} (cosine):"]
    for row in best:
        text = texts[row]
        shown = text if len(text) <= 90 else text[:87] + "..."
        lines.append(f"  {score_of[row]:+.4f}  #{row + 1}  {shown}")
    if args.local:
        lines.append("  (--local vectors are deterministic hashes, not meanings)")
    sys.stdout.write("\n".join(lines) + "\n")


def _texts_at(job: BulkJob, rows: set[int]) -> dict[int, str]:
    found: dict[int, str] = {}
    reader = open_reader(job.input, field=job.field, id_field=job.id_field)
    for row, (_, text) in enumerate(reader.records()):
        if row in rows:
            found[row] = text
            if len(found) == len(rows):
                break
    return found


async def _bench(args: argparse.Namespace) -> None:
    """N single ``embed()`` calls at once (coalesced), then one ``embed_many`` of N."""
    n = args.texts
    limits = Limits(max_concurrency=args.concurrency)
    async with _client(args, limits=limits) as embedder:
        singles = [f"bench single {i}: the quick brown fox" for i in range(n)]
        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for text in singles:
                tg.start_soon(embedder.embed, text)
        _bench_line("embed", n, time.perf_counter() - started, embedder)
        many = [f"bench many {i}: jumps over the lazy dog" for i in range(n)]
        started = time.perf_counter()
        await embedder.embed_many(many)
        _bench_line("embed_many", n, time.perf_counter() - started, embedder)


def _bench_line(phase: str, n: int, seconds: float, embedder: Embedder) -> None:
    stats = dataclasses.asdict(embedder.stats)
    line = {"phase": phase, "texts": n, "seconds": round(seconds, 4)}
    line["texts_per_s"] = round(n / seconds, 1) if seconds > 0 else None
    sys.stdout.write(json.dumps({**line, "stats": stats}) + "\n")
    sys.stdout.flush()
