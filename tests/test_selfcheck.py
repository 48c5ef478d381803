"""`largestep doctor --devices`: the device self-check, for real on this CPU and through the fakes for a GPU.

The fake-GPU tests check the self-check's decisions (which verdict for which finding), never figures:
every number in a report is measured on the machine that writes it."""

from __future__ import annotations

import json

import pytest
import torch
from fake_nvml import (
    UUID_A,
    UUID_B,
    FakeAllocator,
    FakeGpu,
    cuda_on_cpu,
    cuda_properties,
    install_fake_cuda,
    install_fake_nvml,
    make_fake_pynvml,
)
from helpers import run_cli

from largestep.measure import devices, selfcheck


@pytest.mark.slow
def test_doctor_devices_on_a_machine_without_a_gpu_says_so_runs_the_cpu_checks_and_writes_a_report(
    capsys, tmp_path, monkeypatch
):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    report = tmp_path / "selfcheck.json"
    code, out, _ = run_cli(capsys, "doctor", "--devices", "--report", str(report))
    assert "no CUDA GPU on this machine" in out and f"report written to {report}" in out
    document = json.loads(report.read_text())
    checks = {(c["device"], c["name"]): c for c in document["checks"]}
    assert set(checks) == {
        ("cuda", "gpus"),
        ("cpu", "timing: matmul"),
        ("cpu", "timing: training step"),
        ("cpu", "out of memory"),
        ("cpu", "precision"),
    }
    assert checks[("cpu", "out of memory")]["verdict"] == "skipped"
    for name in ("timing: matmul", "timing: training step"):
        measured = checks[("cpu", name)]["measured"]
        assert measured["reference"] == "torch.utils.benchmark" and measured["rounds"] >= 5
        assert len(measured["profiler_times_s"]) == len(measured["reference_times_s"]) == measured["rounds"]
    assert "fp32" in checks[("cpu", "precision")]["measured"]["supported"]
    assert document["versions"]["torch"] == torch.__version__ and document["nvml"]["available"] is False
    assert code == (1 if any(c["verdict"] == "problem" for c in document["checks"]) else 0)


def test_a_report_path_that_is_a_folder_is_refused_before_any_check(capsys, tmp_path, monkeypatch):
    ran = []
    monkeypatch.setattr(selfcheck, "check_devices", lambda: ran.append(True) or [])
    code, _, err = run_cli(capsys, "doctor", "--devices", "--report", str(tmp_path))
    assert code == 2 and "is a directory" in err and len(err.strip().splitlines()) == 1 and not ran


@pytest.fixture
def one_gpu(monkeypatch):
    install_fake_nvml(monkeypatch, make_fake_pynvml([FakeGpu(uuid=f"GPU-{UUID_A}", energy_w=280.0)]))
    return install_fake_cuda(monkeypatch, [cuda_properties(UUID_A)])


def test_nvml_check_finds_torchs_gpu_by_uuid_and_reads_its_energy_counter(one_gpu, monkeypatch):
    monkeypatch.setattr(selfcheck, "NVML_LOAD_S", 0.2)
    with cuda_on_cpu(one_gpu, FakeAllocator(fixed_bytes=0, bytes_per_sample=0)):
        check = selfcheck._nvml(devices.device_info("cuda:0"))
    assert check.verdict == "ok" and check.summary.startswith("UUID matches") and check.measured["energy_counter"]


def test_nvml_check_is_a_problem_when_nvml_lists_no_gpu_with_torchs_uuid(monkeypatch):
    install_fake_nvml(monkeypatch, make_fake_pynvml([FakeGpu(uuid=f"GPU-{UUID_B}")]))
    install_fake_cuda(monkeypatch, [cuda_properties(UUID_A)])
    check = selfcheck._nvml(devices.device_info("cuda:0"))
    assert check.verdict == "problem" and f"GPU-{UUID_A}" in check.summary


