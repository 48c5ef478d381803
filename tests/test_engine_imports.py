"""The engine never imports Streamlit: the CLI and job processes must not pay for it or depend on it."""

import os
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import engine

ROOT = Path(__file__).resolve().parent.parent
ENGINE = ROOT / "engine"


def engine_modules() -> list[str]:
    return sorted(info.name for info in pkgutil.walk_packages(engine.__path__, prefix="engine."))


def test_the_walk_finds_the_engine():
    modules = engine_modules()
    assert {"engine.store", "engine.charts", "engine.views", "engine.workloads.loader"} <= set(modules)


def test_importing_every_engine_module_does_not_import_streamlit():
    # A fresh interpreter: this test process may have imported streamlit for the app tests.
    # Each module is checked right after its import, so a failure names the one that pulled it in.
    script = (
        "import importlib, sys\n"
        f"for name in {engine_modules()!r}:\n"
        "    importlib.import_module(name)\n"
        "    if 'streamlit' in sys.modules:\n"
        "        sys.exit(f'importing {name} imported streamlit')\n"
        "print('ok')\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")


STREAMLIT_IMPORT = re.compile(r"^\s*(import\s+streamlit\b|from\s+streamlit\b)", re.MULTILINE)


def test_no_engine_file_imports_streamlit():
    offenders = [str(path.relative_to(ROOT)) for path in sorted(ENGINE.rglob("*.py"))
                 if STREAMLIT_IMPORT.search(path.read_text(encoding="utf-8"))]
    assert offenders == []


def test_the_static_check_would_catch_an_import():
    assert STREAMLIT_IMPORT.search("import os\n    import streamlit as st\n")
    assert STREAMLIT_IMPORT.search("from streamlit.testing.v1 import AppTest")
    assert not STREAMLIT_IMPORT.search("# the engine never imports streamlit\nimport streamlit_extras_not")
