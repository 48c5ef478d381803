"""A test that cannot run is not a test that passed: in CI (``CI`` set, as ``.ci/run`` sets it) a test whose
library is missing fails; on a developer's machine it is skipped, saying how to install the library."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from helpers import ROOT, required

# tests whose library is an optional extra (the test extra installs every one)
NEEDING_A_LIBRARY = [
    "tests/test_ray.py::test_ray_refuses_what_it_cannot_run",
    "tests/test_examples.py::test_hugging_face_tiny_models_from_configs[bert]",
]
HIDDEN = ("ray", "transformers")


@pytest.mark.parametrize(
    "ci, outcome",
    [("true", pytest.fail.Exception), (None, pytest.skip.Exception)],
    ids=["in CI", "on a developer's machine"],
)
def test_a_missing_library_fails_in_ci_and_is_skipped_elsewhere(monkeypatch, ci, outcome):
    monkeypatch.delenv("CI", raising=False)
    if ci:
        monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match=r"largestep_not_a_module is not installed \(pip install it\)"):
        required("largestep_not_a_module", "pip install it")


@pytest.mark.slow
@pytest.mark.parametrize("ci", ["true", None], ids=["in CI", "on a developer's machine"])
def test_the_ray_and_transformers_tests_fail_in_ci_without_their_library(tmp_path, ci):
    shadow = tmp_path / "shadow"  # packages found before the installed ones, that import as a missing one does
    for name in HIDDEN:
        (shadow / name).mkdir(parents=True)
        (shadow / name / "__init__.py").write_text(
            f'raise ModuleNotFoundError("No module named {name!r}", name={name!r})\n'
        )
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS", "PYTEST_CURRENT_TEST")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(shadow), os.environ.get("PYTHONPATH")]))
    if ci:
        env["CI"] = ci
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:randomly",
            "--basetemp",
            str(tmp_path / "inner"),
            *NEEDING_A_LIBRARY,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    summary = result.stdout.strip().splitlines()[-1]
    if ci:  # failed (a test) or an error (a fixture): either way, not green
        assert result.returncode == 1 and "passed" not in summary and "skipped" not in summary, result.stdout[-3000:]
        assert all(f"{name} is not installed" in result.stdout for name in HIDDEN), result.stdout[-3000:]
        assert result.stdout.count("CI must run this test, not skip it") >= len(NEEDING_A_LIBRARY)
    else:
        assert result.returncode == 0 and summary.startswith(f"{len(NEEDING_A_LIBRARY)} skipped"), result.stdout[-3000:]
