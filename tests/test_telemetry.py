"""NVML status, the background sampler (NVML and psutil), snapshots and the hardware report.

NVML is faked with fake_nvml.make_fake_pynvml; the psutil paths run for real."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import psutil
import pytest
import torch
from fake_nvml import UUID_A, UUID_B, FakeGpu, cuda_properties, install_fake_cuda, install_fake_nvml, make_fake_pynvml
from helpers import required, wait_for

from largestep.measure import devices, telemetry
from largestep.measure.devices import DeviceInfo

GPU_FIELDS = ("gpu_util_pct", "mem_used_bytes", "power_w", "sm_clock_mhz", "temp_c")


def cuda_info(uuid: str = UUID_A, index: int = 0) -> DeviceInfo:
    return DeviceInfo(
        id=f"cuda:GPU-{uuid}",
        kind="cuda",
        index=index,
        name="NVIDIA A100-SXM4-40GB",
        total_memory_bytes=40 * 2**30,
        compute_capability="8.0",
        uuid=f"GPU-{uuid}",
        cores=108,
        torch_device=f"cuda:{index}",
    )


def cpu_info() -> DeviceInfo:
    return devices.device_info(torch.device("cpu"))


@pytest.fixture
def nvml(monkeypatch):
    """Install a fake pynvml: `nvml(gpus, **options)` returns the fake module."""
    return lambda gpus=(), **options: install_fake_nvml(monkeypatch, make_fake_pynvml(gpus, **options))


# ---------------------------------------------------------------------------------------------
# nvml_status


def test_nvml_status_reports_driver_and_gpus_and_initialises_once(nvml):
    fake = nvml([FakeGpu(uuid=f"GPU-{UUID_A}"), FakeGpu(uuid=f"GPU-{UUID_B}")], driver_version="550.54.15")
    status = telemetry.nvml_status()
    assert status == telemetry.NvmlStatus(
        available=True, reason=None, driver_version="550.54.15", nvml_version="12.535.104.05", gpu_count=2
    )
    telemetry.nvml_status()
    telemetry.Sampler(cuda_info())
    assert fake.calls["nvmlInit"] == 1


def test_nvml_strings_as_bytes_are_decoded(nvml):
    nvml([FakeGpu(uuid=f"GPU-{UUID_A}")], bytes_strings=True)
    assert telemetry.nvml_status().driver_version == "535.104.05"
    assert telemetry.nvml_handle_for(cuda_info()) is not None


@pytest.mark.parametrize(
    "init_error, reason",
    [
        (
            "NVMLError_LibraryNotFound",
            "NVIDIA driver library (libnvidia-ml) not found: no NVIDIA driver on this machine",
        ),
        ("NVMLError_DriverNotLoaded", "NVIDIA driver is not loaded"),
        ("NVMLError_NoPermission", "NVML failed to start: Insufficient Permissions"),
    ],
)
def test_nvml_failures_fall_back_to_psutil_with_the_reason(nvml, init_error, reason):
    nvml([FakeGpu(uuid=f"GPU-{UUID_A}")], init_error=init_error)
    status = telemetry.nvml_status()
    assert (status.available, status.reason, status.gpu_count) == (False, reason, 0)

    with telemetry.Sampler(cuda_info(), interval_s=0.02) as sampler:
        assert wait_for(lambda: len(sampler.samples) >= 2, timeout=5.0, poll_s=0.005), (
            "timed out waiting for the sampler"
        )
    assert (sampler.source, sampler.reason) == ("psutil", reason)
    for sample in sampler.samples:
        assert sample["source"] == "psutil"
        assert all(sample[key] is None for key in GPU_FIELDS)
        assert sample["rss_bytes"] > 0


def test_nvidia_ml_py_not_installed(monkeypatch):
    install_fake_nvml(monkeypatch, None)  # `import pynvml` raises ImportError
    assert telemetry.nvml_status().reason == "nvidia-ml-py is not installed"
    assert telemetry.Sampler(cuda_info()).reason == "nvidia-ml-py is not installed"


@pytest.mark.skipif(os.path.exists("/proc/driver/nvidia"), reason="this machine has an NVIDIA driver")
def test_the_real_nvidia_ml_py_on_a_machine_without_a_driver(monkeypatch):
    required("pynvml", "pip install nvidia-ml-py, a dependency of largestep")
    monkeypatch.setattr(telemetry, "_nvml_cache", None)
    status = telemetry.nvml_status()
    assert not status.available
    assert status.reason == "NVIDIA driver library (libnvidia-ml) not found: no NVIDIA driver on this machine"


# ---------------------------------------------------------------------------------------------
# the NVML sampler


def test_gpu_sampler_reads_every_field_in_units_and_tags_batch_sizes(nvml):
    nvml(
        [
            FakeGpu(
                uuid=f"GPU-{UUID_A}",
                gpu_util_pct=87,
                mem_used_bytes=12 * 2**30,
                power_mw=251_500,
                sm_clock_mhz=1410,
                temp_c=61,
            )
        ]
    )
    sampler = telemetry.Sampler(cuda_info(), interval_s=0.01)
    assert (sampler.source, sampler.reason) == ("nvml", None)
    sampler.tag = 128
    with sampler:
        assert wait_for(lambda: len(sampler.samples) >= 2, timeout=5.0, poll_s=0.005), (
            "timed out waiting for the sampler"
        )
        sampler.tag = 256
        count = len(sampler.samples)
        assert wait_for(lambda: len(sampler.samples) >= count + 2, timeout=5.0, poll_s=0.005), (
            "timed out waiting for the sampler"
        )

    samples = sampler.samples
    assert all(set(s) == set(telemetry.SAMPLE_KEYS) for s in samples)
    last = samples[-1]
    assert last["source"] == "nvml"
    assert (last["gpu_util_pct"], last["mem_used_bytes"], last["power_w"], last["sm_clock_mhz"], last["temp_c"]) == (
        87,
        12 * 2**30,
        251.5,
        1410,
        61,
    )
    assert last["rss_bytes"] > 0
    tags = [s["batch_size"] for s in samples]
    assert tags[0] == 128 and tags[-1] == 256 and tags == sorted(tags)
    times = [s["t"] for s in samples]
    assert times == sorted(times) and abs(times[-1] - time.time()) < 5


def test_unsupported_fields_are_none_asked_once_and_the_sampler_keeps_going(nvml):
    fake = nvml(
        [
            FakeGpu(
                uuid=f"GPU-{UUID_A}",
                unsupported=frozenset({"nvmlDeviceGetPowerUsage", "nvmlDeviceGetClockInfo"}),
                failing=(("nvmlDeviceGetTemperature", "NVMLError_GpuIsLost"),),  # transient: asked every tick
            )
        ]
    )
    with telemetry.Sampler(cuda_info(), interval_s=0.01) as sampler:
        assert wait_for(lambda: len(sampler.samples) >= 5, timeout=5.0, poll_s=0.005), (
            "timed out waiting for the sampler"
        )
        assert sampler._thread.is_alive()

    samples = sampler.samples
    assert all(s["power_w"] is None and s["sm_clock_mhz"] is None and s["temp_c"] is None for s in samples)
    assert all(s["gpu_util_pct"] == 87 and s["mem_used_bytes"] == 12 * 2**30 for s in samples)
    assert fake.calls["nvmlDeviceGetPowerUsage"] == 1
    assert fake.calls["nvmlDeviceGetClockInfo"] == 1
    assert fake.calls["nvmlDeviceGetTemperature"] == len(samples)


@pytest.mark.parametrize("bytes_strings", [False, True])
def test_cuda_devices_are_matched_to_nvml_by_uuid_not_index(nvml, monkeypatch, bytes_strings):
    # NVML enumerates in PCI order (A, B); CUDA_VISIBLE_DEVICES=1,0 makes torch's cuda:0 GPU B.
    nvml(
        [
            FakeGpu(uuid=f"GPU-{UUID_A}", gpu_util_pct=10, temp_c=40),
            FakeGpu(uuid=f"GPU-{UUID_B}", gpu_util_pct=90, temp_c=80),
        ],
        bytes_strings=bytes_strings,
    )
    install_fake_cuda(monkeypatch, [cuda_properties(UUID_B), cuda_properties(UUID_A)])
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)

    _, cuda0, cuda1 = devices.discover()
    assert telemetry.nvml_handle_for(cuda0).gpu.uuid == f"GPU-{UUID_B}"
    assert (telemetry.snapshot(cuda0)["gpu_util_pct"], telemetry.snapshot(cuda0)["temp_c"]) == (90, 80)
    assert (telemetry.snapshot(cuda1)["gpu_util_pct"], telemetry.snapshot(cuda1)["temp_c"]) == (10, 40)


def test_a_gpu_nvml_does_not_list_is_sampled_with_psutil(nvml):
    nvml([FakeGpu(uuid=f"GPU-{UUID_A}")])
    sampler = telemetry.Sampler(cuda_info(UUID_B))
    assert sampler.source == "psutil"
    assert sampler.reason == f"NVML lists no GPU with UUID GPU-{UUID_B}"


# ---------------------------------------------------------------------------------------------
# the psutil sampler, for real


def test_cpu_sampler_samples_this_machine_and_spools_every_sample():
    batches: list[list[dict]] = []
    sampler = telemetry.Sampler(cpu_info(), interval_s=0.05, on_samples=batches.append, flush_every_s=0.1)
    with sampler:
        time.sleep(0.3)

    samples = sampler.samples
    assert (sampler.source, sampler.reason) == ("psutil", "device is cpu")
    assert len(samples) >= 3
    for sample in samples:
        assert set(sample) == set(telemetry.SAMPLE_KEYS)
        assert sample["source"] == "psutil" and sample["batch_size"] is None
        assert 0.0 <= sample["cpu_util_pct"] <= 100.0
        assert sample["rss_bytes"] > 10 * 2**20
        assert all(sample[key] is None for key in GPU_FIELDS)
    assert len(batches) >= 2  # flushed while running, not only on stop
    assert [s for batch in batches for s in batch] == samples


def test_stop_is_prompt_and_still_leaves_a_sample():
    sampler = telemetry.Sampler(cpu_info(), interval_s=5.0)
    sampler.start()
    started = time.monotonic()
    sampler.stop()
    assert time.monotonic() - started < 1.0
    assert not sampler._thread.is_alive() and sampler._thread.daemon
    assert len(sampler.samples) == 1


def test_a_failing_callback_does_not_stop_sampling():
    def broken(_samples):
        raise OSError("disk full")

    with telemetry.Sampler(cpu_info(), interval_s=0.01, on_samples=broken, flush_every_s=0.01) as sampler:
        assert wait_for(lambda: len(sampler.samples) >= 5, timeout=5.0, poll_s=0.005), (
            "timed out waiting for the sampler"
        )
        assert sampler._thread.is_alive()


def test_a_sampler_starts_once():
    sampler = telemetry.Sampler(cpu_info(), interval_s=0.01)
    sampler.stop()  # never started: nothing to do
    with sampler:
        with pytest.raises(RuntimeError):
            sampler.start()


# ---------------------------------------------------------------------------------------------
# the background load: what processes outside the job's own process tree are doing


def test_other_processes_on_the_gpu_are_background_and_ours_are_not(nvml):
    nvml([FakeGpu(uuid=f"GPU-{UUID_A}", processes=((os.getpid(), 2**30), (4_000_001, 3 * 2**30), (4_000_002, None)))])
    with telemetry.Sampler(cuda_info(), interval_s=0.01) as sampler:
        assert wait_for(lambda: len(sampler.samples) >= 2, timeout=5.0, poll_s=0.005), (
            "timed out waiting for the sampler"
        )
    last = sampler.samples[-1]
    assert (last["other_gpu_processes"], last["other_gpu_mem_bytes"]) == (2, 3 * 2**30)


def test_a_gpu_alone_has_no_background_and_a_driver_that_cannot_list_processes_is_asked_once(nvml):
    nvml([FakeGpu(uuid=f"GPU-{UUID_A}", processes=((os.getpid(), 2**30),))])
    with telemetry.Sampler(cuda_info(), interval_s=0.01) as sampler:
        assert wait_for(lambda: len(sampler.samples) >= 2, timeout=5.0, poll_s=0.005), (
            "timed out waiting for the sampler"
        )
    assert (sampler.samples[-1]["other_gpu_processes"], sampler.samples[-1]["other_gpu_mem_bytes"]) == (0, 0)

    fake = nvml([FakeGpu(uuid=f"GPU-{UUID_A}", unsupported=frozenset({"nvmlDeviceGetComputeRunningProcesses"}))])
    with telemetry.Sampler(cuda_info(), interval_s=0.01) as sampler:
        assert wait_for(lambda: len(sampler.samples) >= 3, timeout=5.0, poll_s=0.005), (
            "timed out waiting for the sampler"
        )
    assert all(s["other_gpu_processes"] is None for s in sampler.samples)
    assert fake.calls["nvmlDeviceGetComputeRunningProcesses"] == 1


def test_the_jobs_own_work_is_not_background_load():
    """This process keeps a core busy; the sampler, rooted here, counts that as ours, not as other processes'."""
    me = psutil.Process()
    before, started = me.cpu_times(), time.perf_counter()
    with telemetry.Sampler(cpu_info(), interval_s=0.1) as sampler:
        while time.perf_counter() - started < 0.6:
            pass
    after, elapsed = me.cpu_times(), time.perf_counter() - started
    # our share of the machine, as the kernel counted it (however much of a core the shared machine gave us)
    ours = 100.0 * (after.user + after.system - before.user - before.system) / (elapsed * psutil.cpu_count())
    samples = [s for s in sampler.samples if s["other_cpu_pct"] is not None]
    own = [s["cpu_util_pct"] - s["other_cpu_pct"] for s in samples]
    assert len(samples) >= 3 and all(0.0 <= s["other_cpu_pct"] <= s["cpu_util_pct"] for s in samples)
    assert ours > 5.0 and abs(sum(own) / len(own) - ours) < 0.3 * ours + 3.0, (own, ours)


