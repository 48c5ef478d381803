"""The engine's structure, as its imports draw it: one layer a folder, imports pointing down only,
and never Streamlit (the CLI and job processes must not pay for it or depend on it)."""

import ast
import os
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import engine

ROOT = Path(__file__).resolve().parent.parent
ENGINE = ROOT / "engine"

# Each layer may import its own modules and the layers below it, never one above or beside it.
LAYERS = [
    {"cli"},                      # the command line (it may render the dashboard's HTML report)
    {"ui"},                       # what the dashboard's pages show, prepared without Streamlit
    {"store", "integrations"},    # the DuckDB file: all SQL; adapters to Lightning and Hugging Face (via engine.track)
    {"jobs"},                     # job processes: spool and events, runner, bodies, autopilot, launchers
    {"plan", "measure"},          # pure planning; measuring on the device (neither imports the other)
    {"workloads"},                # the workload contract, the loader, the built-ins
    {"errors", "home", "units", "format"},   # the foundation every layer may use
]
FOUNDATION = len(LAYERS) - 1         # loose modules that may use each other (home and units raise errors)
PUBLIC_FACE = {"engine/__init__.py"}   # hands Workload on lazily; it is the package's door, not a layer


def engine_modules() -> list[str]:
    return sorted(info.name for info in pkgutil.walk_packages(engine.__path__, prefix="engine.")
                  if not info.name.endswith(".__main__"))


def layer_of(module: str) -> int | None:
    """The rank (0 = top) of ``engine.<part>...``; None for ``engine`` itself."""
    parts = module.split(".")
    if parts[0] != "engine" or len(parts) < 2 or parts[1].startswith("__"):
        return None   # the package itself (its __version__)
    for rank, names in enumerate(LAYERS):
        if parts[1] in names:
            return rank
    raise AssertionError(f"{module} belongs to no layer: add its folder to LAYERS")


def engine_imports(path: Path, root: Path = ROOT) -> set[str]:
    """Every engine module a file imports, at the top or inside a function."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = path.relative_to(root).with_suffix("").parts[:-1]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("engine")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package[: len(package) - node.level + 1], *([base] if base else [])])
            if base == "engine":
                found |= {f"engine.{alias.name}" for alias in node.names}
            elif base.startswith("engine."):
                found.add(base)
    return found


def upward_imports(root: Path) -> list[str]:
    """"FILE imports MODULE" for every import of a layer above or beside the file's own."""
    offenders = []
    for path in sorted((root / "engine").rglob("*.py")):
        relative = path.relative_to(root).as_posix()
        if relative in PUBLIC_FACE:
            continue
        me = ".".join(path.relative_to(root).with_suffix("").parts)
        my_rank, my_folder = layer_of(me), me.split(".")[1]
        for target in sorted(engine_imports(path, root)):
            rank = layer_of(target)
            if rank is None:
                continue   # `import engine`: the package's public door (engine.track), as user code uses it
            same_place = target.split(".")[1] == my_folder or rank == my_rank == FOUNDATION
            if not same_place and rank <= my_rank:
                offenders.append(f"{relative} imports {target}")
    return offenders


def test_the_walk_finds_every_layer():
    modules = set(engine_modules())
    assert {"engine.store.ingest", "engine.jobs.events", "engine.measure.profiler", "engine.plan.recommend",
            "engine.ui.runs", "engine.cli.measure", "engine.workloads.loader"} <= modules
    for module in modules:
        layer_of(module)   # every module sits in a layer


def test_imports_point_down_only():
    assert upward_imports(ROOT) == []


def test_the_direction_check_catches_an_upward_or_sideways_import(tmp_path):
    measure = tmp_path / "engine" / "measure"
    measure.mkdir(parents=True)
    (measure / "ok.py").write_text("from engine.workloads import load_workload\nfrom engine.measure import devices\n"
                                   "from . import devices\n")
    (measure / "bad.py").write_text("def f():\n    from engine import store\n    from ..plan import recommend\n")
    assert upward_imports(tmp_path) == ["engine/measure/bad.py imports engine.plan",
                                        "engine/measure/bad.py imports engine.store"]


def test_the_engine_has_few_loose_modules_and_each_layer_says_what_it_is_for():
    loose = sorted(p.name for p in ENGINE.glob("*.py"))
    assert len(loose) <= 8, loose
    for folder in (p for p in ENGINE.iterdir() if p.is_dir() and not p.name.startswith("__")):
        init = folder / "__init__.py"
        assert init.exists() and ast.get_docstring(ast.parse(init.read_text())), f"{folder.name}/__init__.py says nothing"


def test_every_dashboard_page_has_its_engine_module_and_back():
    pages = {p.stem for p in (ROOT / "app" / "sections").glob("*.py")}
    shared = {"__init__", "widgets", "report"}   # what the pages share, and the HTML report
    views = {p.stem for p in (ENGINE / "ui").glob("*.py")} - shared
    assert pages == views
    for page in pages:
        text = (ROOT / "app" / "sections" / f"{page}.py").read_text()
        assert re.search(rf"^from engine\.ui import .*\b{page}\b", text, re.M), f"app/sections/{page}.py"


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
