"""``python -m largestep.jobs JOB_DIR``: the process of one job (see :func:`largestep.jobs.runner.run_job`)."""

import sys
from pathlib import Path

from .runner import run_job

if len(sys.argv) != 2:
    print("usage: python -m largestep.jobs JOB_DIR", file=sys.stderr)
    sys.exit(2)
sys.exit(run_job(Path(sys.argv[1])))
