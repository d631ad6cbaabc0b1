"""``python -m tunesmith ...``: the ``tunesmith`` command without the console script."""

from tunesmith.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
