"""The CLI's bulk job: an application built on :meth:`asyncembed.Embedder.stream`.

A corpus file is read (``_readers``), embedded in order, written (``_writers``,
``_parquet``; ``_formats`` picks one by suffix), and its progress recorded so that a rerun
resumes (``_state``); ``_progress`` draws the progress line; ``_nearest`` answers
``--query`` from a finished ``.npy``. The client never imports
this package: only ``asyncembed._cli`` and the bulk tests do (tests/test_layout.py).
"""

from ._formats import open_reader as open_reader
from ._job import BulkJob as BulkJob
from ._job import BulkResult as BulkResult
from ._nearest import nearest_rows as nearest_rows
from ._nearest import texts_at as texts_at
from ._progress import Progress as Progress

__all__ = ["BulkJob", "BulkResult", "Progress", "nearest_rows", "open_reader", "texts_at"]
