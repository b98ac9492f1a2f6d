"""``asyncembed serve``: run the local server from a shell until interrupted."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from typing import TextIO

from ._faults import Fault, Faults
from ._server import LocalServer

__all__ = ["add_serve_arguments", "run_serve", "serve_main"]

LISTENING = "asyncembed local server listening on {url}"
"""The one line printed once the server accepts connections."""


def _name_value(kind: type[float] | type[int]) -> Callable[[str], tuple[str, float]]:
    def parse(text: str) -> tuple[str, float]:
        name, sep, value = text.rpartition("=")
        if not sep or not name:
            raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
        try:
            return name, kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad number in {text!r}") from None

    return parse


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the local server's options to ``parser`` (for ``asyncembed serve``).

    Args:
        parser: The parser (or sub-command parser) to extend.
    """
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="interface to bind (default: %(default)s)")
    add(
        "--port",
        type=int,
        default=8000,
        metavar="N",
        help="port, 0 for any free one (default: %(default)s)",
    )
    add(
        "--dimensions",
        type=int,
        default=1536,
        metavar="N",
        help="vector length (default: %(default)s)",
    )
    add(
        "--model",
        dest="models",
        action="append",
        type=_name_value(int),
        metavar="NAME=DIMS",
        help="accept only these models, with these vector lengths (repeatable; default: any model)",
    )
    add(
        "--api-key",
        default=None,
        metavar="KEY",
        help="require this bearer key (default: accept any)",
    )
    add(
        "--latency",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="seconds added to every answer (default: 0)",
    )
    add(
        "--latency-per-input",
        type=float,
        metavar="SECONDS",
        default=0.0,
        help="seconds added per input (default: 0)",
    )
    add(
        "--latency-jitter",
        type=float,
        default=0.0,
        metavar="FRACTION",
        help="vary each answer's added seconds within 1 +- FRACTION, seeded (default: 0)",
    )
    add(
        "--max-inputs",
        type=int,
        metavar="N",
        default=2048,
        help="most inputs per request, 0 for no limit (default: %(default)s)",
    )
    add(
        "--rpm",
        type=int,
        default=None,
        metavar="N",
        help="requests per minute before 429 (default: none)",
    )
    add(
        "--tpm",
        type=int,
        default=None,
        metavar="N",
        help="tokens per minute before 429 (default: none)",
    )
    add(
        "--price-per-token",
        type=float,
        metavar="USD",
        default=2e-8,
        help="usage.cost per token in USD (default: %(default)s)",
    )
    add(
        "--fault-rate",
        type=float,
        metavar="P",
        default=0.0,
        help="probability of a random 429/502/503 per request (default: %(default)s)",
    )
    add(
        "--fault",
        dest="fault_rates",
        action="append",
        type=_name_value(float),
        metavar="FAULT=P",
        help="probability of one fault, e.g. 429=0.05, truncated=0.01 (repeatable)",
    )
    add(
        "--seed",
        type=int,
        default=0,
        metavar="N",
        help="seed of the fault RNG (default: %(default)s)",
    )
    add(
        "--reject-input",
        dest="reject_inputs",
        action="append",
        default=[],
        metavar="TEXT",
        help="answer 400 to any request containing this text (repeatable)",
    )
    add(
        "--base64-unsupported",
        dest="base64_unsupported",
        action="append",
        default=[],
        metavar="MODEL",
        help="this model answers base64 requests with empty data (repeatable)",
    )
    add(
        "--keepalive-timeout",
        type=float,
        metavar="SECONDS",
        default=75.0,
        help="idle keep-alive seconds (default: %(default)s)",
    )


def _server_from_args(args: argparse.Namespace) -> LocalServer:
    rates: dict[Fault, float] = {}
    if args.fault_rate:
        rates.update(Faults.uniform(args.fault_rate).fault_rates)
    for name, rate in args.fault_rates or ():
        fault = Fault.parse(name)
        rates[fault] = rates.get(fault, 0.0) + rate
    return LocalServer(
        host=args.host,
        port=args.port,
        dimensions=args.dimensions,
        models=dict(args.models) if args.models else None,
        api_key=args.api_key,
        latency=args.latency,
        latency_per_input=args.latency_per_input,
        latency_jitter=args.latency_jitter,
        max_inputs=args.max_inputs or None,
        rpm=args.rpm,
        tpm=args.tpm,
        price_per_token=args.price_per_token,
        faults=Faults(rates=rates, seed=args.seed) if rates else None,
        reject_inputs=args.reject_inputs,
        base64_unsupported_models=args.base64_unsupported,
        keepalive_timeout=args.keepalive_timeout,
        # A long-running server must not grow: keep counters, not records.
        record_requests=False,
    )


async def run_serve(args: argparse.Namespace, *, out: TextIO | None = None) -> None:
    """Serve until cancelled, after printing ``LISTENING`` with the real URL.

    Args:
        args: Options parsed by a parser given :func:`add_serve_arguments`.
        out: Where the "listening" line goes (default ``sys.stdout``).

    Raises:
        ValueError: If an option is out of range.
        OSError: If the address cannot be bound.
    """
    server = _server_from_args(args)
    async with server:
        stream = sys.stdout if out is None else out
        stream.write(LISTENING.format(url=server.base_url) + "\n")
        stream.flush()
        await asyncio.Event().wait()  # until cancelled (Ctrl-C cancels asyncio.run's task)


def serve_main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and serve until Ctrl-C.

    Returns:
        0 after Ctrl-C, 2 for a bad option (the message goes to stderr).
    """
    parser = argparse.ArgumentParser(
        prog="asyncembed serve", description="Run a local OpenRouter-compatible embeddings server."
    )
    add_serve_arguments(parser)
    args = parser.parse_args(argv)
    try:
        asyncio.run(run_serve(args))
    except KeyboardInterrupt:
        return 0
    except (ValueError, OSError) as exc:
        sys.stderr.write(f"asyncembed serve: error: {exc}\n")
        return 2
    return 0
