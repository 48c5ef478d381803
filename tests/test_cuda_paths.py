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
from helpers import clocked

from largestep import jobs, store
from largestep.home import Home
from largestep.jobs import runner
from largestep.jobs.spool import write_json_atomic
from largestep.measure.profiler import QUIET_PATIENCE, ProfileConfig
from largestep.measure.train import TrainConfig

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
    write_json_atomic(
        job_dir / "spec.json",
        {
            "id": job_id,
            "kind": kind,
            "device": device,
            "workload": "tiny",
            "params": params,
            "created_at": time.time(),
            "home": str(home.root),
            "locks": [device],
        },
    )
    runner.run_job(job_dir)
    return job_id


@pytest.mark.slow
def test_a_profile_on_a_gpu_keeps_allocator_peaks_the_ceiling_and_energy_per_sample(home, tiny_spec, gpu):
    config = ProfileConfig(batch_sizes=(32, 64, 128, 256), min_steps=3, min_seconds=0.3, warmup_steps=1)
    with cuda_on_cpu(gpu, ALLOCATOR):
        job_id = run_job_here(
            home, "profile", {"workload": tiny_spec, "device": "cuda:0", "config": asdict(config)}, "cuda:0"
        )
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
        # the rounds' point is the one stored; steps timed in blocks count their seconds whole, so the rounds
        # end on time (a block's one time a step, summed, would never reach --min-seconds: on to the rounds' cap);
        # on a busy machine, visits other processes contended are set aside and made again, up to the patience
        visits = point["visits"] + point["loaded_visits"]
        assert 1 <= point["visits"] and visits <= QUIET_PATIENCE * config.rounds, point
        # the allocator's own peak, not the CPU estimate
        assert point["peak_memory_bytes"] == ALLOCATOR.bytes_for(batch) and not point["memory_is_estimate"]
        # energy per sample: the mean NVML power over the timed steps times the step time, per sample
        assert point["mean_power_w"] == pytest.approx(WATTS)
        assert point["energy_per_sample_j"] == pytest.approx(WATTS * point["estimate_s"] / batch)
    assert profile["memory_fit_slope_bytes"] == pytest.approx(ALLOCATOR.bytes_per_sample)
    assert profile["memory_fit_intercept_bytes"] == pytest.approx(ALLOCATOR.fixed_bytes)


@pytest.mark.slow
def test_a_training_run_on_a_gpu_keeps_the_allocator_peak(home, tiny_spec, gpu):
    config = TrainConfig(batch_size=64, lr=1e-2, epochs=1, seed=0, log_every_steps=4)
    allocator = FakeAllocator(fixed_bytes=2**30, bytes_per_sample=2**20)  # no ceiling: evaluation runs 512 rows
    with cuda_on_cpu(gpu, allocator):
        job_id = run_job_here(
            home,
            "train",
            {
                "workload": tiny_spec,
                "device": "cuda:0",
                "config": asdict(config),
                "options": {},
                "role": None,
                "recommendation_id": None,
            },
            "cuda:0",
        )
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
        job_id = run_job_here(
            home, "profile", {"workload": tiny_spec, "device": "cuda:0", "config": asdict(config)}, "cuda:0"
        )
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
    assert (
        f"lowest {lowest['energy_per_sample_j']:.3g} J/sample at batch {int(lowest['batch_size'])}"
        == charts["energy"]["layout"]["title"]["subtitle"]["text"]
    )


# -- the first GPU: what a real GPU would do that a CPU never does -----------------------------------------

QUICK = ProfileConfig(min_steps=3, min_seconds=0.0, warmup_steps=1)
BUSY = FakeAllocator(fixed_bytes=3 * 2**30, bytes_per_sample=5 * 2**20, seconds_per_forward=0.002)  # ~10 ms a step


def measure_on_gpu(gpu, tiny_spec, batch_size: int, allocator: FakeAllocator = BUSY, config=QUICK, **hooks):
    import torch

    from largestep.measure.profiler import measure_point
    from largestep.workloads import load_workload

    workload = load_workload(tiny_spec)
    with cuda_on_cpu(gpu, allocator):
        return measure_point(workload, torch.device("cuda:0"), batch_size, config, **hooks)


