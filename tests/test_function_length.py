"""The code a newcomer reads first stays short enough to read top to bottom: ``train()`` is a sequence of named
steps, each concern of the loop (data-parallel wrapping, noise probes, the batch schedule's phases, the clock that
stops during evaluation, the logging interval) a function or small object of its own; so are ``autopilot_task`` (the
trusted profile, the noise scale, the corrected recommendation, the arms, the looks, the attempts, the result) and
``recommend`` (the candidates, their predictions, the ranking, the reasons, the document). Each function named here is
held under 60 lines, counted with ast from its ``def`` to its last line, docstring included, so none can grow back
into a page that carries every concern at once."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LIMIT = 60  # lines a function stays under

# Functions held under the limit by name ("Class.method" for a method), and files all of whose functions are.
CAPPED = {
    "engine/measure/train.py": ["train"],
    "engine/jobs/autopilot.py": ["autopilot_task"],
    "engine/plan/recommend.py": ["recommend"],
}
EVERY_FUNCTION_IN = ["engine/measure/train.py", "engine/jobs/autopilot.py", "engine/plan/recommend.py"]


def function_lengths(source: str) -> dict[str, int]:
    """Every function's and method's length in lines (``end_lineno - lineno + 1`` of its node), by qualified name."""
    lengths = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lengths[prefix + child.name] = child.end_lineno - child.lineno + 1
                visit(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")

    visit(ast.parse(source), "")
    return lengths


@pytest.mark.parametrize("path, name", [(path, name) for path, names in CAPPED.items() for name in names])
def test_each_named_function_stays_under_the_limit(path, name):
    lengths = function_lengths((ROOT / path).read_text(encoding="utf-8"))
    assert name in lengths, f"{path} has no function {name}: update CAPPED"
    assert lengths[name] < LIMIT, f"{path}: {name} is {lengths[name]} lines; split a concern out of it"


@pytest.mark.parametrize("path", EVERY_FUNCTION_IN)
def test_no_part_of_these_files_takes_its_length_back(path):
    lengths = function_lengths((ROOT / path).read_text(encoding="utf-8"))
    assert {name: n for name, n in lengths.items() if n >= LIMIT} == {}


def test_the_count_runs_from_def_to_the_last_line_docstring_and_methods_included():
    source = (
        'def short():\n    """Doc\n    string."""\n    return 1\n\n\n'
        "class Loop:\n    def long(self):\n" + "        x = 1\n" * 60 + "\n        return x\n"
    )
    assert function_lengths(source) == {"short": 4, "Loop.long": 63}
