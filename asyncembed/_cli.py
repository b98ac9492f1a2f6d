"""The ``asyncembed`` command: ``embed`` a corpus file, ``serve`` the local server, ``bench``.

A thin adapter: it parses options (:mod:`asyncembed._cli_args`), builds an
:class:`~asyncembed.Embedder`, and hands the work to :class:`~asyncembed._bulk.BulkJob`
and :class:`~asyncembed._bulk.Progress`.

Exit codes: 0 done; 1 the API failed; 2 bad usage or input (one ``asyncembed: error:``
line on stderr, never a traceback); 3 the output or state could not be written; 130
interrupted (Ctrl-C), progress saved when ``--resume`` names a state file.

Output rule: an existing OUTPUT is refused unless ``--overwrite`` is given or
``--resume`` names the state of its job. The output is written under a temporary name
and renamed over OUTPUT only when complete, so a replaced OUTPUT is left untouched when
the run fails. Without ``--resume`` an interrupted run keeps nothing; with it, running
the same command again continues where it stopped.

The library's messages name its Python options (``Batching(truncate=True)``); what
reaches a CLI user names the flags instead (:func:`cli_terms`).
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

from ._bulk import BulkJob, BulkResult, Progress, nearest_rows, texts_at
from ._cli_args import (
    CLI_TERMS,
    LOCAL_DIMENSIONS,
    LOCAL_MODELS,
    build_parser,
    cli_terms,
    warnings_on_stderr,
)
from ._config import Batching, Limits
from ._embedder import Embedder
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
from ._transport import is_openrouter, resolve_base_url, shown_url

__all__ = ["CLI_TERMS", "LOCAL_DIMENSIONS", "LOCAL_MODELS", "cli_terms", "main"]

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


def _add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    from .testing import add_serve_arguments  # the test server is imported only to be served

    add_serve_arguments(parser)


def main(argv: list[str] | None = None) -> int:
    """Run the ``asyncembed`` command.

    Args:
        argv: The arguments after the program name (``None``: ``sys.argv[1:]``).

    Returns:
        The exit code: 0 done (or the help, for no arguments), 1 API failure, 2 bad
        usage or input, 3 the output or state could not be written (a full disk), 130
        interrupted (143 on SIGTERM).
    """
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command, add_serve_arguments=_add_serve_arguments)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error already printed
        return exc.code if isinstance(exc.code, int) else 2
    if args.command is None:
        parser.print_help()
        return 0
    run = _Run()
    try:
        with warnings_on_stderr():
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
    sys.stderr.write(f"asyncembed: error: {cli_terms(message)}\n")
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


def _check_local(args: argparse.Namespace) -> dict[str, int]:
    """The models ``--local`` serves, with their vector length; refuse what it cannot do."""
    if args.base_url:
        raise _UsageError("--local and --base-url cannot be used together")
    if args.local_latency < 0:
        raise _UsageError("--local-latency must be >= 0")
    names = sorted({*LOCAL_MODELS, *args.local_model})
    if args.model not in names:
        # As the real service would refuse it, but before anything is read or written.
        raise _UsageError(
            f"--local serves these models: {', '.join(names)}; not {args.model!r} "
            f"(add it with --local-model {args.model})"
        )
    dims = getattr(args, "dimensions", None) or LOCAL_DIMENSIONS
    return dict.fromkeys(names, dims)


@asynccontextmanager
async def _client(args: argparse.Namespace, **options: Any) -> AsyncIterator[Embedder]:
    """An open Embedder for the options, against an in-process server with ``--local``."""
    async with AsyncExitStack() as stack:
        if args.local:
            models = _check_local(args)
            from .testing import LocalServer  # --local only: the client never needs it

            server = LocalServer(
                models=models,
                latency=args.local_latency,
                # Equal latencies make concurrent requests land together, and the
                # progress move in steps of `concurrency` batches: vary them, as an API does.
                latency_jitter=0.5,
                record_requests=False,
            )
            await stack.enter_async_context(server)
            base_url, api_key = server.base_url, ""
        else:
            base_url, api_key = args.base_url, _api_key(args)
        embedder = Embedder(
            args.model,
            base_url=base_url,
            api_key=api_key,
            allow_insecure=args.allow_insecure,
            **options,
        )
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


def _check_embed_options(args: argparse.Namespace) -> None:
    """Refuse a bad combination of options before any file is read or created."""
    if args.query and not args.output.lower().endswith(".npy"):
        raise _UsageError("--query needs a .npy output")
    if args.checkpoint_every < 0:
        raise _UsageError("--checkpoint-every must be >= 0")
    if args.local:
        _check_local(args)
    if args.cache and args.local:
        raise _UsageError(
            "--cache with --local would store the local server's stand-in vectors under "
            f"the name {args.model!r}; use a separate cache, or none, for --local runs"
        )
    if args.cache and _same_file(args.cache, args.input, args.output, args.resume):
        raise _UsageError("--cache must be a file of its own, not the input, output or state")


async def _embed(args: argparse.Namespace, run: _Run) -> None:
    task = asyncio.current_task()
    if task is not None:
        # A service manager's stop (SIGTERM) cancels the job like Ctrl-C does, so the
        # progress is saved instead of lost. Only the main thread can take signals.
        with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    _check_embed_options(args)
    batching = Batching(
        max_size=args.batch_size,
        max_input_tokens=args.max_input_tokens,
        truncate=args.truncate,
    )
    job = run.job = BulkJob(
        args.input,
        args.output,
        model=args.model,
        dimensions=args.dimensions,
        field=args.field,
        id_field=args.id_field,
        state=args.resume,
        checkpoint_every=args.checkpoint_every,
        endpoint="local" if args.local else shown_url(resolve_base_url(args.base_url)),
        batching=batching,
        overwrite=args.overwrite,
    )
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
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(progress.follow, lambda: job.done, lambda: embedder.stats)
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


async def _print_nearest(embedder: Embedder, args: argparse.Namespace, job: BulkJob) -> None:
    """Embed the query and print the 3 rows of the output nearest to it (cosine)."""
    best = nearest_rows(job.output, await embedder.embed(args.query), k=3)
    texts = texts_at(job.input, {row for row, _ in best}, field=job.field, id_field=job.id_field)
    lines = [f"nearest to {args.query!r} (cosine):"]
    for row, score in best:
        text = texts[row]
        shown = text if len(text) <= 90 else text[:87] + "..."
        lines.append(f"  {score:+.4f}  #{row + 1}  {shown}")
    if args.local:
        lines.append("  (--local vectors are deterministic hashes, not meanings)")
    sys.stdout.write("\n".join(lines) + "\n")


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
