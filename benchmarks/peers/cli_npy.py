"""The bulk CLI, ``asyncembed embed INPUT -o OUT.npy``, run in this process via ``main(argv)``.

Config: ``input``, ``out``, ``n``, ``base_url``, ``model``. Peak RSS is this process's,
so it is the CLI's own (argument parsing, reader, Embedder, writer).
"""

from __future__ import annotations

import time

import numpy as np

from asyncembed._cli import main as cli_main
from benchmarks.peers._peer import config, emit


def main() -> None:
    cfg = config()
    argv = [
        "embed",
        cfg["input"],
        "-o",
        cfg["out"],
        "--base-url",
        cfg["base_url"],
        "--model",
        cfg["model"],
        "--quiet",
    ]
    t0, cpu0 = time.perf_counter(), time.process_time()
    code = cli_main(argv)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    if code != 0:
        raise SystemExit(f"asyncembed embed exited {code}")
    matrix = np.load(cfg["out"], mmap_mode="r")
    assert matrix.shape[0] == cfg["n"], matrix.shape
    emit(
        peer="asyncembed CLI",
        n=cfg["n"],
        wall_s=wall,
        cpu_s=cpu,
        texts_per_s=cfg["n"] / wall,
        cpu_us_per_text=cpu / cfg["n"] * 1e6,
        dims=int(matrix.shape[1]),
    )


if __name__ == "__main__":
    main()
