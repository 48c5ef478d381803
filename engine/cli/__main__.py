"""``python -m engine.cli``: the ``largestep`` command."""

import sys

from engine.cli import main

sys.exit(main())
