"""The floor: an interpreter that imports asyncembed (CLI included), numpy and aiohttp."""

from __future__ import annotations

import aiohttp
import numpy as np

import asyncembed
import asyncembed._cli
from benchmarks.peers._peer import emit

if __name__ == "__main__":
    assert aiohttp and np and asyncembed and asyncembed._cli
    emit(peer="idle", n=0)
