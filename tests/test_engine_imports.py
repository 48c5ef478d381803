"""The package's structure, as its imports draw it, stated once: the layers below, one a folder, imports
pointing down only; the code's own imports never name the top-level package (it is installed as
``largestep`` from the folder ``engine/``); nothing inside imports the package root; never Streamlit
outside ``app/`` (the CLI and job processes must not pay for it or depend on it); one naming rule for the
parts a command needs before torch (``X_config.py`` beside ``X.py``); and no import cycle."""

import ast
import graphlib
import os
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import largestep

ROOT = Path(__file__).resolve().parent.parent
ENGINE = ROOT / "engine"
APP = ROOT / "app"
PACKAGE = largestep.__name__

# THE LAYERS. Each may import its own folder and the layers below it, never one above or beside it.
LAYERS = [
    {"app"},  # the Streamlit dashboard (app/): routes and thin pages over ui
    {"integrations"},  # adapters to Lightning and Hugging Face, over largestep.track
    {"cli", "api"},  # the command line; the same loop from Python (largestep.track, .profile, ...)
    {"ui"},  # what the dashboard's pages show, prepared without Streamlit; the HTML report
    {"store"},  # the DuckDB file: all SQL
    {"jobs"},  # job processes: spool and events, runner, bodies, autopilot, launchers
    {"plan", "measure"},  # pure planning; measuring on the device (neither imports the other)
    {"workloads"},  # the workload contract, the loader, the built-ins
    # the foundation every layer may use: names, errors, the home, units, words, what a step-time curve may do
    {"about", "errors", "home", "units", "format", "curve"},
]
FOUNDATION = len(LAYERS) - 1  # loose modules that may use each other (home and units raise errors)
# The package root (engine/__init__.py) is the public door: it hands on names lazily, it sits above every
# layer, and nothing inside the package imports it.


def package_modules() -> list[str]:
    return sorted(
        info.name
        for info in pkgutil.walk_packages(largestep.__path__, prefix=f"{PACKAGE}.")
        if not info.name.endswith(".__main__")
    )


def layer_of(module: str) -> int | None:
    """The rank (0 = top) of ``largestep.<part>...``; None for the package root."""
    parts = module.split(".")
    if len(parts) < 2:
        return None
    for rank, names in enumerate(LAYERS):
        if parts[1] in names:
            return rank
    raise AssertionError(f"{module} belongs to no layer: add its folder to LAYERS")


def module_name(path: Path, root: Path) -> str:
    """``engine/jobs/runner.py`` -> ``largestep.jobs.runner``; ``app/widgets.py`` -> ``largestep.app.widgets``."""
    relative = path.relative_to(root).with_suffix("").parts
    if relative[0] == "engine":
        relative = relative[1:]
    if relative and relative[-1] == "__init__":
        relative = relative[:-1]
    return ".".join([PACKAGE, *relative])


def is_module(name: str, root: Path) -> bool:
    """Is ``largestep.a.b`` a module or package of the tree at ``root``?"""
    parts = name.split(".")[1:]
    if parts[:1] == ["app"]:
        base = root.joinpath("app", *parts[1:])
    else:
        base = root.joinpath("engine", *parts)
    return (
        base.with_suffix(".py").exists() or (base / "__init__.py").exists() or (parts[:1] == ["app"] and base.is_dir())
    )


MODULE_LEVEL, IN_FUNCTION, TYPING_ONLY = "module level", "in a function", "typing only"


