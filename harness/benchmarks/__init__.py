"""Benchmarks that print figures, never asserted in tests: `make bench-speed` (speed), `make bench-protocols`
(protocols), `make bench-farm` (farm), `make soak` (soak).

Nothing else here: importing one module of the layer must not import the others (tests/test_layering.py).
"""
