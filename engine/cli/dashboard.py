"""`dashboard`: the Streamlit app on this machine's loopback address."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from ..about import module
from .group import cli
from .options import home_of


def app_dir() -> Path:
    """Where the package's Streamlit app is installed (engine never imports it: it only runs it)."""
    import importlib.util

    spec = importlib.util.find_spec(module("app"))
    return Path(next(iter(spec.submodule_search_locations)))


@cli.command()
@click.option("--port", default=8501, show_default=True, type=click.IntRange(1, 65535), help="Port on 127.0.0.1.")
@click.pass_context
def dashboard(ctx, port: int) -> None:
    """Start the Streamlit dashboard on this machine's loopback address."""
    import subprocess

    from .. import store

    home = home_of(ctx)
    store.check_database_file(home.database)
    home.ensure()
    app = app_dir()
    cmd = [sys.executable, "-m", "streamlit", "run", str(app / "main.py"), "--server.port", str(port)]
    cmd += streamlit_flags(app / "streamlit.toml")
    # the safe import path: a module in the user's folder (an engine.py, a streamlit.py) never replaces one
    # the dashboard imports
    env = dict(os.environ, LARGESTEP_HOME=str(home.root), PYTHONSAFEPATH="1")
    click.echo(f"largestep dashboard on http://127.0.0.1:{port}  (home {home.root})", err=True)
    try:
        subprocess.run(cmd, env=env, check=False)
    except KeyboardInterrupt:
        pass


def streamlit_flags(config_path: Path) -> list[str]:
    """The project's Streamlit settings as flags, so they hold from any working directory."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    try:
        config = tomllib.loads(config_path.read_text())
    except OSError:
        config = {
            "server": {"address": "127.0.0.1", "headless": True},
            "browser": {"gatherUsageStats": False},
            "client": {"showErrorDetails": "none"},
        }
    flags = []
    for section, values in config.items():
        for key, value in values.items():
            flags += [f"--{section}.{key}", str(value).lower() if isinstance(value, bool) else str(value)]
    return flags