@pytest.mark.slow
@pytest.mark.parametrize(
    "raw", ["CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`", "CUDA error: out of memory"]
)
def test_a_library_running_out_of_gpu_memory_is_the_sweeps_ceiling_not_an_error(gpu, tiny_spec, raw):
    allocator = FakeAllocator(oom_above=64, oom_error=RuntimeError(raw))
    point = measure_on_gpu(gpu, tiny_spec, 128, allocator)
    assert point.status == "oom" and raw.split("\n")[0] in point.error


@pytest.mark.slow
def test_a_points_peak_is_what_the_allocator_reserved_not_only_what_tensors_took(gpu, tiny_spec):
    fragmented = FakeAllocator(
        fixed_bytes=2**30, bytes_per_sample=2**20, reserved_overhead_bytes=512 * 2**20, seconds_per_forward=0.01
    )
    point = measure_on_gpu(gpu, tiny_spec, 64, fragmented)
    assert point.status == "ok" and point.peak_memory_bytes == fragmented.bytes_for(64) + 512 * 2**20


@pytest.mark.slow
def test_energy_per_sample_with_several_gpus_counts_every_ranks_power(gpu, tiny_spec, monkeypatch):
    import torch.distributed as dist

    from largestep.measure import distributed

    # one of two ranks, each drawing 250 W: the other rank's power arrives through the all-reduce
    monkeypatch.setattr(distributed, "is_distributed", lambda: True)
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(distributed, "_collective_device", lambda: "cpu")
    monkeypatch.setattr(dist, "all_reduce", lambda tensor, op=None: tensor.mul_(2))
    point = measure_on_gpu(gpu, tiny_spec, 64, power_between=lambda _start, _end: WATTS)
    assert point.mean_power_w == pytest.approx(2 * WATTS)
    assert point.energy_per_sample_j == pytest.approx(2 * WATTS * point.estimate_s / 64)


def test_a_data_set_too_large_for_the_gpu_stays_in_host_memory_as_in_training(monkeypatch, tiny_spec):
    import torch

    from largestep.measure import devices
    from largestep.measure.profiler import shuffled_on_device
    from largestep.workloads import load_workload

    small = install_fake_cuda(monkeypatch, [cuda_properties(UUID, total_memory=256 * 2**10)])  # 256 KiB
    workload = load_workload(tiny_spec)  # 2048 x 16 float32 inputs: 128 KiB, over a quarter of the GPU
    assert not devices.fits_on_device(workload.train, "cuda:0")
    with cuda_on_cpu(small):
        data = shuffled_on_device(workload, torch.device("cuda:0"), seed=0)
    assert "placed" not in small  # nothing was sent to the GPU: each step gathers and copies its own batch
    assert data[0].shape == workload.train[0].shape
    roomy = install_fake_cuda(monkeypatch, [cuda_properties(UUID)])
    with cuda_on_cpu(roomy):
        shuffled_on_device(workload, torch.device("cuda:0"), seed=0)
    assert roomy["placed"] == 0  # it fits: on the GPU once, as training keeps it


@pytest.mark.slow
def test_gpu_steps_are_timed_in_blocks_so_the_host_queues_ahead_as_in_training(gpu, tiny_spec, monkeypatch):
    import dataclasses

    import torch

    from largestep.measure import profiler
    from largestep.measure.profiler import measure_point
    from largestep.workloads import load_workload

    # blocks of the longest length, 4 steps, whatever this machine's step time
    monkeypatch.setattr(profiler, "BLOCK_SECONDS", 60.0)
    monkeypatch.setattr(profiler, "MAX_BLOCK_STEPS", 4)

    workload = load_workload(tiny_spec)
    steps = {"n": 0}

    def loss(output, target):  # once a step
        steps["n"] += 1
        return torch.nn.functional.cross_entropy(output, target)

    marks = []
    with cuda_on_cpu(gpu, BUSY):
        point = measure_point(
            dataclasses.replace(workload, loss=loss),
            torch.device("cuda:0"),
            64,
            QUICK,
            telemetry_tag=lambda b: marks.append((len(gpu["synchronized"]), steps["n"])),
        )
    (syncs_before, steps_before), (syncs_after, steps_after) = marks
    blocks = len(point.step_times_s)
    assert point.status == "ok" and blocks == QUICK.min_steps
    assert steps_after - steps_before == 4 * blocks  # four steps a block, not one
    assert syncs_after - syncs_before == 2 * blocks  # a sync before and after each block, none inside


