"""``python -m tunesmith.cli`` is the ``tunesmith`` command."""

import sys

from tunesmith.cli.main import main

sys.exit(main())