def test_background_load_sums_up_samples_as_a_run_stores_it():
    samples = [
        {"other_cpu_pct": pct, "other_gpu_processes": gpu, "other_gpu_mem_bytes": memory}
        for pct, gpu, memory in [(10.0, 0, 0), (20.0, 1, 2**30), (30.0, 2, 3 * 2**30), (40.0, 0, 0), (None, None, None)]
    ]
    assert telemetry.background_load(samples) == {
        "background_cpu_pct": 25.0,
        "background_cpu_p90_pct": 37.0,
        "background_gpu_processes": 2,
        "background_gpu_mem_bytes": 3 * 2**30,
    }
    assert set(telemetry.background_load([]).values()) == {None}


def share_of_machine(process: psutil.Process, since: tuple[float, float]) -> float:
    """The % of the whole machine's CPU ``process`` used since ``since`` = (its CPU seconds, the clock)."""
    times = process.cpu_times()
    return 100.0 * (times.user + times.system - since[0]) / ((time.perf_counter() - since[1]) * psutil.cpu_count())


def cpu_mark(process: psutil.Process) -> tuple[float, float]:
    times = process.cpu_times()
    return times.user + times.system, time.perf_counter()


@pytest.mark.slow
def test_a_competing_process_is_background_load_and_the_jobs_own_work_is_not():
    """A job (a process that keeps a core busy) and a competitor outside its tree doing the same: the sampler
    rooted at the job counts the competitor as background, and the job's own work as its own."""
    spin = [sys.executable, "-c", "import time\nend = time.time() + 20\nwhile time.time() < end: pass"]
    job = subprocess.Popen(spin)
    competitor = subprocess.Popen(spin)
    try:
        time.sleep(0.3)  # both running
        job_mark, competitor_mark = cpu_mark(psutil.Process(job.pid)), cpu_mark(psutil.Process(competitor.pid))
        with telemetry.Sampler(cpu_info(), interval_s=0.2, root_pid=job.pid) as sampler:
            time.sleep(1.5)
        # what the kernel says each used (on a shared machine, each gets whatever share of a core it can)
        job_share = share_of_machine(psutil.Process(job.pid), job_mark)
        competitor_share = share_of_machine(psutil.Process(competitor.pid), competitor_mark)
    finally:
        for process in (job, competitor):
            process.kill()
            process.wait()
    samples = [s for s in sampler.samples if s["other_cpu_pct"] is not None]
    other = sum(s["other_cpu_pct"] for s in samples) / len(samples)
    own = sum(s["cpu_util_pct"] - s["other_cpu_pct"] for s in samples) / len(samples)
    assert job_share > 3.0 and competitor_share > 3.0, (job_share, competitor_share)
    assert abs(own - job_share) < 0.3 * job_share + 3.0, (own, job_share)
    assert other > 0.7 * competitor_share, (other, competitor_share)


