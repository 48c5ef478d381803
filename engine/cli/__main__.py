"""``python -m largestep.cli``: the ``largestep`` command."""

from . import run

run()
