"""Ray Data integration: :class:`Embed` embeds a text column in ``Dataset.map_batches``.

Each actor holds one :class:`~asyncembed.Embedder`, made on the actor's event loop by
its first batch; each Ray batch goes through :meth:`~asyncembed.Embedder.embed_many`, so
asyncembed's batching, concurrency, limits and retries split it into API requests.
Needs the ``ray`` extra (``pip install 'asyncembed[ray]'``); ``import asyncembed`` never
imports Ray, importing this module does. Guide: ``docs/guides/ray-data.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from . import (
    Embedder,
    InputTooLongError,
    InvalidInputError,
    Limiter,
    MissingExtraError,
    PartialResultError,
)

try:
    import pyarrow as pa
    from ray.data.block import BlockAccessor, BlockType
except ImportError as exc:  # pragma: no cover - exercised in a subprocess without Ray
    raise MissingExtraError(
        "asyncembed.ray needs Ray Data and pyarrow: pip install 'asyncembed[ray]'"
    ) from exc

if TYPE_CHECKING:
    from ._types import Matrix

__all__ = ["Embed"]

OnError = Literal["raise", "null"]

# pyarrow >= 16 also has string_view.
_STRING_TYPES = [pa.types.is_string, pa.types.is_large_string] + (
    [pa.types.is_string_view] if hasattr(pa.types, "is_string_view") else []
)
# A closing actor waits this long for its Embedder to finish (it is idle by then: Ray
# calls the UDF's __del__ only after the actor's last task).
_CLOSE_TIMEOUT = 5.0


class Embed:
    """Embed one text column per batch; a callable class for ``Dataset.map_batches``.

    Ray makes one instance per actor from ``fn_constructor_kwargs``::

        ds.map_batches(
            Embed,
            fn_constructor_kwargs={"model": "openai/text-embedding-3-small", "api_key": key},
            batch_format="pyarrow",
            batch_size=1024,
            compute=ray.data.ActorPoolStrategy(size=4),
            num_cpus=0.25,
        )

    The first batch creates the actor's
    :class:`~asyncembed.Embedder` on the actor's event loop; every later batch reuses it,
    so Ray's batches (up to 4 at once per actor) share one connection pool, one set of
    limits and one retry policy.

    Batches: a ``pyarrow.Table`` (``batch_format="pyarrow"``, the cheapest), a
    ``pandas.DataFrame`` or a dict of numpy arrays (Ray's default format) are accepted;
    a ``pyarrow.Table`` is always returned: the input columns untouched (a DataFrame's
    index dropped) plus ``output_column``, a ``fixed_size_list<float>[d]`` column of
    float32 vectors, row ``i`` holding the vector of row ``i``'s text.

    Every row is checked before anything is sent: a missing column, a value that is not
    a string, a null, an empty or whitespace-only text or one over
    ``Batching.max_input_tokens`` fails the batch with an error naming the column and the
    row (its position in the batch).

    Failures that remain after asyncembed's own retries:

    - ``on_error="raise"`` (default): the batch fails, and with it the job unless Ray is
      told to retry (``DataContext.retried_map_errors``). When only some rows failed,
      the error is a :class:`~asyncembed.PartialResultError` naming how many and the
      first. With ``cache=`` the vectors paid for are kept, so a retry or a re-run pays
      only for what failed.
    - ``on_error="null"``: rows that failed get a null vector and their error's text in
      ``error_column`` (null for rows that succeeded); the batch succeeds. An error that
      hits every row of a batch (a wrong key or model, ``max_cost`` reached, an outage)
      is not a row's fault and still fails the batch (so does a one-row batch whose
      only text is refused: one failure cannot tell a bad text from a bad request).

    Closing: Ray calls ``__del__`` when an actor exits gracefully, which closes the
    Embedder, the cache it opened and the ``limiter``'s connections. Best effort: an
    actor that is killed or crashes closes nothing, and its requests in flight are
    lost. Outside Ray, call :meth:`aclose`.

    Args:
        model: The model id, e.g. ``"openai/text-embedding-3-small"``.
        text_column: The column holding the texts.
        output_column: The column to add; the batch must not have one of this name.
        on_error: ``"raise"`` or ``"null"`` (above).
        error_column: With ``on_error="null"``, the string column of error texts;
            default ``output_column + "_error"``.
        **options: Every other :class:`~asyncembed.Embedder` keyword (``api_key``,
            ``base_url``, ``batching``, ``limits``, ``retry``, ``dimensions``,
            ``provider``, ``cache``, ``limiter``...), passed through. Ray pickles them to
            each actor, so give a ``cache`` as a path, not an open ``Cache``.

    Raises:
        ValueError: an empty or clashing column name, or a bad ``on_error``.
        TypeError: an option the Embedder does not take (at construction, not at the
            first batch).
    """

    def __init__(
        self,
        model: str,
        *,
        text_column: str = "text",
        output_column: str = "embedding",
        on_error: OnError = "raise",
        error_column: str | None = None,
        **options: Any,
    ) -> None:
        for name, value in (("text_column", text_column), ("output_column", output_column)):
            if not isinstance(value, str) or not value:
                raise ValueError(f"{name} must be a non-empty string, got {value!r}")
        if on_error not in ("raise", "null"):
            raise ValueError(f"on_error must be 'raise' or 'null', got {on_error!r}")
        if error_column is None:
            error_column = output_column + "_error"
        if on_error == "null" and error_column in (text_column, output_column):
            raise ValueError(f"error_column {error_column!r} clashes with another column")
        if output_column == text_column:
            raise ValueError(f"output_column must differ from text_column ({text_column!r})")
        # Fail in the actor's constructor, where Ray reports it once, not in every batch.
        inspect.signature(Embedder).bind(model, **options)
        self.model = model
        self.text_column = text_column
        self.output_column = output_column
        self.on_error: OnError = on_error
        self.error_column = error_column
        self._options = options
        self._width: int | None = options.get("dimensions")
        # Made by the first batch, in the actor's event loop (it starts on first use and
        # closes from any task of that loop: no task of ours has to hold it open).
        self._embedder: Embedder | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        # Never the options: they hold the API key.
        return (
            f"<Embed model={self.model!r} text_column={self.text_column!r} "
            f"output_column={self.output_column!r} on_error={self.on_error!r}>"
        )

    async def __call__(self, batch: Any) -> pa.Table:
        """Embed one batch's text column and return the batch with the vectors added.

        Args:
            batch: A ``pyarrow.Table``, a ``pandas.DataFrame`` or a dict of numpy arrays.

        Returns:
            A ``pyarrow.Table``: the input columns, then ``output_column``
            (``fixed_size_list<float>[d]``) and, with ``on_error="null"``,
            ``error_column``.

        Raises:
            ValueError: the batch has no ``text_column``, or already has the output
                column.
            TypeError: a value of the text column is not a string (its row is named).
            InvalidInputError: a null, empty or whitespace-only text, or one too long
                (:class:`~asyncembed.InputTooLongError`); its row is named.
            PartialResultError: with ``on_error="raise"``, some rows failed.
            The errors of :meth:`~asyncembed.Embedder.embed_many` when every row failed.
        """
        texts = self._texts(batch)
        table = self._table(batch)
        if not texts:  # Ray never sends one; a direct caller gets a typed empty column
            if self._width is None:
                raise ValueError("an empty first batch has no known width: pass dimensions=")
            return self._attach(table, np.empty((0, self._width), np.float32), {})
        embedder = await self._open()
        errors: dict[int, BaseException] = {}
        try:
            matrix = await embedder.embed_many(texts)
        except PartialResultError as exc:
            if self.on_error == "raise":
                raise
            matrix, errors = exc.vectors, exc.errors
        except InvalidInputError as exc:  # only the Embedder knows the token limit
            if exc.index is None:
                raise
            cls = InputTooLongError if isinstance(exc, InputTooLongError) else InvalidInputError
            raise cls(f"{self._where(exc.index)}: {exc}", index=exc.index) from None
        self._width = matrix.shape[1]
        return self._attach(table, matrix, errors)

    async def aclose(self) -> None:
        """Close the Embedder (waiting for its requests in flight); idempotent.

        Call it from the event loop that ran the batches. Ray does not: it closes through
        ``__del__`` when the actor exits gracefully.
        """
        if self._embedder is not None:
            await _close(self._embedder, self._options.get("limiter"))

    def close(self, timeout: float = _CLOSE_TIMEOUT) -> None:
        """Close the Embedder from another thread than its event loop's; idempotent.

        From the loop's own thread it only asks the Embedder to close, without waiting.

        Args:
            timeout: Seconds to wait at most.

        Raises:
            TimeoutError: the Embedder did not close within ``timeout``.
        """
        loop, embedder = self._loop, self._embedder
        if loop is None or embedder is None or not loop.is_running():
            return
        closing = _close(embedder, self._options.get("limiter"))
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            task = loop.create_task(closing)  # kept until done: the loop holds it weakly
            _CLOSING.add(task)
            task.add_done_callback(_CLOSING.discard)
            return
        asyncio.run_coroutine_threadsafe(closing, loop).result(timeout)

    def __del__(self) -> None:
        # Ray drops the UDF after the actor's last task: close the session then. Best
        # effort: any failure here (interpreter shutdown, a stopped loop) is ignored.
        with contextlib.suppress(BaseException):
            self.close()

    # -- internals -------------------------------------------------------------

    async def _open(self) -> Embedder:
        loop = asyncio.get_running_loop()
        if self._embedder is None:
            # Built here, with no await between the check and the assignment, so
            # concurrent first batches share one Embedder.
            self._loop = loop
            self._embedder = Embedder(self.model, **self._options)
        elif loop is not self._loop:
            raise RuntimeError("an Embed is bound to the event loop of its first batch")
        return self._embedder

    def _texts(self, batch: Any) -> list[str]:
        """The text column as a list, every value checked (nothing is paid before)."""
        name = self.text_column
        names = _columns(batch)
        if name not in names:
            raise ValueError(
                f"the batch has no column {name!r} (its columns: {names}); "
                "set Embed(text_column=...)"
            )
        for taken in (self.output_column, self.error_column if self.on_error == "null" else None):
            if taken is not None and taken in names:
                raise ValueError(
                    f"the batch already has a column {taken!r}; choose another name "
                    "(output_column= or error_column=)"
                )
        column = batch[name]
        if isinstance(batch, pa.Table):
            kind = column.type
            if pa.types.is_dictionary(kind):
                kind = kind.value_type
            if not any(check(kind) for check in _STRING_TYPES):
                raise TypeError(f"column {name!r} holds {kind} values, not strings")
        values: list[Any] = (
            column.to_pylist() if isinstance(batch, pa.Table) else np.asarray(column).tolist()
        )
        for i, value in enumerate(values):
            if isinstance(value, str):
                if not value.strip():
                    raise InvalidInputError(
                        f"{self._where(i)}: the text is empty or only whitespace", index=i
                    )
            elif _is_null(value):
                raise InvalidInputError(f"{self._where(i)}: the text is null", index=i)
            else:
                raise TypeError(f"{self._where(i)}: expected a str, got {type(value).__name__}")
        return values

    def _where(self, row: int) -> str:
        return f"column {self.text_column!r}, row {row} of the batch"

    @staticmethod
    def _table(batch: Any) -> pa.Table:
        if isinstance(batch, pa.Table):
            return batch
        # Ray's own conversion: it keeps tensor columns as Ray's tensor type.
        table = BlockAccessor.batch_to_block(batch, block_type=BlockType.ARROW)
        if not isinstance(table, pa.Table):  # pragma: no cover - Ray returned pandas
            table = pa.Table.from_pandas(table, preserve_index=False)
        return table

    def _attach(
        self, table: pa.Table, matrix: Matrix, errors: dict[int, BaseException]
    ) -> pa.Table:
        n, width = matrix.shape
        values = pa.array(np.ascontiguousarray(matrix, dtype=np.float32).reshape(-1))
        mask = None
        if errors:
            failed = np.zeros(n, dtype=bool)
            failed[list(errors)] = True
            mask = pa.array(failed)
        vectors = pa.FixedSizeListArray.from_arrays(values, width, mask=mask)
        table = table.append_column(self.output_column, vectors)
        if self.on_error == "null":
            texts: list[str | None] = [None] * n
            for i, exc in errors.items():
                texts[i] = f"{type(exc).__name__}: {exc}"
            table = table.append_column(self.error_column, pa.array(texts, type=pa.string()))
        return table


async def _close(embedder: Embedder, limiter: object) -> None:
    """Close the Embedder (it waits for its requests in flight), then the limiter.

    In Ray each actor has its own unpickled copy of the limiter: nobody else would close
    its connections. (A RedisLimiter reconnects if it is used again.)
    """
    try:
        await embedder.aclose()
    finally:
        if isinstance(limiter, Limiter):
            with contextlib.suppress(Exception):
                await limiter.aclose()


_CLOSING: set[asyncio.Task[None]] = set()


def _columns(batch: Any) -> list[str]:
    if isinstance(batch, pa.Table):
        return list(batch.column_names)
    if isinstance(batch, dict):
        return list(batch)
    columns = getattr(batch, "columns", None)  # a pandas DataFrame
    if columns is None:
        raise TypeError(
            "Embed takes a pyarrow.Table, a pandas.DataFrame or a dict of numpy arrays, "
            f"got {type(batch).__name__}"
        )
    return [str(c) for c in columns]


def _is_null(value: Any) -> bool:
    # None, a float NaN (pandas' null in object columns), pandas.NA or NaT.
    return (
        value is None
        or (isinstance(value, float) and value != value)
        or type(value).__name__ in ("NAType", "NaTType")
    )