def import_statements(tree: ast.AST, kind: str = MODULE_LEVEL):
    """(import statement, when it runs) for every import in a module: at module level (when the module is
    imported), in a function (at its first call), or under ``if TYPE_CHECKING:`` (never: annotations only)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, kind
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            yield from import_statements(node, IN_FUNCTION)
        elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test) and kind == MODULE_LEVEL:
            yield from import_statements(node, TYPING_ONLY)
        else:
            yield from import_statements(node, kind)


def package_imports(
    path: Path, root: Path = ROOT, kinds: tuple[str, ...] = (MODULE_LEVEL, IN_FUNCTION, TYPING_ONLY)
) -> tuple[set[str], list[str]]:
    """Every package module a file imports (of the ``kinds`` asked for: by default at the top, inside a function
    or for annotations), and what it does wrong by naming: an absolute import of the package, or an import of
    the package root's own attributes."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    me = module_name(path, root)
    package = me.split(".") if path.name == "__init__.py" else me.split(".")[:-1]
    found, wrong = set(), []
    for node, kind in import_statements(tree):
        if kind not in kinds:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in (PACKAGE, "engine", "app"):
                    found.add(alias.name)
                    wrong.append(f"import {alias.name}")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package[: len(package) - node.level + 1], *([base] if base else [])])
            elif base.split(".")[0] in (PACKAGE, "engine", "app"):
                wrong.append(f"from {base} import ...")
            else:
                continue
            if base.split(".")[0] != PACKAGE:
                continue
            for alias in node.names:
                full = f"{base}.{alias.name}"
                if is_module(full, root):
                    found.add(full)
                elif base == PACKAGE:
                    wrong.append(f"the package root's {alias.name}")
                else:
                    found.add(base)
    return found, wrong


def offences(root: Path) -> list[str]:
    """ "FILE imports MODULE" for every import of a layer above or beside the file's own, and "FILE names
    ..." for every import that depends on the top-level name or goes through the package root."""
    found = []
    for path in sorted((root / "engine").rglob("*.py")):
        relative = path.relative_to(root).as_posix()
        me = module_name(path, root)
        imports, wrong = package_imports(path, root)
        if me == PACKAGE:
            continue  # the public door: lazily, anything
        found += [f"{relative} names {what}" for what in wrong]
        my_rank, my_folder = layer_of(me), me.split(".")[1]
        for target in sorted(imports):
            rank = layer_of(target)
            if rank is None:
                continue
            same_place = target.split(".")[1] == my_folder or rank == my_rank == FOUNDATION
            if not same_place and rank <= my_rank:
                found.append(f"{relative} imports {target}")
    return found


def test_the_walk_finds_every_layer():
    modules = set(package_modules())
    assert {
        f"{PACKAGE}.{name}"
        for name in (
            "store.ingest",
            "jobs.events",
            "measure.profiler",
            "plan.recommend",
            "ui.runs",
            "cli.measure",
            "workloads.loader",
            "api.track",
        )
    } <= modules
    for module in modules:
        layer_of(module)  # every module sits in a layer


def test_imports_point_down_only_and_never_name_the_package():
    assert offences(ROOT) == []


def test_the_check_catches_an_upward_import_a_named_package_and_the_root(tmp_path):
    measure = tmp_path / "engine" / "measure"
    measure.mkdir(parents=True)
    (tmp_path / "engine" / "plan").mkdir()
    (tmp_path / "engine" / "plan" / "__init__.py").write_text("")
    (tmp_path / "engine" / "__init__.py").write_text("from .measure import devices\n")
    (measure / "__init__.py").write_text("")
    (measure / "devices.py").write_text("")
    (measure / "ok.py").write_text(
        "from ..workloads import load_workload\nfrom . import devices\nfrom ..about import __version__\n"
    )
    (measure / "bad.py").write_text(
        "def f():\n    from ..store import queries\n    from ..plan import recommend\n"
        "    from .. import __version__\n    import engine.units\n"
        "    from largestep.home import Home\n"
    )
    assert offences(tmp_path) == [
        "engine/measure/bad.py names the package root's __version__",
        "engine/measure/bad.py names import engine.units",
        "engine/measure/bad.py names from largestep.home import ...",
        "engine/measure/bad.py imports largestep.plan",
        "engine/measure/bad.py imports largestep.store",
    ]


def test_the_app_sits_on_top_and_nothing_imports_it():
    for path in sorted(APP.rglob("*.py")):
        imports, _ = package_imports(path)
        for target in imports:  # the app may use any layer; it reaches the engine through the public name
            assert layer_of(target) is not None and layer_of(target) >= 0
    for path in sorted(ENGINE.rglob("*.py")):
        imports, _ = package_imports(path)
        assert not any(target.startswith(f"{PACKAGE}.app") for target in imports), path


