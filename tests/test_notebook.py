"""examples/notebook.ipynb as a user runs it: every cell in a real Jupyter kernel, offline, against a fresh home.
It profiles, recommends and runs the autopilot through the Python API, then profiles a Workload it built."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "examples" / "notebook.ipynb"


def shown(cell) -> str:
    """What a code cell showed: its printed text and its result's plain-text form."""
    parts = []
    for output in cell.get("outputs", []):
        parts.append(output.get("text", ""))
        parts.append((output.get("data") or {}).get("text/plain", ""))
    return "\n".join(parts)


@pytest.mark.slow
@pytest.mark.e2e
def test_the_notebook_runs_the_loop_through_the_python_api(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    home = tmp_path / "home"
    monkeypatch.setenv("LARGESTEP_HOME", str(home))  # the kernel and its jobs inherit these
    monkeypatch.setenv("LARGESTEP_WARM_LAUNCHER", "0")  # no launcher left behind by the kernel's jobs
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute(env=dict(os.environ))  # raises CellExecutionError, with the cell and its traceback, on failure

    cells = [c for c in notebook.cells if c.cell_type == "code"]
    text = "\n".join(shown(c) for c in cells)
    assert "Profile prof-" in text and "Recommendation rec-" in text and "Autopilot auto-" in text
    assert "Profile prof-" in shown(cells[-1]) and "notebook-mlp" in shown(cells[-1])
    assert any("<table" in (o.get("data") or {}).get("text/html", "") for c in cells for o in c.get("outputs", []))
    assert (home / "largestep.duckdb").exists() and not (ROOT / "examples" / ".largestep").exists()
