"""asyncembed benchmarks: one ``bench_*.py`` per question, one subprocess per peer.

Run ``python -m benchmarks [names...] [--quick] [--json]``; results land in
``benchmarks/results/<name>.md`` and ``.json``. See ``docs/benchmarks.md``.
"""