@pytest.mark.parametrize(
    "error, verdict",
    [
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB"), "ok"),
        (RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED"), "ok"),
        (RuntimeError("CUDA error: an illegal memory access was encountered"), "problem"),  # not an OOM: a bug
    ],
)
def test_an_induced_out_of_memory_must_be_recognised_and_leave_the_gpu_usable(one_gpu, monkeypatch, error, verdict):
    real_empty = torch.empty

    def empty(*size, device=None, **kwargs):
        if device is not None and torch.device(device).type == "cuda" and size and size[0] > 2**34:
            raise error
        return real_empty(*size, device=device, **kwargs)

    monkeypatch.setattr(torch, "empty", empty)
    with cuda_on_cpu(one_gpu):
        check = selfcheck._out_of_memory(devices.device_info("cuda:0"))
    assert check.verdict == verdict
    assert one_gpu["empty_cache"] >= 1  # the cache is emptied before the GPU is used again


@pytest.mark.slow
def test_the_two_rank_all_reduce_completes_on_loopback():
    # the NCCL check's own code, on gloo: this machine has no GPU for NCCL
    check = selfcheck._nccl_all_reduce(backend="gloo")
    assert check.verdict == "ok" and check.measured["outcomes"] == {0: 3.0, 1: 3.0}


@pytest.mark.slow
def test_on_a_gpu_the_profilers_timing_is_checked_against_cuda_events_in_blocks(one_gpu, monkeypatch):
    monkeypatch.setattr(selfcheck, "TIMING_BUDGET_S", 0.5)
    busy = FakeAllocator(fixed_bytes=0, bytes_per_sample=0, seconds_per_forward=0.002)
    with cuda_on_cpu(one_gpu, busy):
        check = selfcheck._timing(
            devices.device_info("cuda:0"), "timing: training step", selfcheck._training_step(torch.device("cuda:0"))
        )
    measured = check.measured
    assert measured["reference"] == "CUDA events" and check.verdict in ("ok", "warn", "problem")
    assert measured["rounds"] >= selfcheck.MIN_ROUNDS
    assert len(measured["profiler_times_s"]) == len(measured["reference_times_s"]) == measured["rounds"]


@pytest.mark.slow
def test_each_gpu_is_checked_as_the_current_device_so_cuda_events_time_that_gpu(monkeypatch):
    # two GPUs, the second one checked: its training steps queue 10 ms of work on GPU 1 alone; events
    # recorded on the idle GPU 0's stream would time the host's queueing only, a tenth of the profiler's time
    install_fake_nvml(monkeypatch, make_fake_pynvml([FakeGpu(uuid=f"GPU-{UUID_A}"), FakeGpu(uuid=f"GPU-{UUID_B}")]))
    two = install_fake_cuda(monkeypatch, [cuda_properties(UUID_A), cuda_properties(UUID_B)])
    monkeypatch.setattr(selfcheck, "TIMING_BUDGET_S", 0.5)
    monkeypatch.setattr(selfcheck.devices, "discover", lambda: [devices.device_info("cuda:1")])
    current_in = {}

    def seen(name):
        def check(info):
            current_in[name] = two["current"]
            return selfcheck.DeviceCheck(info.id, name, "ok", "")

        return check

    for name in ("_nvml", "_out_of_memory", "_precision"):
        monkeypatch.setattr(selfcheck, name, seen(name))
    busy = FakeAllocator(fixed_bytes=0, bytes_per_sample=0, seconds_per_forward=0.01)
    with cuda_on_cpu(two, busy):
        checks = {c.name: c for c in selfcheck.check_devices()}
    assert current_in == {"_nvml": 1, "_out_of_memory": 1, "_precision": 1}
    assert two["current"] == 0  # the GPU current before the checks is current again after them
    step = checks["timing: training step"]
    assert step.device == f"cuda:GPU-{UUID_B}" and step.measured["reference"] == "CUDA events"
    assert abs(step.measured["ratio"] - 1.0) <= selfcheck.AGREE_WITHIN, step.summary


def test_the_nccl_check_meets_over_loopback_as_a_jobs_ranks_do(monkeypatch):
    import os

    import torch.distributed as dist

    from largestep.measure.distributed import loopback_interface

    for name in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME"):
        monkeypatch.setenv(name, "restored after the test")
        monkeypatch.delenv(name)
    seen = {}

    def init_process_group(backend, **_kwargs):
        seen.update({name: os.environ.get(name) for name in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME")})
        raise RuntimeError("no second rank here")

    monkeypatch.setattr(dist, "init_process_group", init_process_group)
    results = []
    queue = type("Queue", (), {"put": lambda self, item: results.append(item)})()
    selfcheck._all_reduce_rank(0, 2, 29500, "gloo", queue)
    assert loopback_interface() and seen == {
        "GLOO_SOCKET_IFNAME": loopback_interface(),
        "NCCL_SOCKET_IFNAME": loopback_interface(),
    }
    assert results == [(0, "RuntimeError: no second rank here")]


def test_doctor_devices_waits_for_the_job_on_a_device_and_holds_its_lock_while_it_checks(
    capsys, home, tmp_path, monkeypatch
):
    import threading
    import time

    from filelock import FileLock, Timeout

    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    home.ensure()
    path = str(home.locks / "device-cpu.lock")
    running, released = threading.Event(), []

    def a_job_on_the_cpu():  # (another thread: filelock refuses one thread two instances of a lock)
        with FileLock(path):
            running.set()
            time.sleep(0.5)
            released.append(time.monotonic())

    def taken_elsewhere() -> bool:
        taken = []

        def probe():
            try:
                FileLock(path).acquire(timeout=0)
            except Timeout:
                taken.append(True)

        prober = threading.Thread(target=probe)
        prober.start()
        prober.join()
        return bool(taken)

    checked = []
    monkeypatch.setattr(selfcheck, "check_devices", lambda: checked.append((time.monotonic(), taken_elsewhere())) or [])
    job = threading.Thread(target=a_job_on_the_cpu)
    job.start()
    running.wait()
    code, _, err = run_cli(capsys, "doctor", "--devices", "--report", str(tmp_path / "report.json"))
    job.join()
    assert code == 0 and "waiting for the job on cpu to end" in err
    [(checked_at, held)] = checked
    assert checked_at > released[0] and held  # after the job ended, and holding the lock: no job starts meanwhile
    assert not taken_elsewhere()  # given back after


def test_doctor_devices_json_records_the_tf32_and_cudnn_settings(capsys, home, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr(selfcheck, "check_devices", lambda: [])
    report = tmp_path / "report.json"
    code, out, _ = run_cli(capsys, "doctor", "--devices", "--json", "--report", str(report))
    settings = {
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }
    assert code == 0 and json.loads(out)["math_settings"] == settings
    assert json.loads(report.read_text())["math_settings"] == settings
