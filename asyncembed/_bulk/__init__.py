"""The CLI's bulk job: an application built on :meth:`asyncembed.Embedder.stream`.

A corpus file is read (``_readers``), embedded in order, written (``_writers``,
``_parquet``; ``_outputs`` picks one by suffix), and its progress recorded so that a rerun
resumes (``_state``); ``_progress`` draws the progress line. The client never imports
this package: only ``asyncembed._cli`` and the bulk tests do (tests/test_layout.py).
"""

from ._job import BulkJob as BulkJob
from ._job import BulkResult as BulkResult
from ._progress import Progress as Progress
from ._readers import open_reader as open_reader

__all__ = ["BulkJob", "BulkResult", "Progress", "open_reader"]
