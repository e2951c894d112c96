"""Benchmarks of mailhandlers against the stdlib, aiosmtplib and Django (``python -m bench.run``).

Benchmarks are not tests: nothing here is collected by pytest, and no timing is
asserted anywhere in the test suite. ``python -m bench.run --smoke`` runs every
benchmark once with tiny counts so CI keeps them working.
"""
