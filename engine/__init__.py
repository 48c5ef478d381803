"""largestep's engine: everything but the Streamlit pages. Never imports streamlit."""

from engine.workloads.base import Workload

__all__ = ["Workload", "__version__"]

try:
    from importlib.metadata import version as _version

    __version__ = _version("largestep")
except Exception:  # running from a source tree that is not installed
    __version__ = "0.1.0"