def test_the_engine_has_few_loose_modules_and_each_layer_says_what_it_is_for():
    loose = sorted(p.name for p in ENGINE.glob("*.py"))
    assert len(loose) <= 8, loose
    for folder in (p for p in ENGINE.iterdir() if p.is_dir() and not p.name.startswith("__")):
        init = folder / "__init__.py"
        assert init.exists() and ast.get_docstring(ast.parse(init.read_text())), (
            f"{folder.name}/__init__.py says nothing"
        )
    assert {p.name for p in ENGINE.iterdir() if p.is_dir() and not p.name.startswith("__")} == set().union(
        *LAYERS[1:FOUNDATION]
    )


def test_every_dashboard_page_has_its_engine_module_and_back():
    pages = {p.stem for p in (APP / "sections").glob("*.py")}
    shared = {"__init__", "widgets", "report"}  # what the pages share, and the HTML report
    views = {p.stem for p in (ENGINE / "ui").glob("*.py")} - shared
    assert pages == views
    for page in pages:
        text = (APP / "sections" / f"{page}.py").read_text()
        assert re.search(rf"^from {PACKAGE}\.ui import .*\b{page}\b", text, re.M), f"app/sections/{page}.py"


def test_importing_every_package_module_does_not_import_streamlit():
    # A fresh interpreter: this test process may have imported streamlit for the app tests.
    # Each module is checked right after its import, so a failure names the one that pulled it in.
    script = (
        "import importlib, sys\n"
        f"for name in {package_modules()!r}:\n"
        "    importlib.import_module(name)\n"
        "    if 'streamlit' in sys.modules:\n"
        "        sys.exit(f'importing {name} imported streamlit')\n"
        "print('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-P", "-c", script],
        cwd=ROOT,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")


STREAMLIT_IMPORT = re.compile(r"^\s*(import\s+streamlit\b|from\s+streamlit\b)", re.MULTILINE)


def test_no_engine_file_imports_streamlit():
    offenders = [
        str(path.relative_to(ROOT))
        for path in sorted(ENGINE.rglob("*.py"))
        if STREAMLIT_IMPORT.search(path.read_text(encoding="utf-8"))
    ]
    assert offenders == []


def test_the_static_check_would_catch_an_import():
    assert STREAMLIT_IMPORT.search("import os\n    import streamlit as st\n")
    assert STREAMLIT_IMPORT.search("from streamlit.testing.v1 import AppTest")
    assert not STREAMLIT_IMPORT.search("# the engine never imports streamlit\nimport streamlit_extras_not")


# THE TORCH-FREE PARTS. A module X.py that imports torch keeps what a command needs before torch (its config and the
# checks of its options, the names and bounds they accept) in X_config.py beside it, which imports without torch:
# `largestep train --help`, a job's submission and the dashboard's forms answer without loading torch.
CONFIG_SUFFIX = "_config"


def torch_free_twins(root: Path = ROOT) -> list[tuple[Path, Path]]:
    """(X_config.py, X.py) for every module named by the rule."""
    return [
        (path, path.with_name(path.name.replace(f"{CONFIG_SUFFIX}.py", ".py")))
        for path in sorted((root / "engine").rglob(f"*{CONFIG_SUFFIX}.py"))
    ]


def imports_torch_at_module_level(path: Path) -> bool:
    return any(
        kind == MODULE_LEVEL
        and (
            any(alias.name.split(".")[0] == "torch" for alias in node.names)
            if isinstance(node, ast.Import)
            else (node.module or "").split(".")[0] == "torch" and not node.level
        )
        for node, kind in import_statements(ast.parse(path.read_text(encoding="utf-8")))
    )


def test_every_torch_free_part_sits_beside_the_module_that_needs_torch():
    twins = torch_free_twins()
    assert {path.relative_to(ENGINE).as_posix() for path, _ in twins} >= {
        "measure/devices_config.py",
        "measure/noise_config.py",
        "measure/profiler_config.py",
        "measure/train_config.py",
        "workloads/base_config.py",
    }
    for config, twin in twins:
        assert twin.exists(), f"{config.name} names no module: the rule is X_config.py beside X.py"
        assert imports_torch_at_module_level(twin), f"{twin.name} imports no torch: {config.name} needs no twin"