@pytest.mark.slow
def test_a_datasets_gpu_steps_are_timed_in_blocks_with_the_loader_and_without(gpu, monkeypatch):
    import dataclasses

    import model_workloads
    import torch

    from largestep.measure import profiler
    from largestep.measure.profiler import measure_point

    monkeypatch.setattr(profiler, "BLOCK_SECONDS", 60.0)  # blocks of 4 steps, as above
    monkeypatch.setattr(profiler, "MAX_BLOCK_STEPS", 4)
    steps = {"n": 0}

    def loss(output, target):  # once a step
        steps["n"] += 1
        return torch.nn.functional.cross_entropy(output, target)

    marks = []
    workload = dataclasses.replace(model_workloads.make_tuples(), loss=loss)
    with cuda_on_cpu(gpu, BUSY):
        point = measure_point(
            workload,
            torch.device("cuda:0"),
            64,
            QUICK,
            telemetry_tag=lambda b: marks.append((len(gpu["synchronized"]), steps["n"])),
        )
    (syncs_before, steps_before), (syncs_after, steps_after) = marks
    blocks = len(point.step_times_s)
    assert point.status == "ok" and blocks == QUICK.min_steps and point.compute_median_s is not None
    # each round a block through the loader and a block on batches already on the device, four steps each
    assert steps_after - steps_before == 2 * 4 * blocks
    assert syncs_after - syncs_before == 2 * 2 * blocks  # a sync before and after each block, none inside


@pytest.mark.slow
def test_fp16_warm_up_runs_until_the_loss_scaler_stops_skipping_steps(gpu, tiny_spec):
    import dataclasses

    import torch

    from largestep.measure import profiler
    from largestep.measure.profiler import measure_point
    from largestep.workloads import load_workload

    workload = load_workload(tiny_spec)
    config = dataclasses.replace(QUICK, dtype="fp16", warmup_steps=1)
    # more overflowing steps than the untimed ones a warm-up takes anyway (its steps, then SIZING_STEPS to size
    # the blocks): fewer would be absorbed by those, and the test would pass without waiting for the scaler
    overflowing = {"left": 6}
    assert overflowing["left"] > config.warmup_steps + profiler.SIZING_STEPS + 1

    def loss(output, target):  # the first six steps overflow at the scaler's initial scale
        value = torch.nn.functional.cross_entropy(output, target)
        if overflowing["left"]:
            overflowing["left"] -= 1
            return value * float("inf")
        return value

    marks = []
    with cuda_on_cpu(gpu, BUSY):
        point = measure_point(
            dataclasses.replace(workload, loss=loss),
            torch.device("cuda:0"),
            64,
            config,
            telemetry_tag=lambda b: marks.append(overflowing["left"]),
        )
    assert point.status == "ok"
    assert marks[0] == 0  # every skipped (overflowing) step came before the clock started


@pytest.mark.slow
def test_a_steady_gpu_step_ends_its_warm_up_early_and_sizes_its_blocks_from_it(gpu, tiny_spec, monkeypatch):
    import dataclasses

    import torch

    from largestep.measure.profiler import measure_point
    from largestep.workloads import load_workload

    step_s = 2**-8  # 3.9 ms every step, exact in binary as the clock's sums are
    workload, clock = clocked(monkeypatch, lambda _b, _k: step_s, load_workload(tiny_spec))
    with cuda_on_cpu(gpu, BUSY):
        point = measure_point(
            workload, torch.device("cuda:0"), 64, dataclasses.replace(QUICK, warmup_steps=3), telemetry_tag=clock.tag
        )
    # the step counting FLOPs, then two steps that agree: the steady state, and the length of a step; no
    # further steps to size the blocks (six untimed steps before, three of them for the sizing)
    assert point.status == "ok" and clock.untimed == [3] and point.warmup_steps == 3  # none of them timed
    assert clock.steps[64] - 3 == 13 * len(point.step_times_s)  # blocks of 50 ms of steps, rounded up
    assert point.median_s == pytest.approx(step_s)


