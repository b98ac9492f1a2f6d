"""Progress of a bulk job: a live one-line bar on a terminal, periodic plain lines otherwise.

No dependency: the bar is redrawn in place with ``\\r`` and the ANSI "erase line"
sequence. What it shows comes from two sources handed to :meth:`Progress.update`: the
rows written so far (the job's count) and the Embedder's :class:`~asyncembed.Stats`
snapshot (tokens, cost, retries). Time is a parameter (``clock=``), so tests drive it.

Usage::

    progress = Progress(total=job.total, done=job.done, stream=sys.stderr)
    while running:
        progress.update(job.done, embedder.stats)   # cheap: draws only when due
    progress.close(job.done, embedder.stats)        # the final line
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from typing import TextIO

from .._stats import Stats

__all__ = ["Progress", "format_duration"]

_ERASE = "\r\x1b[2K"


def format_duration(seconds: float) -> str:
    """Format seconds as ``"42s"``, ``"3m05s"`` or ``"2h03m"`` (ETA and elapsed times)."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _si(n: float) -> str:
    """``1234`` → ``"1.2k"``; ``3_400_000`` → ``"3.4M"`` (tokens on a narrow bar)."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return f"{n:.0f}"


class Progress:
    """Shows a bulk job's progress on ``stream``: a live bar on a TTY, plain lines otherwise.

    Args:
        total: Rows the finished job holds.
        done: Rows already done when this run started (a resumed job): the rate and
            the ETA count only this run's rows.
        stream: Where to write (the CLI uses ``sys.stderr``).
        tty: Draw the live bar; ``None`` asks ``stream.isatty()``.
        interval: Seconds between plain lines when not a TTY.
        refresh: Seconds between redraws of the bar on a TTY.
        width: Columns of the bar's line; ``None`` asks the terminal.
        clock: Monotonic time source, in seconds.

    Raises:
        ValueError: ``total`` or ``done`` is negative, or ``done > total``.
    """

    def __init__(
        self,
        total: int,
        *,
        done: int = 0,
        stream: TextIO,
        tty: bool | None = None,
        interval: float = 5.0,
        refresh: float = 0.1,
        width: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if total < 0 or not 0 <= done <= total:
            raise ValueError(f"need 0 <= done <= total, got done={done}, total={total}")
        self.total = total
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self.interval = interval
        self.refresh = refresh
        self._width = width
        self._clock = clock
        self._start = clock()
        self._initial = done
        self._last_draw: float | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"<Progress total={self.total} tty={self.tty} closed={self._closed}>"

    def elapsed(self) -> float:
        """Seconds since this display was created."""
        return self._clock() - self._start

    def rate(self, done: int) -> float:
        """Rows per second done by this run so far (0.0 at the very start)."""
        elapsed = self.elapsed()
        return (done - self._initial) / elapsed if elapsed > 0 else 0.0

    def update(self, done: int, stats: Stats) -> bool:
        """Redraw the bar, or write a plain line, if it is due.

        Args:
            done: Rows done so far, this run's and earlier runs'.
            stats: The Embedder's current statistics.

        Returns:
            Whether something was written.
        """
        if self._closed:
            return False
        now = self._clock()
        wait = self.refresh if self.tty else self.interval
        since = now - (self._start if self._last_draw is None else self._last_draw)
        if since < wait:
            return False
        self._last_draw = now
        self._write(self.render_bar(done, stats) if self.tty else self.render_line(done, stats))
        return True

    def close(self, done: int, stats: Stats) -> None:
        """Write the last state and end the line; idempotent.

        Args:
            done: Rows done at the end.
            stats: The Embedder's final statistics.
        """
        if self._closed:
            return
        self._closed = True
        if self.tty:
            self._write(self.render_bar(done, stats) + "\n")
        else:
            self._write(self.render_line(done, stats))

    def render_line(self, done: int, stats: Stats) -> str:
        """One plain progress line (no control characters), ending with a newline."""
        parts = [
            f"asyncembed: {done:,}/{self.total:,} texts ({self._percent(done):.1f}%)",
            f"{self.rate(done):,.0f} texts/s",
            f"tokens {stats.prompt_tokens:,}",
            f"cost ${stats.cost:.6f}",
            f"retries {stats.retries}",
            f"elapsed {format_duration(self.elapsed())}",
        ]
        if done < self.total:
            parts.append(f"eta {self._eta(done)}")
        return ", ".join(parts) + "\n"

    def render_bar(self, done: int, stats: Stats) -> str:
        """The live bar: ``\\r`` + erase line + bar and figures, cut to the width (no newline)."""
        figures = (
            f" {self._percent(done):5.1f}% {done:,}/{self.total:,}"
            f" {_si(self.rate(done))}/s {_si(stats.prompt_tokens)} tok"
            f" ${stats.cost:.4f} retries {stats.retries} ETA {self._eta(done)}"
        )
        width = self._width or shutil.get_terminal_size((80, 24)).columns
        # Leave the last column empty: writing into it makes some terminals wrap.
        cells = min(30, width - 1 - len(figures) - 2)
        bar = ""
        if cells >= 10:  # a narrow terminal gets the figures without the bar
            filled = cells * done // self.total if self.total else cells
            bar = "[" + "#" * filled + "-" * (cells - filled) + "]"
        return _ERASE + (bar + figures)[: max(1, width - 1)]

    def _percent(self, done: int) -> float:
        return 100.0 * done / self.total if self.total else 100.0

    def _eta(self, done: int) -> str:
        if done >= self.total:
            return "0s"
        rate = self.rate(done)
        return format_duration((self.total - done) / rate) if rate > 0 else "?"

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()