def test_every_torch_free_part_imports_without_torch():
    # A fresh interpreter (-P: nothing from the current folder), each module checked right after its import, so that
    # a failure names the one that pulled torch in.
    names = [module_name(config, ROOT) for config, _ in torch_free_twins()]
    script = (
        "import importlib, sys\n"
        f"for name in {names!r}:\n"
        "    importlib.import_module(name)\n"
        "    if 'torch' in sys.modules:\n"
        "        sys.exit(f'importing {name} imported torch')\n"
        "print('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-P", "-c", script],
        cwd=ROOT,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "ok"


def import_cycle(root: Path, kinds: tuple[str, ...]) -> list[str] | None:
    """An import cycle among the modules of ``engine/`` and ``app/`` (``[a, b, a]``), counting the imports of
    ``kinds``; None when there is none. An import of ``a.b.c`` is an edge to ``a.b.c`` (to ``a.b`` when ``c`` is
    a name in it); what a parent package's ``__init__`` imports is its own edges."""
    graph: dict[str, set[str]] = {}
    for path in sorted([*(root / "engine").rglob("*.py"), *(root / "app").rglob("*.py")]):
        me = module_name(path, root)
        graph[me] = package_imports(path, root, kinds)[0] - {me}
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as error:
        return error.args[1]
    return None


def test_no_module_is_part_of_an_import_cycle():
    """Two kinds of import are counted apart, then together.

    Imports at module level run when the module is imported: a cycle among them makes the outcome depend on which
    module a command happens to import first (a half-initialised module, a name not defined yet). Imports inside a
    function run at its first call: the package uses them to keep torch (and DuckDB, plotly) out of a command's
    start-up, never to break a cycle. A cycle through one is still two modules that each need the other, so that
    neither can be read, tested or moved alone, and Python would only say so at the call that closes it: they count
    too, and the graph of both kinds has no cycle either. Imports under ``if TYPE_CHECKING:`` never run (annotations
    only) and are left out."""
    assert import_cycle(ROOT, (MODULE_LEVEL,)) is None
    assert import_cycle(ROOT, (MODULE_LEVEL, IN_FUNCTION)) is None


def test_the_cycle_check_catches_one_closed_inside_a_function(tmp_path):
    measure = tmp_path / "engine" / "measure"
    measure.mkdir(parents=True)
    (tmp_path / "app").mkdir()
    (tmp_path / "engine" / "__init__.py").write_text("")
    (measure / "__init__.py").write_text("")
    (measure / "devices.py").write_text("import torch\nfrom .devices_config import NAMES\n")
    (measure / "devices_config.py").write_text(
        "from typing import TYPE_CHECKING\nNAMES = ()\nif TYPE_CHECKING:\n    from .devices import Info\n"
    )
    assert import_cycle(tmp_path, (MODULE_LEVEL, IN_FUNCTION)) is None  # an annotation's import never runs
    (measure / "devices_config.py").write_text("NAMES = ()\n\ndef resolve(name):\n    from . import devices\n")
    assert import_cycle(tmp_path, (MODULE_LEVEL,)) is None
    cycle = import_cycle(tmp_path, (MODULE_LEVEL, IN_FUNCTION))
    assert cycle is not None and set(cycle) == {f"{PACKAGE}.measure.devices", f"{PACKAGE}.measure.devices_config"}


def test_the_command_line_starts_without_numerical_libraries():
    # Every `largestep` command imports the command group and each command's module: what they import at their
    # top, every command pays (SciPy's stats took 1.2 s of each, NumPy 0.2 s); they import it where it is used.
    script = (
        "import sys\n"
        "import largestep.cli\n"
        "heavy = sorted({'torch', 'numpy', 'scipy', 'pandas', 'duckdb', 'streamlit'} & set(sys.modules))\n"
        "print(','.join(heavy) or 'none')\n"
    )
    result = subprocess.run([sys.executable, "-P", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "none"
