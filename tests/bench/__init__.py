"""The benchmark of issue 5: ``jobnode bench`` or ``python -m tests.bench`` (README.md here).

Not part of the test run (``tests/test_bench_smoke.py`` only checks that a ``--quick``
run works and writes its report).
"""
