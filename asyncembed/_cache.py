"""The embeddings cache: vectors already paid for, keyed by model, dimensions and text.

Blocking, and safe to call from worker threads (``anyio.to_thread.run_sync``): the cache
owns one SQLite connection opened with ``check_same_thread=False`` and serializes its use
with a lock. The bulk job's state (``_bulk/_state.py``) opens its file with :func:`connect`.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from ._exceptions import AsyncEmbedError, StoreError

__all__ = ["Cache", "connect"]

_SCHEMA_VERSION = 1
_SETUP_ATTEMPTS = 50  # ~6 s of backoff in all, for files created at the same moment
_MAX_PARAMS = 500  # SQLite host parameters per statement (old builds allow only 999)


def connect(
    path: str | os.PathLike[str], error: type[AsyncEmbedError], schema: str
) -> sqlite3.Connection:
    """Open (creating) a WAL-mode SQLite database with ``schema``, checking its version.

    Several processes may create the same file at once (web workers sharing a cache):
    SQLite then refuses the losers' schema setup with "database is locked" without
    waiting (its busy timeout does not cover every lock upgrade), so that is retried.
    """
    p = Path(path)
    if not p.parent.is_dir():
        raise error(f"{p}: folder {str(p.parent)!r} does not exist")
    for attempt in itertools.count():
        try:
            return _setup(p, error, schema)
        except sqlite3.OperationalError as exc:
            busy = exc.sqlite_errorcode in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
            if not busy or attempt >= _SETUP_ATTEMPTS:
                raise error(f"{p}: cannot be opened ({exc})") from None
            time.sleep(0.005 * (attempt + 1))
        except sqlite3.DatabaseError as exc:
            raise error(f"{p}: not an asyncembed database ({exc})") from None
    raise AssertionError("unreachable")


def _setup(p: Path, error: type[AsyncEmbedError], schema: str) -> sqlite3.Connection:
    conn = sqlite3.connect(p, check_same_thread=False, timeout=30.0)
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, _SCHEMA_VERSION):
            raise error(f"{p}: unknown schema version {version}")
        if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            conn.execute("PRAGMA journal_mode=WAL")  # persistent: the creator sets it
        # NORMAL may lose the last commit on power loss, never corrupt: the state is
        # then behind the output, which resume handles; it is never ahead of it.
        conn.execute("PRAGMA synchronous=NORMAL")
        with conn:
            conn.executescript(schema + f"PRAGMA user_version = {_SCHEMA_VERSION};")
    except BaseException:
        conn.close()
        raise
    return conn


_CACHE_SCHEMA = """
CREATE TABLE IF NOT EXISTS vectors (
    key BLOB PRIMARY KEY,
    vector BLOB NOT NULL
) WITHOUT ROWID;
"""


class Cache:
    """A content-addressed SQLite cache of embeddings, shared by every job that opens it.

    The key is a 16-byte BLAKE2b hash of ``(model, dimensions, text)``, so the same text
    under another model or another dimension count is a different entry. Values are the
    float32 vectors' little-endian bytes.

    Args:
        path: The cache file; created if missing (its folder must exist).

    Raises:
        StoreError: The folder is missing, or the file is not an asyncembed cache.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._conn = connect(self.path, StoreError, _CACHE_SCHEMA)
        self.hits = 0
        """Texts found by :meth:`get_many` since this object was opened."""
        self.misses = 0
        """Texts not found by :meth:`get_many` since this object was opened."""

    def __repr__(self) -> str:
        return f"<Cache path={str(self.path)!r} hits={self.hits} misses={self.misses}>"

    def __enter__(self) -> Cache:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __len__(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT count(*) FROM vectors").fetchone()[0])

    @staticmethod
    def key(model: str, dimensions: int | None, text: str) -> bytes:
        """Return the cache key of one text: 16 bytes of BLAKE2b, unambiguously framed."""
        name = model.encode()
        digest = hashlib.blake2b(digest_size=16, person=b"asyncembed-v1")
        digest.update(len(name).to_bytes(4, "little") + name)
        digest.update((-1 if dimensions is None else dimensions).to_bytes(8, "little", signed=True))
        digest.update(text.encode("utf-8", "surrogatepass"))
        return digest.digest()

    def get_many(
        self, model: str, dimensions: int | None, texts: Sequence[str]
    ) -> list[npt.NDArray[np.float32] | None]:
        """Look texts up in one read; counts hits and misses.

        Returns:
            For each text, in order, its cached vector (a read-only float32 array), or
            ``None``.
        """
        keys = [self.key(model, dimensions, t) for t in texts]
        found: dict[bytes, bytes] = {}
        with self._lock:
            for i in range(0, len(keys), _MAX_PARAMS):
                chunk = list(set(keys[i : i + _MAX_PARAMS]))
                marks = ",".join("?" * len(chunk))
                sql = f"SELECT key, vector FROM vectors WHERE key IN ({marks})"
                found.update(self._conn.execute(sql, chunk).fetchall())
        out: list[npt.NDArray[np.float32] | None] = [
            np.frombuffer(found[k], dtype="<f4") if k in found else None for k in keys
        ]
        hits = sum(v is not None for v in out)
        self.hits += hits
        self.misses += len(out) - hits
        return out

    def put_many(
        self, model: str, dimensions: int | None, texts: Sequence[str], vectors: npt.ArrayLike
    ) -> None:
        """Store one vector per text, in one transaction (a later put replaces an entry).

        Args:
            model: The model that made the vectors.
            dimensions: The dimensions requested, or ``None`` for the model's default.
            texts: The texts embedded.
            vectors: A ``(len(texts), d)`` array (converted to float32).

        Raises:
            ValueError: ``vectors`` does not have one row per text.
        """
        arr = np.ascontiguousarray(vectors, dtype="<f4")
        if arr.ndim != 2 or len(arr) != len(texts):
            raise ValueError(f"expected {len(texts)} vectors of shape (d,), got {arr.shape}")
        rows = [
            (self.key(model, dimensions, t), v.tobytes()) for t, v in zip(texts, arr, strict=True)
        ]
        with self._lock, self._conn:
            self._conn.executemany(
                "INSERT OR REPLACE INTO vectors (key, vector) VALUES (?, ?)", rows
            )

    def close(self) -> None:
        """Close the database connection; idempotent."""
        with self._lock:
            self._conn.close()
