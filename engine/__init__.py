"""largestep: train faster with large, precise gradient steps.

The package's public door. Everything is imported lazily, on first use: a queued job process imports
this package while it waits for its device, and must not spend CPU importing torch while another job
is being timed. Nothing inside the package imports this module; it imports them.
"""

from importlib import import_module

from .about import __version__

__all__ = [
    "Workload",
    "track",
    "profile",
    "noise",
    "recommend",
    "autopilot",
    "Profile",
    "NoiseEstimate",
    "NoiseCurve",
    "Recommendation",
    "Autopilot",
    "LargestepError",
    "UsageError",
    "UnusableProfile",
    "WorkloadError",
    "__version__",
]

# public name -> the module that defines it
_WHERE = {
    "Workload": ".workloads.base",
    "track": ".api.track",
    # the loop from Python, on the same jobs and store as the CLI
    "profile": ".api.loop",
    "noise": ".api.loop",
    "recommend": ".api.loop",
    "autopilot": ".api.loop",
    "Profile": ".api.results",
    "NoiseEstimate": ".api.results",
    "NoiseCurve": ".api.results",
    "Recommendation": ".api.results",
    "Autopilot": ".api.results",
    # what the functions raise on bad input: the CLI's one-line errors
    "LargestepError": ".errors",
    "UsageError": ".errors",
    "UnusableProfile": ".errors",
    "WorkloadError": ".errors",
}


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(import_module(_WHERE[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *_WHERE})
