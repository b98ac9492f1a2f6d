"""Progress of a bulk job: a live one-line bar on a terminal, periodic plain lines otherwise.

No dependency: the bar is redrawn in place with ``\\r`` and the ANSI "erase line"
sequence. What it shows comes from two sources handed to :meth:`Progress.update`: the
rows written so far (the job's count) and the Embedder's :class:`~asyncembed.Stats`
snapshot (tokens, cost, retries). Time is a parameter (``clock=``, the same
:class:`~asyncembed.Clock` the Embedder takes), so tests drive it.

The bar keeps its place on the line: the numbers before it are right-aligned in
fixed widths and the bar's length is fixed for a terminal width, so only the bar's
filling and the digits change as the job advances.

Usage::

    progress = Progress(total=job.total, done=job.done, stream=sys.stderr)
    while running:
        progress.update(job.done, embedder.stats)   # cheap: draws only when due
    progress.close(job.done, embedder.stats)        # the final line
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from typing import NoReturn, TextIO

from .._clock import Clock, SystemClock
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
    """At most 4 characters: ``999``, ``1.2k``, ``12k``, ``3.4M`` (figures on a narrow bar)."""
    if n < 999.5:
        return f"{n:.0f}"
    for unit, scale in (("k", 1e3), ("M", 1e6), ("G", 1e9)):
        value = n / scale
        if value < 9.95:
            return f"{value:.1f}{unit}"
        if value < 999.5 or unit == "G":
            return f"{value:.0f}{unit}"
    raise AssertionError("unreachable")


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
        clock: The :class:`~asyncembed.Clock` for the rate, the ETA and the redraw
            cadence (``None``: the real clock).

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
        clock: Clock | None = None,
    ) -> None:
        if total < 0 or not 0 <= done <= total:
            raise ValueError(f"need 0 <= done <= total, got done={done}, total={total}")
        self.total = total
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self.interval = interval
        self.refresh = refresh
        self._width = width
        self._clock = clock = clock or SystemClock()
        self._start = clock.now()
        self._initial = done
        self._cells: tuple[int, int] | None = None  # (terminal width, bar cells)
        self._last_draw: float | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"<Progress total={self.total} tty={self.tty} closed={self._closed}>"

    def elapsed(self) -> float:
        """Seconds since this display was created."""
        return self._clock.now() - self._start

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
        now = self._clock.now()
        wait = self.refresh if self.tty else self.interval
        since = now - (self._start if self._last_draw is None else self._last_draw)
        if since < wait:
            return False
        self._last_draw = now
        self._write(self.render_bar(done, stats) if self.tty else self.render_line(done, stats))
        return True

    async def follow(self, done: Callable[[], int], stats: Callable[[], Stats]) -> NoReturn:
        """Update from ``done()`` and ``stats()`` at the display's cadence, until cancelled.

        Sleeps on the clock between updates: :attr:`refresh` on a TTY, at most half a
        second otherwise (:meth:`update` still writes a plain line only every
        :attr:`interval`).

        Args:
            done: Returns the rows done so far (e.g. ``lambda: job.done``).
            stats: Returns the Embedder's current statistics.
        """
        while True:
            await self._clock.sleep(self.refresh if self.tty else min(self.interval, 0.5))
            self.update(done(), stats())

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
        figures = self._figures(
            done, self.rate(done), stats.prompt_tokens, stats.cost, stats.retries, self._eta(done)
        )
        width = self._width or shutil.get_terminal_size((80, 24)).columns
        cells = self._bar_cells(width, len(figures))
        bar = ""
        if cells >= 10:  # a narrow terminal gets the figures without the bar
            filled = cells * done // self.total if self.total else cells
            bar = "[" + "#" * filled + "-" * (cells - filled) + "]"
        return _ERASE + (bar + figures)[: max(1, width - 1)]

    def _figures(
        self, done: int, rate: float, tokens: int, cost: float, retries: int, eta: str
    ) -> str:
        # Fixed widths, right-aligned: the digits change in place instead of shifting
        # what follows them.
        width = len(f"{self.total:,}")
        return (
            f" {self._percent(done):5.1f}% {done:>{width},}/{self.total:,}"
            f" {_si(rate):>4}/s {_si(tokens):>4} tok {'$' + format(cost, '.4f'):>7}"
            f" retries {retries:>2} ETA {eta}"
        )

    def _bar_cells(self, width: int, figures: int) -> int:
        """The bar's length: fixed for a terminal ``width``, so the bar does not jitter.

        It leaves room for the widest figures a job usually shows (not the current
        ones, which grow as the job runs), and shrinks only if the figures outgrow that.
        """
        if self._cells is None or self._cells[0] != width:
            widest = self._figures(self.total, 999.0, 999_000, 9.9999, 99, "59m59s")
            figures = max(figures, len(widest))
        elif width - 1 - figures - 2 >= self._cells[1]:
            return self._cells[1]
        # Leave the last column empty: writing into it makes some terminals wrap.
        self._cells = (width, min(30, width - 1 - figures - 2))
        return self._cells[1]

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