@pytest.mark.slow
def test_a_timed_window_counts_other_processes_busy_cores_and_not_the_jobs_own():
    """Two processes keep a core busy each; over one window, the meter rooted at either counts the other's
    cores as other processes' load and not its own (the rest of the machine's load is the same in both)."""
    spin = [sys.executable, "-c", "import time\nend = time.time() + 20\nwhile time.time() < end: pass"]
    job = subprocess.Popen(spin)
    competitor = subprocess.Popen(spin)
    try:
        time.sleep(0.3)  # both running
        meters = {
            "job": telemetry.WindowLoad(root_pid=job.pid),
            "competitor": telemetry.WindowLoad(root_pid=competitor.pid),
        }
        marks = {"job": cpu_mark(psutil.Process(job.pid)), "competitor": cpu_mark(psutil.Process(competitor.pid))}
        for meter in meters.values():
            meter.open()
        time.sleep(1.0)
        for meter in meters.values():
            meter.close()
        # the cores each used, as the kernel counted them (on a shared machine, whatever share of one it got)
        cores = {
            name: share_of_machine(psutil.Process(process.pid), marks[name]) * psutil.cpu_count() / 100.0
            for name, process in (("job", job), ("competitor", competitor))
        }
    finally:
        for process in (job, competitor):
            process.kill()
            process.wait()
    seen = {name: meter.others_busy_cores() for name, meter in meters.items()}
    assert cores["job"] > 0.1 and cores["competitor"] > 0.1, cores
    assert seen["job"] > 0.7 * cores["competitor"], (seen, cores)
    # rooted at the job, the competitor is other load and the job is not; rooted at the competitor, the reverse
    assert abs((seen["job"] - seen["competitor"]) - (cores["competitor"] - cores["job"])) < 0.15, (seen, cores)