def train_on_gpu(gpu, tiny_spec, allocator: FakeAllocator, device: str = "cuda:0", **config):
    import torch

    from largestep.measure.train import NullLog, TrainConfig, train
    from largestep.workloads import load_workload

    logged: list[dict] = []

    class Rows(NullLog):
        def logged(self, rows: list[dict]) -> None:
            logged.extend(rows)

    with cuda_on_cpu(gpu, allocator):
        result = train(load_workload(tiny_spec), torch.device(device), TrainConfig(**config), log=Rows())
    return result, logged


@pytest.mark.slow
def test_the_training_clock_is_read_only_once_the_gpus_queued_work_is_done(gpu, tiny_spec, monkeypatch):
    import types

    from largestep.measure import train as train_module

    # every forward queues device work the host does not wait for (as a GPU's kernels): a clock read
    # while some is still queued would leave it out of the interval just logged (the first throughput)
    real_clock = time.perf_counter
    device_busy_at_read: list[bool] = []

    def clock() -> float:
        now = real_clock()
        device_busy_at_read.append(gpu["busy_until"] > now)
        return now

    monkeypatch.setattr(train_module, "time", types.SimpleNamespace(perf_counter=clock))
    _, rows = train_on_gpu(
        gpu, tiny_spec, FakeAllocator(seconds_per_forward=0.1), batch_size=64, lr=1e-2, max_steps=2, log_every_steps=1
    )
    assert [r["step"] for r in rows] == [1, 2] and device_busy_at_read
    assert not any(device_busy_at_read)


@pytest.mark.slow
def test_training_data_left_on_the_host_is_pinned_a_batch_at_a_time_never_as_a_whole(monkeypatch, tiny_spec):
    small = install_fake_cuda(monkeypatch, [cuda_properties(UUID, total_memory=256 * 2**10)])
    result, _ = train_on_gpu(
        small, tiny_spec, FakeAllocator(fixed_bytes=0, bytes_per_sample=0), batch_size=64, lr=1e-2, max_steps=3
    )
    assert result.steps == 3
    assert small["pinned"] and all(shape[0] == 64 for shape in small["pinned"])  # batches only


@pytest.mark.slow
def test_a_job_on_the_second_gpu_makes_it_current_so_plain_cuda_lands_there(monkeypatch, home, tiny_spec):
    install_fake_nvml(monkeypatch, make_fake_pynvml([FakeGpu(uuid=f"GPU-{UUID}")]))
    two = install_fake_cuda(monkeypatch, [cuda_properties("0" * 8 + UUID[8:]), cuda_properties(UUID)])
    config = TrainConfig(batch_size=64, lr=1e-2, max_steps=2)
    with cuda_on_cpu(two, FakeAllocator(fixed_bytes=0, bytes_per_sample=0)):
        job_id = run_job_here(
            home,
            "train",
            {
                "workload": tiny_spec,
                "device": "cuda:1",
                "config": asdict(config),
                "options": {},
                "role": None,
                "recommendation_id": None,
            },
            "cuda:1",
        )
    assert jobs.derive_state(home.job_dir(job_id)) == jobs.FINISHED
    assert two["current"] == 1  # torch.cuda.set_device(1): "cuda" in the workload's code means this job's GPU


@pytest.mark.slow
def test_a_batch_schedules_next_phase_builds_its_data_copy_once_the_old_one_is_gone(gpu, tiny_spec, monkeypatch):
    from largestep.measure import train as train_module
    from largestep.workloads import load_workload

    # the data fits on the GPU, so each phase's source of batches copies it there: two copies at once would
    # need twice the room the run was planned with
    workload = load_workload(tiny_spec)
    data_bytes = sum(t.numel() * t.element_size() for t in workload.train)
    built = train_module.training_batches
    on_gpu_before_building = []

    def training_batches(*args, **kwargs):
        on_gpu_before_building.append(gpu["resident_bytes"])
        return built(*args, **kwargs)

    monkeypatch.setattr(train_module, "training_batches", training_batches)
    result, _ = train_on_gpu(
        gpu,
        tiny_spec,
        FakeAllocator(fixed_bytes=0, bytes_per_sample=0),
        batch_size=32,
        lr=1e-2,
        epochs=1,
        batch_schedule=((32, 0.0), (64, 0.5)),
    )
    assert result.samples >= workload.n_train // 2 and len(on_gpu_before_building) == 2  # the second phase ran
    first, second = on_gpu_before_building
    assert first == 0 and second < data_bytes / 4, (second, data_bytes)  # not the first phase's copy still there
    assert gpu["resident_peak_bytes"] < 1.5 * data_bytes


