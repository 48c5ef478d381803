"""``python -m engine.jobs JOB_DIR``: the process of one job (see :func:`engine.jobs.runner.run_job`)."""

import sys
from pathlib import Path

from engine.jobs.runner import run_job

if len(sys.argv) != 2:
    print("usage: python -m engine.jobs JOB_DIR", file=sys.stderr)
    sys.exit(2)
sys.exit(run_job(Path(sys.argv[1])))
