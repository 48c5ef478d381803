"""A job followed from Python: a tqdm bar (``tqdm.auto``: a widget in a notebook with ipywidgets installed, text in a
terminal or without them) and the lines the CLI prints for its events, or nothing at all when asked to be quiet."""

from __future__ import annotations

from typing import Callable

from ..home import Home
from ..jobs.follow import Update, watch

__all__ = ["follow"]


def follow(home: Home, job_id: str, describe: Callable[[dict], str | None] | None = None, quiet: bool = False) -> str:
    """Follow job ``job_id`` until it ends, showing its progress unless ``quiet``; returns its final state.

    Interrupting (Ctrl-C, or a notebook's "interrupt the kernel") cancels the job, then is raised on.
    """
    if quiet:
        return watch(home, job_id, lambda update: None)
    bar = _tqdm()(
        total=100,
        desc=f"{job_id}: starting",
        bar_format="{desc} {bar} {percentage:3.0f}% [{elapsed}]",
        leave=True,
        dynamic_ncols=True,
    )

    def show(update: Update) -> None:
        for event in update.events:
            text = describe(event) if describe is not None else None
            if text:
                bar.write(text)
        done = round(max(0.0, min(100.0, 100.0 * update.progress)), 1)
        description = f"{job_id}: {update.phase or update.state.lower()}"
        if done != bar.n or description != bar.desc:  # a bar redrawn only when it changed: a short log
            bar.n = done
            bar.set_description_str(description, refresh=False)
            bar.refresh()

    try:
        return watch(home, job_id, show)
    except KeyboardInterrupt:
        bar.write(f"cancelled {job_id}")
        raise
    finally:
        bar.close()


def _tqdm():
    """tqdm.auto's bar where it can draw a widget; the text bar otherwise, without tqdm.auto's warning that a
    notebook lacks ipywidgets (said once, in docs/python-api.md, rather than under every call)."""
    import importlib.util

    if importlib.util.find_spec("ipywidgets") is None:
        from tqdm.std import tqdm
    else:
        from tqdm.auto import tqdm
    return tqdm