@pytest.mark.slow
def test_a_profile_of_data_left_on_the_host_gathers_and_pins_each_batch_as_training_does(monkeypatch, tiny_spec):
    from largestep.workloads import load_workload

    # 256 KiB of GPU: the tiny workload's 144 KiB of training data stays on the host, in training and in its profile
    small = install_fake_cuda(monkeypatch, [cuda_properties(UUID, total_memory=256 * 2**10)])
    data_bytes = sum(t.numel() * t.element_size() for t in load_workload(tiny_spec).train)
    point = measure_on_gpu(small, tiny_spec, 64, FakeAllocator(fixed_bytes=0, bytes_per_sample=0))
    assert point.status == "ok"
    # each step's batch gathered from the shuffle and pinned on its own, never the whole set (which torch's pinned
    # allocator would round up to a power of two, beside the data and its shuffled copy)
    assert small["pinned"] and all(shape[0] == 64 for shape in small["pinned"]), small["pinned"][:3]
    assert small["resident_peak_bytes"] < data_bytes / 4  # batches on the GPU, never the data set


# -- TF32 and cuDNN: set by --tf32 or the workload, recorded with every profile and run ---------------------


def make_tf32():
    """The tiny workload asking for TF32 and cuDNN's autotuning."""
    import dataclasses

    from tiny_workload import make

    return dataclasses.replace(make(), tf32=True, cudnn_benchmark=True)


@pytest.fixture
def torch_math():
    """torch's process-wide TF32 and cuDNN settings, as they were before the test, restored after it."""
    import torch

    before = (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.backends.cudnn.benchmark,
        torch.get_float32_matmul_precision(),
    )
    torch.set_float32_matmul_precision("highest")
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = False, True  # torch's defaults
    torch.backends.cudnn.benchmark = False
    yield
    (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark) = before[
        :3
    ]
    torch.set_float32_matmul_precision(before[3])


TF32_ON = {
    "matmul_allow_tf32": True,
    "cudnn_allow_tf32": True,
    "cudnn_benchmark": True,
    "float32_matmul_precision": "high",
}


@pytest.mark.slow
def test_a_workloads_tf32_is_set_and_recorded_for_its_profile_and_no_tf32_for_its_run(home, gpu, torch_math, capsys):
    from largestep.cli.measure import print_profile
    from largestep.store.outcomes import profile_summary

    spec = f"{__file__}:make_tf32"
    config = ProfileConfig(batch_sizes=(32, 64), min_steps=3, min_seconds=0.1, warmup_steps=1)
    with cuda_on_cpu(gpu, FakeAllocator(fixed_bytes=0, bytes_per_sample=0)):
        profile_id = run_job_here(
            home, "profile", {"workload": spec, "device": "cuda:0", "config": asdict(config)}, "cuda:0"
        )
        # --no-tf32 on the run: the flag wins over the workload's field (cuDNN's autotuning stays the workload's)
        run_config = TrainConfig(batch_size=64, lr=1e-2, max_steps=2, tf32=False)
        run_id = run_job_here(
            home,
            "train",
            {
                "workload": spec,
                "device": "cuda:0",
                "config": asdict(run_config),
                "options": {},
                "role": None,
                "recommendation_id": None,
            },
            "cuda:0",
        )
    assert jobs.derive_state(home.job_dir(profile_id)) == jobs.derive_state(home.job_dir(run_id)) == jobs.FINISHED
    store.ingest(home)
    with store.connect(home) as con:
        profile, run = store.load_profile(con, profile_id), store.get_run(con, run_id)
    assert profile["math_settings"] == TF32_ON
    assert run["math_settings"] == {
        **TF32_ON,
        "matmul_allow_tf32": False,
        "cudnn_allow_tf32": False,
        "float32_matmul_precision": "highest",
    }
    summary = profile_summary(profile)
    assert summary["math_settings"] == TF32_ON
    print_profile(summary)
    assert (
        "measured with TF32 on (matmul and cuDNN), float32 matmul precision high, cuDNN autotuning on"
        in capsys.readouterr().out
    )
