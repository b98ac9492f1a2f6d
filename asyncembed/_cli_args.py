"""The ``asyncembed`` command line's words: options, help texts, examples, messages.

Every sub-command's ``--help`` starts with what it does and a few examples, and each
option shows its default. The library's messages name its Python options
(``Batching(truncate=True)``); :func:`cli_terms` turns them into the flags, for the
errors and warnings a CLI user sees. The test server's options (``serve``) come from
:mod:`asyncembed.testing`, which only :mod:`asyncembed._cli` imports, and only to serve.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import textwrap
from collections.abc import Callable, Iterator
from typing import Any

from ._version import __version__

__all__ = [
    "CLI_TERMS",
    "LOCAL_DIMENSIONS",
    "LOCAL_MODELS",
    "build_parser",
    "cli_terms",
    "warnings_on_stderr",
]

LOCAL_DIMENSIONS = 384
"""The vector length of ``--local`` when ``--dimensions`` is not given."""

LOCAL_MODELS = (
    "baai/bge-m3",
    "google/gemini-embedding-001",
    "nvidia/llama-nemotron-embed-vl-1b-v2",
    "openai/text-embedding-3-large",
    "openai/text-embedding-3-small",
    "perplexity/pplx-embed-v1-0.6b",
    "qwen/qwen3-embedding-0.6b",
    "qwen/qwen3-embedding-4b",
    "qwen/qwen3-embedding-8b",
)
"""The OpenRouter model ids ``--local`` serves (``--local-model`` adds others)."""

CLI_TERMS = (
    ("Batching(truncate=True)", "--truncate"),
    ("max_input_tokens=", "--max-input-tokens "),
    ("allow_insecure=True", "--allow-insecure"),
    ("Embedder(api_key=...)", "--api-key-env NAME"),
    ("max_cost=", "--max-cost "),
    ("max_cost is set", "--max-cost is set"),
    ("overwrite=True", "--overwrite"),
)
"""The library's words for its options, as its messages write them, and the flags."""


def cli_terms(message: str) -> str:
    """``message`` with the Python options it names replaced by the CLI's flags."""
    for python, flag in CLI_TERMS:
        message = message.replace(python, flag)
    return message


