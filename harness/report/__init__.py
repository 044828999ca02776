"""Reports of a session: results.json, JUnit, terminal table and summary.md (outputs), the HTML page (html), run
history in SQLite (history), the reproducibility manifest (manifest).

Nothing else here: importing one module of the layer must not import the others (tests/test_layering.py).
"""