def test_a_window_too_short_for_the_kernels_clock_has_no_load():
    meter = telemetry.WindowLoad()
    assert meter.others_busy_cores() is None  # never opened
    meter.open()
    meter.close()
    assert meter.others_busy_cores() is None  # shorter than a few of the kernel's 10 ms ticks


# ---------------------------------------------------------------------------------------------
# snapshot and hardware report


def test_snapshot_of_the_cpu():
    sample = telemetry.snapshot(cpu_info())
    assert set(sample) == set(telemetry.SAMPLE_KEYS)
    assert sample["source"] == "psutil" and sample["rss_bytes"] > 0 and sample["gpu_util_pct"] is None


def test_hardware_report_with_two_gpus_is_json_with_live_gpu_fields(nvml, monkeypatch):
    nvml([FakeGpu(uuid=f"GPU-{UUID_A}", power_mw=300_000), FakeGpu(uuid=f"GPU-{UUID_B}", power_mw=70_000)])
    install_fake_cuda(monkeypatch, [cuda_properties(UUID_A), cuda_properties(UUID_B, name="Tesla T4")])
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)

    report = json.loads(json.dumps(telemetry.hardware_report()))
    cpu, a100, t4 = report["devices"]
    assert cpu["kind"] == "cpu" and cpu["live"] is None
    assert (a100["torch_device"], a100["live"]["source"], a100["live"]["power_w"]) == ("cuda:0", "nvml", 300.0)
    assert (t4["name"], t4["uuid"], t4["live"]["power_w"]) == ("Tesla T4", f"GPU-{UUID_B}", 70.0)
    assert report["nvml"]["available"] and report["nvml"]["gpu_count"] == 2
    assert report["torch"] == torch.__version__
    assert {"cuda", "host", "python"} <= set(report)


