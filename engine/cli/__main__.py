"""``python -m engine.cli``: the ``largestep`` command."""

from engine.cli import run

run()
