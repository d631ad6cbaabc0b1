"""tunesmith.cli: the ``tunesmith`` command (``tunesmith.cli.main:main``)."""
