"""The CUDA paths end to end on a fake GPU: a profile job and a training job run in this process
on torch.device("cuda:0") (the work itself on the CPU, see fake_nvml.cuda_on_cpu), with the fake
allocator's peaks, its out-of-memory ceiling and NVML's power reaching the store."""

from __future__ import annotations

import time
from dataclasses import asdict

import pytest
from fake_nvml import (
    FakeAllocator,
    FakeGpu,
    cuda_on_cpu,
    cuda_properties,
    install_fake_cuda,
    install_fake_nvml,
    make_fake_pynvml,
)

from engine import jobs, store
from engine.home import Home
from engine.jobs import runner
from engine.jobs.spool import write_json_atomic
from engine.measure.profiler import ProfileConfig
from engine.measure.train import TrainConfig

UUID = "6e3f5c2a-1b2c-4d5e-8f90-0a1b2c3d4e5f"
WATTS = 250.0
ALLOCATOR = FakeAllocator(fixed_bytes=3 * 2**30, bytes_per_sample=5 * 2**20, oom_above=128)


@pytest.fixture
def gpu(monkeypatch):
    """One fake A100 as torch.cuda and NVML both see it, drawing a steady 250 W."""
    install_fake_nvml(monkeypatch, make_fake_pynvml([FakeGpu(uuid=f"GPU-{UUID}", power_mw=int(WATTS * 1000))]))
    return install_fake_cuda(monkeypatch, [cuda_properties(UUID)])


def run_job_here(home: Home, kind: str, params: dict, device: str) -> str:
    """A job as `submit` writes it, run by the job runner in this process (so the fakes apply)."""
    home.ensure()
    job_id = runner.new_job_id(kind)
    job_dir = home.job_dir(job_id)
    job_dir.mkdir(parents=True)
    write_json_atomic(job_dir / "spec.json", {"id": job_id, "kind": kind, "device": device, "workload": "tiny",
                                              "params": params, "created_at": time.time(), "home": str(home.root),
                                              "locks": [device]})
    runner.run_job(job_dir)
    return job_id


@pytest.mark.slow
def test_a_profile_on_a_gpu_keeps_allocator_peaks_the_ceiling_and_energy_per_sample(home, tiny_spec, gpu):
    config = ProfileConfig(batch_sizes=(32, 64, 128, 256), min_steps=3, min_seconds=0.3, warmup_steps=1)
    with cuda_on_cpu(gpu, ALLOCATOR):
        job_id = run_job_here(home, "profile", {"workload": tiny_spec, "device": "cuda:0", "config": asdict(config)},
                              "cuda:0")
    assert jobs.derive_state(home.job_dir(job_id)) == jobs.FINISHED
    assert gpu["synchronized"] and set(gpu["synchronized"]) == {0}  # every timed step between two syncs
    store.ingest(home)
    with store.connect(home) as con:
        profile = store.load_profile(con, job_id)
    points = {p["batch_size"]: p for p in profile["points"]}
    assert {b: p["status"] for b, p in points.items()} == {32: "ok", 64: "ok", 128: "ok", 256: "oom"}
    assert profile["stop_reason"] == "oom" and "out of memory" in points[256]["error"]
    assert profile["device_id"] == f"cuda:GPU-{UUID}" and profile["telemetry_source"] == "nvml"
    for batch in (32, 64, 128):
        point = points[batch]
        # the allocator's own peak, not the CPU estimate
        assert point["peak_memory_bytes"] == ALLOCATOR.bytes_for(batch) and not point["memory_is_estimate"]
        # energy per sample: the mean NVML power over the timed steps times the step time, per sample
        assert point["mean_power_w"] == pytest.approx(WATTS)
        assert point["energy_per_sample_j"] == pytest.approx(WATTS * point["median_s"] / batch)
    assert profile["memory_fit_slope_bytes"] == pytest.approx(ALLOCATOR.bytes_per_sample)
    assert profile["memory_fit_intercept_bytes"] == pytest.approx(ALLOCATOR.fixed_bytes)


@pytest.mark.slow
def test_a_training_run_on_a_gpu_keeps_the_allocator_peak(home, tiny_spec, gpu):
    config = TrainConfig(batch_size=64, lr=1e-2, epochs=1, seed=0, log_every_steps=4)
    allocator = FakeAllocator(fixed_bytes=2**30, bytes_per_sample=2**20)  # no ceiling: evaluation runs 512 rows
    with cuda_on_cpu(gpu, allocator):
        job_id = run_job_here(home, "train", {"workload": tiny_spec, "device": "cuda:0", "config": asdict(config),
                                              "options": {}, "role": None, "recommendation_id": None}, "cuda:0")
    assert jobs.derive_state(home.job_dir(job_id)) == jobs.FINISHED
    assert gpu["synchronized"] and set(gpu["synchronized"]) == {0}  # the clock read only after the device's work
    store.ingest(home)
    with store.connect(home) as con:
        run = store.get_run(con, job_id)
    assert run["state"] == "FINISHED" and run["device_name"] == "NVIDIA A100-SXM4-40GB"
    # the largest forward was the evaluation's: the whole 512-sample validation set at once
    assert run["peak_memory_bytes"] == allocator.bytes_for(512)
    assert run["final_val_loss"] < 0.69  # it learned: below the loss of a coin flip (ln 2)


@pytest.mark.slow
def test_the_profiles_page_charts_energy_per_sample_of_a_gpu_profile(monkeypatch, home, tiny_spec, gpu):
    import json

    from helpers import open_page

    config = ProfileConfig(batch_sizes=(32, 64), min_steps=3, min_seconds=0.3, warmup_steps=1)
    with cuda_on_cpu(gpu, ALLOCATOR):
        job_id = run_job_here(home, "profile", {"workload": tiny_spec, "device": "cuda:0", "config": asdict(config)},
                              "cuda:0")
    store.ingest(home)
    with store.connect(home) as con:
        points = store.profile_points(con, job_id)
    at = open_page(monkeypatch, home, "profiles")
    charts = {c.proto.id.rsplit("chart.", 1)[-1]: json.loads(c.proto.spec) for c in at.get("plotly_chart")}
    assert "energy" in charts and len(charts) == 6  # the CPU's five, and energy
    [trace] = charts["energy"]["data"]
    assert trace["name"] == "energy per sample"
    assert "J/sample at batch" in charts["energy"]["layout"]["title"]["subtitle"]["text"]
    lowest = points.loc[points["energy_per_sample_j"].idxmin()]
    assert f"lowest {lowest['energy_per_sample_j']:.3g} J/sample at batch {int(lowest['batch_size'])}" == \
        charts["energy"]["layout"]["title"]["subtitle"]["text"]
