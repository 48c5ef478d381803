"""High-level operations shared by the CLI and the dashboard: one function, two front ends."""

from __future__ import annotations

from dataclasses import asdict

from engine import devices, jobs, store
from engine.home import Home
from engine.profiler import ProfileConfig

__all__ = ["start_profile", "profile_summary"]


def start_profile(home: Home, workload: str, options: dict, device: str, config: ProfileConfig) -> str:
    """Validate everything, then start a profiling job; returns its id (also the profile's id).

    Every check that can fail on bad input runs before the job's folder is written.
    """
    from engine.workloads import load_workload

    config.validate()
    torch_device = devices.resolve_device(device)
    devices.check_dtype(torch_device, config.dtype)
    home.check()
    store.check_database_file(home.database)
    loaded = load_workload(workload, options)  # a bad workload fails here, before anything is written
    params = {"workload": workload, "options": dict(options), "device": str(torch_device), "config": asdict(config)}
    return jobs.submit(home, "profile", params, device=str(torch_device), workload=loaded.name)


def profile_summary(profile: dict) -> dict:
    """A stored profile (from :func:`engine.store.load_profile`) in the shape `profile --json` promises."""
    points = []
    for p in profile["points"]:
        points.append({
            "batch_size": p["batch_size"], "status": p["status"],
            "step_time_s": {"median": p.get("median_s"), "p25": p.get("p25_s"), "p75": p.get("p75_s"),
                            "n": p.get("n") or 0},
            "samples_per_s": p.get("samples_per_s"), "peak_memory_bytes": p.get("peak_memory_bytes"),
            "memory_is_estimate": p.get("memory_is_estimate"), "flops_per_step": p.get("flops_per_step"),
            "flops_per_s": p.get("flops_per_s"), "energy_per_sample_j": p.get("energy_per_sample_j"),
            "noisy": p.get("noisy"), "error": p.get("error"),
        })
    fit = None
    if profile.get("memory_fit_slope_bytes") is not None:
        fit = {"intercept_bytes": profile["memory_fit_intercept_bytes"], "slope_bytes": profile["memory_fit_slope_bytes"]}
    return {
        "profile_id": profile["id"], "workload": profile["workload"], "state": profile.get("state"),
        "device": {"id": profile.get("device_id"), "name": profile.get("device_name"), "kind": profile.get("device_kind")},
        "dtype": profile.get("dtype"), "saturation_batch": profile.get("saturation_batch"),
        "stop_reason": profile.get("stop_reason"), "memory_fit": fit,
        "memory_budget_bytes": profile.get("memory_budget_bytes"),
        "baseline": {"batch_size": profile.get("baseline_batch_size"), "learning_rate": profile.get("baseline_lr")},
        "telemetry": {"source": profile.get("telemetry_source"), "reason": profile.get("telemetry_reason")},
        "started_at": profile.get("started_at"), "ended_at": profile.get("ended_at"), "points": points,
    }
