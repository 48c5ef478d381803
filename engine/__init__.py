"""largestep's engine: everything but the Streamlit pages. Never imports streamlit.

``Workload`` is imported lazily: a queued job process imports this package while it waits for
its device, and must not spend CPU importing torch while another job is being timed.
"""

__all__ = ["Workload", "__version__"]

try:
    from importlib.metadata import version as _version

    __version__ = _version("largestep")
except Exception:  # running from a source tree that is not installed
    __version__ = "0.1.0"


def __getattr__(name: str):
    if name == "Workload":
        from engine.workloads.base import Workload

        return Workload
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
