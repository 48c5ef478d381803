"""The package as a user installs it: the wheel, in a fresh virtual environment with the project's CPU torch,
used from a project folder that has its own ``engine.py``, ``engine/`` and ``app/`` (as torchvision's detection
references and DETR do). Nothing of largestep may shadow them, nor they largestep."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
import tomllib
import urllib.request
import zipfile
from pathlib import Path

import pytest

from helpers import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

CHROMIUM = "/usr/bin/chromium"
TORCH_CPU = os.environ.get("LARGESTEP_TORCH_CPU_VERSION", "2.13.0+cpu")


def test_the_declared_packages_are_the_folders():
    """pyproject.toml lists the packages by hand (the folders are mapped to the import name): every folder
    of engine/ with an __init__.py is listed, and nothing else."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setuptools["package-dir"] == {"largestep": "engine", "largestep.app": "app"}
    folders = {
        "largestep" + "".join(f".{part}" for part in init.parent.relative_to(ROOT / "engine").parts)
        for init in (ROOT / "engine").rglob("__init__.py")
    }
    assert set(setuptools["packages"]) == folders | {"largestep.app"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cmd: list[str], cwd: Path, env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{cmd}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(the virtual environment's bin folder, the wheel's path): the wheel built from this checkout and
    installed with its dependencies in a new environment, torch first (the CPU build, as ./dev installs it)."""
    where = tmp_path_factory.mktemp("wheel")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--quiet",
            "-w",
            str(where / "dist"),
            str(ROOT),
        ],
        cwd=where,
        env=env,
    )
    [wheel] = (where / "dist").glob("largestep-*.whl")
    run([sys.executable, "-m", "venv", str(where / "venv")], cwd=where, env=env)
    bin_dir = where / "venv" / "bin"
    pip = [str(bin_dir / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    if subprocess.run([*pip, f"torch=={TORCH_CPU}"], cwd=where, env=env, capture_output=True).returncode != 0:
        run([*pip, "torch==2.13.0"], cwd=where, env=env, timeout=900)
    run([*pip, str(wheel)], cwd=where, env=env, timeout=900)
    return bin_dir, wheel


@pytest.fixture
def project(tmp_path):
    """A user's project folder with its own engine.py, engine/ and app/, and a workload that uses them."""
    folder = tmp_path / "project"
    (folder / "engine").mkdir(parents=True)
    (folder / "engine" / "__init__.py").write_text("def helper():\n    return 'the user\\'s engine'\n")
    (folder / "engine.py").write_text("def helper():\n    return 'the user\\'s engine.py'\n")
    (folder / "app").mkdir()
    (folder / "app" / "__init__.py").write_text("NAME = 'the user\\'s app'\n")
    (folder / "app" / "main.py").write_text("raise SystemExit('the user\\'s app/main.py must never run')\n")
    (folder / "my_workload.py").write_text(
        textwrap.dedent("""
        import torch

        from engine import helper   # the user's own module, beside this file
        from largestep import Workload

        assert helper() == "the user's engine"


        def make() -> Workload:
            g = torch.Generator().manual_seed(0)
            x = torch.randn(512, 8, generator=g)
            y = (x[:, 0] > 0).long()
            return Workload(name="users-mlp", model=lambda: torch.nn.Sequential(torch.nn.Linear(8, 16),
                            torch.nn.ReLU(), torch.nn.Linear(16, 2)), train=(x[:384], y[:384]), val=(x[384:], y[384:]),
                            loss=torch.nn.functional.cross_entropy, baseline_batch_size=16, baseline_lr=1e-2)
    """)
    )
    return folder


def user_env(project: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONSAFEPATH")}
    return dict(env, LARGESTEP_HOME=str(project / ".largestep"), LARGESTEP_WARM_LAUNCHER="0")


def test_the_wheel_holds_largestep_alone(installed):
    _bin, wheel = installed
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        tops = {name.split("/")[0] for name in names if not name.split("/")[0].endswith((".dist-info", ".data"))}
        assert tops == {"largestep"}
        assert {
            "largestep/__init__.py",
            "largestep/about.py",
            "largestep/app/main.py",
            "largestep/app/sections/runs.py",
            "largestep/jobs/__main__.py",
            "largestep/cli/__main__.py",
        } <= set(names)
        settings = archive.read("largestep/app/streamlit.toml").decode()  # the file itself, not a link
        assert 'address = "127.0.0.1"' in settings and "enableXsrfProtection = true" in settings
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        assert "largestep = largestep.cli:run" in archive.read(entry_points).decode()


def test_from_a_folder_with_its_own_engine_the_cli_a_tracked_script_and_a_workload_work(installed, project):
    bin_dir, _wheel = installed
    env = user_env(project)
    largestep = str(bin_dir / "largestep")
    helped = run([largestep, "--help"], project, env)
    assert "profile" in helped.stdout and "autopilot" in helped.stdout

    script = project / "train_mine.py"
    script.write_text(
        textwrap.dedent("""
        import engine
        import largestep

        assert engine.helper() == "the user's engine"
        with largestep.track("users-loop", batch_size=32, lr=0.01, seed=1) as run:
            for step in range(1, 6):
                run.log(step, train_loss=1.0 / step)
            run.log(5, val_loss=0.4)
        print(run.id)
    """)
    )
    run_id = run([str(bin_dir / "python"), str(script)], project, env).stdout.strip().splitlines()[-1]
    assert run_id.startswith("train-")
    listed = json.loads(run([largestep, "runs", "--json"], project, env).stdout)
    assert [(r["id"], r["state"]) for r in listed] == [(run_id, "FINISHED")]

    profiled = run(
        [
            largestep,
            "profile",
            "--workload",
            "my_workload.py:make",
            "--batch-sizes",
            "8,16",
            "--min-seconds",
            "0.1",
            "--min-steps",
            "3",
            "--rounds",
            "1",
            "--json",
        ],
        project,
        env,
    )
    summary = json.loads(profiled.stdout)
    assert summary["profile_id"].startswith("prof-") and summary["workload"] == "users-mlp"
    assert [p["status"] for p in summary["points"]] == ["ok", "ok"]


@pytest.mark.browser
@pytest.mark.timeout(600)
def test_from_a_folder_with_its_own_app_the_dashboard_renders_a_page(installed, project, tmp_path):
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing (./dev test installs Debian's chromium)")
        pytest.skip(f"{CHROMIUM} is missing")
    from playwright.sync_api import sync_playwright

    bin_dir, _wheel = installed
    port = free_port()
    log = open(tmp_path / "dashboard.log", "wb")
    server = subprocess.Popen(
        [str(bin_dir / "largestep"), "dashboard", "--port", str(port)],
        cwd=project,
        env=user_env(project),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, (tmp_path / "dashboard.log").read_text()
            time.sleep(0.5)
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=CHROMIUM,
                headless=True,
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
            )
            try:
                page = browser.new_page()
                page.set_default_timeout(90_000)
                page.goto(url)
                page.get_by_text("Nothing measured here yet").wait_for()  # the Overview, rendered by the page itself
                assert page.get_by_text("No module named").count() == 0
                page.goto(f"{url}/runs")
                page.get_by_role("heading", name="Runs").wait_for()
                assert page.get_by_text("No module named").count() == 0
            finally:
                browser.close()
    finally:
        os.killpg(server.pid, 15)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, 9)
            server.wait()
        log.close()
