"""Shared fixtures: a fresh largestep home per test, and the path of the tiny test workload."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TINY = f"{TESTS / 'tiny_workload.py'}:make"
TINY_OOM = f"{TESTS / 'tiny_workload.py'}:make_oom"


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty home in a temporary folder, also set as $LARGESTEP_HOME for subprocesses."""
    from engine.home import Home

    root = tmp_path / "home"
    monkeypatch.setenv("LARGESTEP_HOME", str(root))
    return Home(root)


@pytest.fixture
def tiny_spec() -> str:
    return TINY
