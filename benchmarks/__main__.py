"""``python -m benchmarks [names...] [--quick] [--json] [--no-write]``: run benchmarks."""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import sys
import time
from pathlib import Path
from types import ModuleType

from benchmarks.runner import Options, PeerError, machine_info, versions, write_result


def discover() -> dict[str, ModuleType]:
    """Every ``bench_*.py`` module, by its short name (``coalesce`` for ``bench_coalesce``)."""
    here = Path(__file__).parent
    names = sorted(m.name for m in pkgutil.iter_modules([str(here)]) if m.name.startswith("bench_"))
    modules = [importlib.import_module(f"benchmarks.{name}") for name in names]
    return {module.NAME: module for module in modules}


ORDER = [
    "coalescers",
    "coalesce",
    "bulk",
    "latency_hiding",
    "added_latency",
    "loop_stalls",
    "decode",
    "memory",
    "shared_budget",
]


def main(argv: list[str] | None = None) -> int:
    """Run the named benchmarks (all by default); return 0 when every one ran."""
    benches = discover()
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("names", nargs="*", help=f"some of: {', '.join(benches)}")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--json", action="store_true", help="one JSON line per benchmark")
    parser.add_argument(
        "--write",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="write benchmarks/results/*.md and *.json (default: yes, except with --quick)",
    )
    parser.add_argument("--versions", action="store_true", help="print versions and exit")
    args = parser.parse_args(argv)
    machine, libs = machine_info(), versions()
    if args.versions:
        print(json.dumps({"machine": machine, "versions": libs}))
        return 0
    names = [name.removeprefix("bench_") for name in args.names] or [
        name for name in ORDER if name in benches
    ] + sorted(set(benches) - set(ORDER))
    unknown = [name for name in names if name not in benches]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    write = args.write if args.write is not None else not args.quick
    opts = Options(quick=args.quick, json=args.json, write=write)
    failed = []
    for name in names:
        t0 = time.perf_counter()
        try:
            result = benches[name].run(opts)
        except PeerError as exc:
            print(f"benchmark {name} failed: {exc}", file=sys.stderr)
            failed.append(name)
            continue
        result.seconds = time.perf_counter() - t0
        if args.json:
            print(json.dumps(result.as_json(machine, libs)), flush=True)
        else:
            print(result.markdown(), flush=True)
            print(f"({name}: {result.seconds:.1f} s)\n", flush=True)
        if write:
            write_result(result, machine, libs)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
