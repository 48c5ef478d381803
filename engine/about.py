"""What the package is called and which version it is: the foundation every layer may ask.

The folder is ``engine/``, the import name ``largestep`` (mapped at packaging time). Nothing in the
code names the top-level package: imports are relative, and what must name a module in a string (a
job's ``python -m``, a job kind's body, a preloaded module) asks :func:`module` here.
"""

PACKAGE = __name__.rpartition(".")[0]  # "largestep" once installed

try:
    from importlib.metadata import version as _version

    __version__ = _version("largestep")
except Exception:  # an environment where the distribution's metadata is missing
    __version__ = "0.1.0"


def module(path: str) -> str:
    """The full import name of one of the package's modules: ``module("jobs.bodies")``."""
    return f"{PACKAGE}.{path}" if path else PACKAGE