def test_hardware_report_on_this_machine(monkeypatch):
    monkeypatch.setattr(telemetry, "_nvml_cache", None)
    report = json.loads(json.dumps(telemetry.hardware_report()))
    assert report["devices"][0]["id"] == "cpu"
    assert report["nvml"]["available"] == (report["nvml"]["reason"] is None)


# ---------------------------------------------------------------------------------------------
# MIG slices and power over a timed window

MIG_UUID = "0c1d2e3f-6666-7777-8888-cccccccccccc"


def test_a_mig_slice_is_matched_to_its_nvml_slice_handle(nvml):
    # NVML lists a slice under its GPU, by "MIG-..."; torch spells its UUID as bare hex: they are matched by digits
    slice_ = FakeGpu(uuid=f"MIG-{MIG_UUID}", gpu_util_pct=33, temp_c=55)
    nvml([FakeGpu(uuid=f"GPU-{UUID_A}", migs=(slice_,)), FakeGpu(uuid=f"GPU-{UUID_B}")])
    info = cuda_info(MIG_UUID)
    assert telemetry.nvml_handle_for(info).gpu is slice_
    sampler = telemetry.Sampler(info)
    assert sampler.source == "nvml" and sampler.reason is None
    assert (telemetry.snapshot(info)["gpu_util_pct"], telemetry.snapshot(info)["temp_c"]) == (33, 55)


def test_window_power_comes_from_the_energy_counter_where_the_gpu_has_one(nvml):
    # nvmlDeviceGetPowerUsage still averages in the idle second before (100 W); the counter rises at 300 W
    nvml([FakeGpu(uuid=f"GPU-{UUID_A}", power_mw=100_000, energy_w=300.0)])
    sampler = telemetry.Sampler(cuda_info(), interval_s=0.02)
    meter = telemetry.WindowPower(cuda_info(), sampler)
    with sampler:
        start = time.time()
        meter.open()
        time.sleep(0.3)
        meter.close()
        end = time.time()
    assert meter.mean_power_w(start, end) == pytest.approx(300.0, rel=0.05)


def test_window_power_without_an_energy_counter_is_the_mean_of_the_power_samples(nvml):
    nvml([FakeGpu(uuid=f"GPU-{UUID_A}", power_mw=100_000)])  # pre-Volta: no counter
    sampler = telemetry.Sampler(cuda_info(), interval_s=0.02)
    meter = telemetry.WindowPower(cuda_info(), sampler)
    with sampler:
        start = time.time()
        meter.open()
        time.sleep(0.2)
        meter.close()
        end = time.time()
    assert meter.mean_power_w(start, end) == pytest.approx(100.0)