class _StderrHandler(logging.Handler):
    """The library's warnings as ``asyncembed: warning:`` lines, in the CLI's terms."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            # On a terminal, erase the progress bar first so the warning gets a line.
            erase = "\r\x1b[2K" if sys.stderr.isatty() else ""
            message = " ".join(record.getMessage().split())
            sys.stderr.write(f"{erase}asyncembed: warning: {cli_terms(message)}\n")
        except Exception:
            self.handleError(record)


@contextlib.contextmanager
def warnings_on_stderr() -> Iterator[None]:
    """While inside, the ``asyncembed`` logger's warnings go to stderr in the CLI's terms."""
    logger = logging.getLogger("asyncembed")
    handler = _StderrHandler(logging.WARNING)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


_WIDTH = 79


def _para(text: str, indent: str = "") -> str:
    # Hyphens stay: model names and flags must not be broken across lines.
    return textwrap.fill(
        text, _WIDTH, initial_indent=indent, subsequent_indent=indent, break_on_hyphens=False
    )


def _about(summary: str, examples: str) -> str:
    """A description: the summary (wrapped here: the formatter keeps it raw), then examples."""
    return f"{_para(summary)}\n\nexamples:\n{examples}"


_EXIT = _para(
    "exit status: 0 done, 1 the API failed, 2 bad usage or input, 3 the output or state "
    "could not be written (a full disk), 130 interrupted (Ctrl-C), 143 terminated (SIGTERM)"
)
_SERVED = (
    _para(
        f"--local serves these models, with vectors of {LOCAL_DIMENSIONS} dimensions "
        "unless --dimensions (add others with --local-model NAME):"
    )
    + "\n"
    + _para(", ".join(LOCAL_MODELS), "  ")
)

_MAIN = _about(
    "Batching client for OpenRouter-compatible embeddings: embed a corpus file, run a "
    "local test server, or measure throughput.",
    """\
  asyncembed embed corpus.txt -o vectors.npy --model openai/text-embedding-3-small
  asyncembed embed corpus.txt -o demo.npy --local --model openai/text-embedding-3-small
  asyncembed serve --port 8000
  asyncembed bench --local""",
)

_EMBED = _about(
    "Embed every text of INPUT into OUTPUT, in input order, with progress on stderr and "
    "totals on stdout. OUTPUT is written under a temporary name and appears only when "
    "complete; an existing OUTPUT is refused unless --overwrite is given or --resume "
    "names the state of its job.",
    """\
  # OpenRouter, the key in $OPENROUTER_API_KEY
  asyncembed embed corpus.txt -o vectors.npy --model openai/text-embedding-3-small

  # a CSV column with ids, resumable, cached, 512 dimensions
  asyncembed embed reviews.csv --column body --id-column review_id -o reviews.parquet \\
      --model openai/text-embedding-3-small --dimensions 512 \\
      --resume reviews.state --cache cache.sqlite

  # a self-hosted OpenAI-compatible server, no key
  asyncembed embed docs.jsonl -o docs.vectors.jsonl --model BAAI/bge-m3 \\
      --base-url http://127.0.0.1:8080/v1

  # offline rehearsal against the built-in local server, then a search
  asyncembed embed corpus.txt -o demo.npy --local --overwrite \\
      --query "the sea at night" --model openai/text-embedding-3-small""",
)

_SERVE = _about(
    "Run the local OpenRouter-compatible embeddings server until Ctrl-C. It prints "
    "'asyncembed local server listening on URL' once it accepts connections; point any "
    "OpenAI-compatible client at that URL.",
    """\
  asyncembed serve --port 8000
  asyncembed serve --port 0 --model openai/text-embedding-3-small=1536 --latency 0.2
  asyncembed serve --api-key sk-test --rpm 60 --fault-rate 0.05 --seed 7""",
)

_BENCH = _about(
    "A quick throughput check: N concurrent single embed() calls, then one embed_many() "
    "of N other texts, one JSON line per phase on stdout. Against a real endpoint it "
    "spends real credits.",
    """\
  asyncembed bench --local
  asyncembed bench --local --texts 50000 --concurrency 32
  asyncembed bench --base-url http://127.0.0.1:8000/api/v1 --texts 2000""",
)


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


def _subcommand(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    summary: str,
    description: str,
) -> argparse.ArgumentParser:
    return sub.add_parser(
        name,
        help=summary,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,  # keeps the examples' layout
    )


def _add_client_arguments(p: argparse.ArgumentParser, *, model: str | None) -> None:
    api = p.add_argument_group("model and endpoint")
    if model is None:
        api.add_argument("--model", required=True, help=f"embedding model, e.g. {LOCAL_MODELS[4]}")
    else:
        api.add_argument("--model", default=model, help="embedding model (default: %(default)s)")
    api.add_argument(
        "--base-url",
        metavar="URL",
        help="API root (default: $OPENROUTER_BASE_URL, else OpenRouter); not with --local",
    )
    api.add_argument(
        "--api-key-env",
        metavar="NAME",
        help="environment variable holding the API key, sent to any --base-url "
        "(default: $OPENROUTER_API_KEY, sent only to OpenRouter)",
    )
    api.add_argument(
        "--allow-insecure",
        action="store_true",
        help="allow sending the key over plain http:// to a host other than this machine",
    )
    api.add_argument(
        "--concurrency",
        type=_positive,
        metavar="N",
        default=16,
        help="requests in flight at most (default: %(default)s)",
    )
    local = p.add_argument_group("local server (offline, no key)")
    local.add_argument(
        "--local",
        action="store_true",
        help="use an in-process local server (no key, no network): deterministic "
        "stand-in vectors for the models listed below",
    )
    local.add_argument(
        "--local-model",
        action="append",
        default=[],
        metavar="NAME",
        help="with --local: also serve this model name (repeatable)",
    )
    local.add_argument(
        "--local-latency",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="with --local: about this long per request (within 0.5x-1.5x, as a real "
        "API varies) (default: %(default)s)",
    )


