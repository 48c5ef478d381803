"""`dashboard`: the Streamlit app on this machine's loopback address."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from engine.cli.group import cli
from engine.cli.options import home_of

APP_DIR = Path(__file__).resolve().parents[2] / "app"


@cli.command()
@click.option("--port", default=8501, show_default=True, type=click.IntRange(1, 65535), help="Port on 127.0.0.1.")
@click.pass_context
def dashboard(ctx, port: int) -> None:
    """Start the Streamlit dashboard on this machine's loopback address."""
    import subprocess

    from engine import store

    home = home_of(ctx)
    store.check_database_file(home.database)
    home.ensure()
    cmd = [sys.executable, "-m", "streamlit", "run", str(APP_DIR / "main.py"), "--server.port", str(port)]
    cmd += streamlit_flags(APP_DIR.parent / ".streamlit" / "config.toml")
    env = dict(os.environ, LARGESTEP_HOME=str(home.root))
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
        config = {"server": {"address": "127.0.0.1", "headless": True},
                  "browser": {"gatherUsageStats": False}, "client": {"showErrorDetails": "none"}}
    flags = []
    for section, values in config.items():
        for key, value in values.items():
            flags += [f"--{section}.{key}", str(value).lower() if isinstance(value, bool) else str(value)]
    return flags
