"""Benchmarks of duraflows-pg-async against hand-written asyncpg and pgbench.

Run ``python -m bench`` (or ``python3 scripts/dev.py bench``, ``nox -s bench``); ``--smoke`` is the
few-second version CI runs; ``--help`` lists the options. See docs/performance.md for what each
variant measures and how the ratios are computed.

The pure parts (statistics, pgbench log parsing, report rendering) import nothing beyond the
standard library, so unit tests can use them without a server, matplotlib or psutil.
"""
