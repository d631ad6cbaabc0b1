"""Bad-input cases for the error table (docs/errors.md), one module per area.

Each module (``config.py``, ``cli.py``, ``data.py``, ``checkpoint.py``, ``environment.py``,
...) defines ``CASES: list[ErrorCase]``. ``tests/test_error_table.py`` runs every case and
checks: exit code 2, exactly one ``error: ...`` line on stderr, no traceback, and nothing in
the case's output folder created, changed or removed. It also regenerates docs/errors.md.
"""