def _add_embed_arguments(embed: argparse.ArgumentParser) -> None:
    files = embed.add_argument_group("input and output")
    add = files.add_argument
    add(
        "input",
        metavar="INPUT",
        help="the corpus: .txt (a text per line), .jsonl, .csv or .parquet",
    )
    add(
        "-o",
        "--output",
        required=True,
        help="a .npy, .jsonl or .parquet file; its folder must exist",
    )
    add("--overwrite", action="store_true", help="replace OUTPUT if it exists (else refused)")
    add(
        "--field",
        "--column",
        dest="field",
        metavar="NAME",
        help="JSON field / column with the text (default: text)",
    )
    add(
        "--id-field",
        "--id-column",
        dest="id_field",
        metavar="NAME",
        help="JSON field / column with ids, kept in .jsonl/.parquet (default: row numbers)",
    )
    _add_client_arguments(embed, model=None)
    batching = embed.add_argument_group("batching and limits")
    add = batching.add_argument
    positive: dict[str, Any] = {"type": _positive, "metavar": "N"}
    add("--batch-size", **positive, default=256, help="texts per request (default: %(default)s)")
    add("--rpm", **positive, help="client-side requests-per-minute limit (default: none)")
    add("--tpm", **positive, help="client-side tokens-per-minute limit (default: none)")
    add("--dimensions", **positive, help="ask for vectors of this length (default: the model's)")
    add(
        "--max-input-tokens",
        type=_positive,
        default=8192,
        metavar="N",
        help="longest text accepted, in estimated tokens (default: %(default)s)",
    )
    add(
        "--truncate",
        action="store_true",
        help="cut texts over --max-input-tokens instead of failing",
    )
    add(
        "--max-cost",
        type=_non_negative,
        metavar="CREDITS",
        help="spending cap: send no request that would take the billed cost past this "
        "(default: no cap)",
    )
    add(
        "--encoding",
        choices=("base64", "float"),
        default="base64",
        help="wire encoding (default: %(default)s; falls back to float when a model needs it)",
    )
    runs = embed.add_argument_group("resuming, caching, display")
    add = runs.add_argument
    add(
        "--resume",
        metavar="STATE",
        help="SQLite job state file: makes the run resumable (run the same command again)",
    )
    add("--cache", metavar="PATH", help="SQLite embeddings cache shared across runs")
    add("--checkpoint-every", type=float, default=0.0, metavar="SECONDS", help=argparse.SUPPRESS)
    add("--query", metavar="TEXT", help="after writing (.npy), print the 3 nearest texts")
    add("--quiet", action="store_true", help="no progress display")


def build_parser(
    command: str | None = None,
    *,
    add_serve_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
) -> argparse.ArgumentParser:
    """The command line; ``serve``'s options only when ``command`` is ``"serve"``.

    Args:
        command: The sub-command about to run (the first argument that is not an
            option), or ``None``.
        add_serve_arguments: Adds the test server's options to ``serve`` (called only
            for ``serve``, so the test server is imported only to be served).
    """
    parser = argparse.ArgumentParser(
        prog="asyncembed",
        description=_MAIN,
        epilog="Run 'asyncembed COMMAND --help' for the options of a command.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"asyncembed {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    embed = _subcommand(sub, "embed", "embed a corpus file into .npy/.jsonl/.parquet", _EMBED)
    embed.epilog = f"{_SERVED}\n\n{_EXIT}"
    _add_embed_arguments(embed)
    serve = _subcommand(sub, "serve", "run the local OpenRouter-compatible server", _SERVE)
    if command == "serve" and add_serve_arguments is not None:
        add_serve_arguments(serve)
    bench = _subcommand(sub, "bench", "a quick throughput check, JSON lines on stdout", _BENCH)
    bench.epilog = f"{_SERVED}\n\n{_EXIT}"
    _add_client_arguments(bench, model=LOCAL_MODELS[4])
    bench.add_argument(
        "--texts",
        type=_positive,
        default=10_000,
        metavar="N",
        help="texts per phase (default: %(default)s)",
    )
    return parser
