"""A bulk job: a corpus file through :meth:`Embedder.stream` into an output file, resumably.

Over 400 lines on purpose: one class holds the job's whole protocol (open, validate,
resume, run, checkpoint, close) in the order it runs, a third of it docstrings.

:class:`BulkJob` follows the resume protocol of :mod:`asyncembed._bulk._state`: the output
is written under a temporary name (see :mod:`asyncembed._bulk._writers`), made durable and
recorded in the SQLite job state as each block lands (or every ``checkpoint_every``
seconds; flush first, then record), and renamed into place only when complete. A kill
thus re-pays at most the blocks in flight.

The output rule:

- An existing output is refused before any work, unless ``overwrite`` is set or the
  state file (which exists, and records this job) is being resumed.
- Without a state file, a run starts from scratch; an existing output (``overwrite``)
  is replaced atomically when the run completes, and left untouched when it fails or
  is interrupted (the temporary output is deleted).
- With a state file, an interrupted or failed run records a checkpoint on the way
  out and keeps its temporary output; the next run with the same state file and the
  same options skips what was recorded, and the finished file is byte-identical to an
  uninterrupted run's. A state file that records a finished job makes the next run
  a no-op (delete it to run the job again).

Usage::

    with BulkJob("corpus.txt", "out.npy", model=m, state="job.db") as job:
        async with Embedder(m) as embedder:
            result = await job.run(embedder)
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sqlite3
from collections.abc import Iterator
from contextlib import aclosing
from pathlib import Path
from typing import TypeAlias

import anyio

from .._clock import Clock, SystemClock
from .._config import Batching
from .._embedder import Embedder
from .._exceptions import InputFileError, InvalidInputError, JobIOError, OutputFileError
from .._inputs import TokenEstimator
from .._stats import Stats
from .._types import Matrix
from ._files import RecordId
from ._formats import check_job_paths, check_output, open_reader, open_writer
from ._readers import Reader
from ._state import JobIdentity, JobState
from ._writers import Writer

__all__ = ["BulkJob", "BulkResult"]

_log = logging.getLogger("asyncembed")
Block: TypeAlias = tuple[list[RecordId], Matrix]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class BulkResult:
    """What a finished :meth:`BulkJob.run` did.

    Attributes:
        output: The complete output file.
        rows: Rows in the output (the input's texts).
        dim: The vector dimension, or ``None`` for a job finished by an earlier run.
        embedded: Rows embedded and written by this run.
        resumed_from: Rows already done by earlier runs (0 for a fresh job).
        already_finished: The state file recorded the job as finished: nothing was done.
        elapsed: Seconds this run took.
        stats: The Embedder's statistics at the end of the run.
    """

    output: Path
    rows: int
    dim: int | None
    embedded: int
    resumed_from: int
    already_finished: bool
    elapsed: float
    stats: Stats

    @property
    def texts_per_second(self) -> float:
        """Rows embedded by this run per second of it (0.0 for an empty run)."""
        return self.embedded / self.elapsed if self.elapsed > 0 and self.embedded else 0.0


class BulkJob:
    """Embeds every text of a corpus file into an output file, resumably.

    Use it as a context manager (or call :meth:`open` and :meth:`close`): opening reads
    and checks the input, the output path and the state file before anything is paid
    for; closing records a checkpoint if the job stopped midway.

    Args:
        input: A ``.txt``, ``.jsonl``, ``.csv`` or ``.parquet`` corpus.
        output: A ``.npy``, ``.jsonl`` or ``.parquet`` file; its folder must exist.
        model: The model the Embedder uses (part of the job's identity).
        dimensions: The dimensions the Embedder asks for, or ``None`` (identity too).
        field: The JSON field or column holding the text (``None``: ``"text"``).
        id_field: The JSON field or column holding ids (``None``: row numbers).
        state: The SQLite job state file, or ``None`` for a run that cannot resume.
        validate: Read the whole input once before starting, so that a bad line is
            reported before any text is paid for. ``False`` only counts the records
            and lets the run stop at the first bad one.
        checkpoint_every: Seconds between checkpoints (each one fsyncs the output); 0,
            the default, records every block as it lands.
        endpoint: Where the vectors come from (an API root, or ``"local"``): part of
            the identity, so a resume against another endpoint is refused.
        batching: The Embedder's batching rules: when validating, over-long texts are
            reported before any text is paid for (``None``: the defaults). Whether it
            truncates is part of the job's identity.
        overwrite: Replace an existing output. Without it an existing output is refused,
            unless it is this job's, resumed from its state file.
        clock: The :class:`~asyncembed.Clock` for the checkpoint cadence and the elapsed
            time (``None``: the real clock); pass the Embedder's to drive both.
    """

    def __init__(
        self,
        input: str | os.PathLike[str],
        output: str | os.PathLike[str],
        *,
        model: str,
        dimensions: int | None = None,
        field: str | None = None,
        id_field: str | None = None,
        state: str | os.PathLike[str] | None = None,
        validate: bool = True,
        checkpoint_every: float = 0.0,
        endpoint: str | None = None,
        batching: Batching | None = None,
        overwrite: bool = False,
        clock: Clock | None = None,
    ) -> None:
        if checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be >= 0, got {checkpoint_every!r}")
        self.input = Path(input)
        self.output = Path(output)
        self.model = model
        self.dimensions = dimensions
        self.field = field
        self.id_field = id_field
        self.state_path = None if state is None else Path(state)
        self.validate = validate
        self.checkpoint_every = checkpoint_every
        self.endpoint = endpoint
        batching = batching or Batching()
        self.truncate_at = batching.max_input_tokens if batching.truncate else None
        self.overwrite = overwrite
        self._check_text = TokenEstimator(batching).check_text
        self._clock = clock or SystemClock()
        self._reader: Reader | None = None
        self._state: JobState | None = None
        self._writer: Writer | None = None
        self._total = 0
        self._done = 0
        self._saved = 0
        self._resumed_from = 0
        self._complete = False
        self._opened = self._closed = False

    def __repr__(self) -> str:
        return (
            f"<BulkJob input={str(self.input)!r} output={str(self.output)!r}"
            f" done={self._done} total={self._total}>"
        )

    def __enter__(self) -> BulkJob:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def total(self) -> int:
        """Texts in the input (known once opened)."""
        return self._total

    @property
    def done(self) -> int:
        """Rows written so far, earlier runs' included."""
        return self._done

    @property
    def saved(self) -> int:
        """Rows recorded in the state file: what the next run skips."""
        return self._saved

    @property
    def resumed_from(self) -> int:
        """Rows done by earlier runs when this run started."""
        return self._resumed_from

    @property
    def complete(self) -> bool:
        """Whether the output is complete and in place."""
        return self._complete

    def open(self) -> None:
        """Check the input, the output path and the state; resume from the state if any.

        Raises:
            InputFileError: The input is missing, malformed, has a bad line (when
                validating) or no text at all.
            OutputFileError: The output's folder is missing, its format unknown, it
                exists (without ``overwrite`` or a state file to resume), it keeps no
                ids but an id field is named, or its unfinished output does not match
                the recorded checkpoint.
            StoreError: The state file is unusable; ``JobMismatchError`` if it records
                another job.
            MissingExtraError: Parquet without pyarrow.
        """
        for _ in self._opening():
            pass

    async def aopen(self) -> None:
        """:meth:`open`, yielding to the event loop while a big input is validated.

        So Ctrl-C (a cancellation) stops the validation of a huge corpus promptly.

        Raises:
            The errors of :meth:`open`.
        """
        for _ in self._opening():
            await anyio.lowlevel.checkpoint()

    def _opening(self) -> Iterator[int]:
        """Open once, as steps (it pauses while validating); close again on failure."""
        if self._opened:
            return
        self._opened = True
        try:
            yield from self._check()
            self._resume()
        except BaseException:
            self.close()
            raise

    def _check(self) -> Iterator[int]:
        """Check paths and input; count the records (yielding now and then)."""
        reader = self._reader = open_reader(self.input, field=self.field, id_field=self.id_field)
        # The output is checked before the state file is touched, so a usage error
        # leaves no state behind to trip up the corrected command.
        check_job_paths(
            self.output,
            input=self.input,
            state=self.state_path,
            id_field=self.id_field,
            overwrite=self.overwrite,
        )
        if self.validate:
            yield from self._validate(reader)
        else:
            self._total = reader.count()
        if self._total == 0:
            raise InputFileError(self.input, "no text to embed")

    def _resume(self) -> None:
        """Open the state (resuming from its checkpoint) and the writer."""
        total = self._total
        checkpoint = None
        if self.state_path is not None:
            self._state = state = JobState(self.state_path)
            identity = JobIdentity.of(
                self.input,
                self.output,
                model=self.model,
                dimensions=self.dimensions,
                rows=total,
                field=self.field,
                id_field=self.id_field,
                endpoint=self.endpoint,
                truncate_at=self.truncate_at,
            )
            checkpoint = state.begin(identity)
            self._done = self._saved = self._resumed_from = checkpoint.rows
            if state.finished:
                if not self.output.is_file():
                    msg = (
                        f"{self.state_path} records this job as finished but the output is "
                        "missing: delete the state file to run the job again"
                    )
                    raise OutputFileError(self.output, msg)
                self._complete = True
                return
        writer = self._writer = open_writer(
            self.output,
            rows=total,
            dim=None if checkpoint is None else checkpoint.dim,
            resume=checkpoint,
        )
        if writer.finished:  # an earlier run crashed between finish() and mark_finished()
            self._finished()

    def _validate(self, reader: Reader) -> Iterator[int]:
        """Read every record once: bad lines, over-long texts and (for Parquet) ids.

        Sets the total; yields the count every few thousand records.
        """
        check = self._check_text
        check_id = None if self.id_field is None else check_output(self.output).id_checker()
        total = 0
        for total, (record_id, text) in enumerate(reader.records(), start=1):
            try:
                check(text)
            except InvalidInputError as exc:
                raise InputFileError(self.input, f"record {total}: {exc}") from None
            if check_id is not None:
                try:
                    check_id(record_id)
                except ValueError as exc:
                    raise InputFileError(self.input, f"record {total}: {exc}") from None
            if not total % 1024:
                yield total
        self._total = total

    async def run(self, embedder: Embedder, *, window: int | None = None) -> BulkResult:
        """Embed the texts not done yet, write them in order, and complete the output.

        Args:
            embedder: An open Embedder for :attr:`model` (its cache, limits and retry
                policy apply).
            window: Batches in flight at most (``None``: the Embedder's default).

        Returns:
            What the run did.

        Raises:
            ValueError: The Embedder uses another model than the job's identity.
            InvalidInputError: A text the Embedder refuses (e.g. too long).
            InputFileError: A bad record (when not validating up front).
            APIStatusError, APIConnectionError, ProtocolError, BudgetExceededError:
                the API failed; the progress is saved when there is a state file.
        """
        if embedder.model != self.model:
            raise ValueError(f"the job is for model {self.model!r}, not {embedder.model!r}")
        self.open()
        started = self._clock.now()
        first = self._done
        if not self._complete:
            try:
                await self._embed_all(embedder, window)
            except InvalidInputError as exc:
                raise InvalidInputError(f"{self.input}: {_record_number(exc, first)}") from None
        return BulkResult(
            output=self.output,
            rows=self._total,
            dim=None if self._writer is None else self._writer.dim,
            embedded=self._done - first,
            resumed_from=self._resumed_from,
            already_finished=self._writer is None,
            elapsed=self._clock.now() - started,
            stats=embedder.stats,
        )

    async def _embed_all(self, embedder: Embedder, window: int | None) -> None:
        try:
            await self._embed_and_write(embedder, window)
        except (OSError, sqlite3.Error) as exc:
            raise self._io_error(exc) from None

    def _io_error(self, exc: OSError | sqlite3.Error) -> JobIOError:
        """One line naming the file that could not be written, and why."""
        if isinstance(exc, sqlite3.Error):
            return JobIOError(self.state_path or self.output, str(exc))
        reason = exc.strerror or str(exc) or type(exc).__name__
        return JobIOError(exc.filename or self.output, reason)

    async def _embed_and_write(self, embedder: Embedder, window: int | None) -> None:
        assert self._reader is not None and self._writer is not None
        writer = self._writer
        last = self._clock.now()
        records = self._reader.records(start=self._done)
        # stream() is an async generator: aclosing() cancels its batches if we stop early.
        stream = embedder.stream(records, window=window)
        async with aclosing(stream) as blocks:
            async for ids, block in blocks:
                writer.write(self._done, block, ids)
                self._done += len(ids)
                if self._state is not None and self._clock.now() - last >= self.checkpoint_every:
                    # fsync and SQLite block: keep the event loop (and the requests) going.
                    await anyio.to_thread.run_sync(self._checkpoint)
                    last = self._clock.now()
        if self._done != self._total:
            raise InputFileError(self.input, f"has {self._done} texts now, {self._total} before")
        if self._state is not None:
            self._checkpoint()
        writer.finish()
        self._finished()

    def _checkpoint(self) -> None:
        """Make the rows written durable, then record them (never the other way round)."""
        assert self._writer is not None and self._state is not None
        if self._done > self._saved:
            checkpoint = self._writer.flush()
            self._state.commit(checkpoint)
            self._saved = checkpoint.rows

    def _finished(self) -> None:
        self._complete = True
        self._done = self._total
        if self._state is not None:
            self._state.mark_finished()
            self._saved = self._total

    def close(self) -> None:
        """Release files; if the job stopped midway, save a checkpoint or delete the partial output.

        With a state file, the rows written so far are flushed and recorded (a failure to
        do so is logged, and the state stays behind the output, which is safe). Without
        one, the temporary output is deleted. Idempotent.
        """
        if self._closed:
            return
        self._closed = True
        writer, state = self._writer, self._state
        try:
            if writer is not None and not writer.finished:
                if state is None:
                    writer.discard()
                else:
                    try:
                        if writer.dim is not None:
                            self._checkpoint()
                    except Exception as exc:  # one line: the run's own error says the rest
                        _log.warning("could not save a checkpoint of %s: %s", self.output, exc)
                    writer.close()
        finally:
            if state is not None:
                state.close()


def _record_number(exc: InvalidInputError, first: int) -> str:
    """Name the stream's bad item (counted from the resumed row) as a 1-based record."""
    if exc.index is None:
        return str(exc)
    return f"record {first + exc.index + 1}: {exc}"
