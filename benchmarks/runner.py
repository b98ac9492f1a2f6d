"""Shared machinery: the server process, peer processes, machine info, result files.

Every peer runs in its own interpreter (``python -m benchmarks.peers.<peer> '<json>'``)
and prints one JSON line, so imports, allocator state and peak RSS never leak from one
library into another (msgspec's benchmark layout). The local server runs in a third
process (``asyncembed.testing.serve_main``), as a real server would.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from types import TracebackType
from typing import Any

import psutil  # type: ignore[import-untyped]

__all__ = [
    "ROOT",
    "BenchResult",
    "Options",
    "Peer",
    "PeerError",
    "Server",
    "Table",
    "fmt",
    "machine_info",
    "ratio",
    "run_peer",
    "throughput_table",
    "versions",
    "write_result",
]

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
PYTHON = sys.executable
MODEL = "openai/text-embedding-3-small"
_LISTENING = "asyncembed local server listening on "
# One OpenBLAS thread in every peer and server process: numpy's idle OpenBLAS worker
# threads spin after each call, and time.process_time() (all threads) counts that spin
# as client CPU, a few µs per text that no client code spends.
PEER_ENV = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
_SERVE = "import sys; from asyncembed.testing import serve_main; sys.exit(serve_main(sys.argv[1:]))"


@dataclass(frozen=True, slots=True, kw_only=True)
class Options:
    """How the run was asked for.

    Attributes:
        quick: Small sizes, one round: a smoke run of a few seconds per benchmark.
        json: Print one JSON line per benchmark instead of Markdown tables.
        write: Write ``results/<name>.md`` and ``.json`` (off for quick runs by default).
    """

    quick: bool = False
    json: bool = False
    write: bool = True

    def size(self, full: int, quick: int) -> int:
        """``quick`` in quick mode, otherwise ``full``."""
        return quick if self.quick else full


class PeerError(RuntimeError):
    """A peer process failed or printed no JSON line."""


class Server:
    """The local OpenRouter-compatible server in its own process.

    Usage::

        with Server(dimensions=1536, latency=0.05) as server:
            run_peer("raw_aiohttp", {"base_url": server.base_url, ...})

    Args:
        dimensions: Vector length of every model.
        latency: Seconds the server adds to every answer.
        extra: More ``asyncembed serve`` flags.
    """

    def __init__(
        self, *, dimensions: int = 1536, latency: float = 0.0, extra: tuple[str, ...] = ()
    ) -> None:
        self.args = [
            "--port",
            "0",
            "--dimensions",
            str(dimensions),
            "--latency",
            str(latency),
            "--max-inputs",
            "4096",
            *extra,
        ]
        self.base_url = ""
        self._proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> Server:
        self._proc = subprocess.Popen(
            [PYTHON, "-c", _SERVE, *self.args],
            cwd=ROOT,
            env=PEER_ENV,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._proc.stdout is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = self._proc.stdout.readline()
            if not line:
                break
            if line.startswith(_LISTENING):
                self.base_url = line[len(_LISTENING) :].strip()
                return self
        self._stop()
        raise PeerError(f"the local server did not start ({' '.join(self.args)})")

    def __exit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop()

    @property
    def pid(self) -> int:
        """The server's process id."""
        assert self._proc is not None
        return self._proc.pid

    def cpu_seconds(self) -> float:
        """User + system CPU seconds the server process has used so far."""
        times = psutil.Process(self.pid).cpu_times()
        return float(times.user + times.system)

    def _stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGINT)  # serve_main returns 0 on Ctrl-C
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_peer(
    peer: str, config: dict[str, Any], *, timeout: float = 600, server: Server | None = None
) -> dict[str, Any]:
    """Run ``benchmarks/peers/<peer>.py`` with ``config`` and return its JSON line.

    Args:
        peer: The module name under ``benchmarks.peers``.
        config: Passed as JSON in ``argv[1]``.
        timeout: Seconds before the peer is killed.
        server: When given, the server's CPU seconds during the peer are added as
            ``server_cpu_s`` (it includes the peer's start-up and warm-up round).

    Raises:
        PeerError: the peer failed, timed out or printed no JSON.
    """
    before = server.cpu_seconds() if server else 0.0
    try:
        proc = subprocess.run(
            [PYTHON, "-m", f"benchmarks.peers.{peer}", json.dumps(config)],
            cwd=ROOT,
            env=PEER_ENV,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise PeerError(f"peer {peer} timed out after {timeout} s") from None
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode or not lines:
        tail = "\n".join(proc.stderr.splitlines()[-15:])
        raise PeerError(f"peer {peer} failed (exit {proc.returncode}):\n{tail}")
    result: dict[str, Any] = json.loads(lines[-1])
    if server is not None:
        result["server_cpu_s"] = server.cpu_seconds() - before
    return result


def versions() -> dict[str, str]:
    """Versions of Python and of every library a peer uses."""
    found = {"python": platform.python_version()}
    for dist in (
        "asyncembed",
        "numpy",
        "aiohttp",
        "msgspec",
        "openai",
        "orjson",
        "pydantic",
        "aiodataloader",
        "batchlet",
        "uvloop",
    ):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = "not installed"
    return found


def machine_info() -> dict[str, Any]:
    """CPU, cores, memory, OS, commit and date of this run."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    except OSError:
        commit = ""
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "os": f"{platform.system()} {platform.release()}",
        "commit": commit,
    }


@dataclass(slots=True, kw_only=True)
class Table:
    """One Markdown table: a header and rows of already formatted cells."""

    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)

    def markdown(self) -> str:
        """The table as GitHub-flavoured Markdown, under a bold title."""
        lines = [f"**{self.title}**", "", "| " + " | ".join(self.columns) + " |"]
        lines.append("|" + "|".join("---" if i == 0 else "--:" for i in range(len(self.columns))))
        lines[-1] += "|"
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines)


@dataclass(slots=True, kw_only=True)
class BenchResult:
    """What one benchmark found: tables for people, raw peer lines for machines."""

    name: str
    title: str
    question: str
    tables: list[Table] = field(default_factory=list)
    targets: list[tuple[str, str, str, bool]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def target(self, what: str, measured: str, goal: str, met: bool) -> None:
        """Record a target from the issue and whether this run met it."""
        self.targets.append((what, measured, goal, met))

    def markdown(self, *, heading: str = "##") -> str:
        """Question, tables, targets and notes as Markdown."""
        parts = [f"{heading} {self.title}", "", self.question, ""]
        for table in self.tables:
            parts += [table.markdown(), ""]
        if self.targets:
            targets = Table(title="Targets", columns=["target", "measured", "goal", "met"])
            for what, measured, goal, met in self.targets:
                targets.rows.append([what, measured, goal, "yes" if met else "**no**"])
            parts += [targets.markdown(), ""]
        parts += [f"- {note}" for note in self.notes]
        return "\n".join(parts).rstrip() + "\n"

    def as_json(self, machine: dict[str, Any], libs: dict[str, str]) -> dict[str, Any]:
        """Everything, for ``results/<name>.json`` and ``--json``."""
        return {
            "name": self.name,
            "title": self.title,
            "machine": machine,
            "versions": libs,
            "seconds": round(self.seconds, 1),
            "targets": [
                {"target": w, "measured": m, "goal": g, "met": ok} for w, m, g, ok in self.targets
            ],
            "tables": [
                {"title": t.title, "columns": t.columns, "rows": t.rows} for t in self.tables
            ],
            "notes": self.notes,
            "raw": self.raw,
        }


def header(machine: dict[str, Any], libs: dict[str, str]) -> str:
    """The Markdown lines naming the date, machine and versions of a run."""
    lib_text = ", ".join(f"{k} {v}" for k, v in libs.items())
    return (
        f"_Run {machine['date']} on {machine['cpu']} ({machine['cores']} cores, "
        f"{machine['memory_gb']} GB, {machine['os']}), commit {machine['commit']}; {lib_text}._\n"
    )


def write_result(result: BenchResult, machine: dict[str, Any], libs: dict[str, str]) -> Path:
    """Write ``results/<name>.md`` and ``results/<name>.json``; return the Markdown path."""
    RESULTS.mkdir(exist_ok=True)
    md = RESULTS / f"{result.name}.md"
    text = result.markdown(heading="#")
    title, _, rest = text.partition("\n")
    md.write_text(f"{title}\n\n{header(machine, libs)}{rest}")
    (RESULTS / f"{result.name}.json").write_text(
        json.dumps(result.as_json(machine, libs), indent=1) + "\n"
    )
    return md


def fmt(value: float, digits: int = 3) -> str:
    """A number with ``digits`` significant figures and thousands separators."""
    if value == 0 or not (abs(value) < float("inf")):
        return str(value)
    if abs(value) >= 10 ** (digits - 1):
        return f"{value:,.0f}"
    return f"{value:,.{digits}g}" if abs(value) >= 1 else f"{value:.{digits}g}"


def ratio(value: float, base: float | None) -> str:
    """``value / base`` as ``"1.23x"``; ``"-"`` without a base."""
    if not base:
        return "-"
    r = value / base
    return f"{r:.2f}x" if r >= 0.1 else f"{r:.2g}x"


@dataclass(slots=True)
class Peer:
    """One peer's run: its label, configuration and JSON line (or the error)."""

    label: str
    module: str
    config: dict[str, Any]
    line: dict[str, Any] | None = None
    error: str = ""

    def run(self, server: Server | None = None) -> Peer:
        """Run the peer; a failure is kept in :attr:`error`, not raised."""
        try:
            self.line = run_peer(self.module, self.config, server=server)
        except PeerError as exc:
            self.error = str(exc).strip().splitlines()[-1]
        return self


def throughput_table(
    title: str, peers: list[Peer], baselines: list[tuple[str, Peer]], *, rounds: int
) -> Table:
    """Texts/s and CPU µs/text per peer, each with ratios against the named baselines.

    The server's CPU per text covers the whole peer run, warm-up round included.
    """
    columns = ["client", "texts", "texts/s"]
    columns += [f"vs {name}" for name, _ in baselines]
    columns += ["client CPU µs/text"]
    columns += [f"vs {name}" for name, _ in baselines]
    columns += ["server CPU µs/text", "peak RSS MB"]
    table = Table(title=title, columns=columns)
    for peer in peers:
        line = peer.line
        if line is None:
            table.rows.append([peer.label, f"failed: {peer.error}"] + [""] * (len(columns) - 2))
            continue
        bases = [b.line for _, b in baselines]
        row = [peer.label, f"{line['n']:,}", fmt(line["texts_per_s"])]
        row += [ratio(line["texts_per_s"], b["texts_per_s"] if b else None) for b in bases]
        row += [fmt(line["cpu_us_per_text"])]
        row += [ratio(line["cpu_us_per_text"], b["cpu_us_per_text"] if b else None) for b in bases]
        row += [
            fmt(line["server_cpu_s"] / (line["n"] * (rounds + 1)) * 1e6)
            if "server_cpu_s" in line
            else "-",
            fmt(line["peak_rss_mb"]),
        ]
        table.rows.append(row)
    return table
