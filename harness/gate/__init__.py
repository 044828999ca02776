"""The regression gate: a Result against the committed Baseline (baseline.py), paired statistics (stats), the
candidate workflow's table (compare).

Nothing else here: importing one module of the layer must not import the others (tests/test_layering.py).
"""
