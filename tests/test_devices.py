"""Device discovery, --device resolution, memory hooks, OOM detection and precision checks.

The CUDA paths run against a faked torch.cuda (see fake_nvml.install_fake_cuda)."""

from __future__ import annotations

import contextlib
import sys

import psutil
import pytest
import torch
from fake_nvml import UUID_A, UUID_B, FakeGpu, cuda_properties, install_fake_cuda, install_fake_nvml, make_fake_pynvml

from largestep.errors import DeviceError, UsageError
from largestep.measure import devices, devices_config, telemetry


@pytest.fixture
def two_gpus(monkeypatch):
    """torch.cuda reports an A100 (cuda:0) and a T4 (cuda:1)."""
    return install_fake_cuda(
        monkeypatch,
        [
            cuda_properties(UUID_A),
            cuda_properties(
                UUID_B, name="Tesla T4", total_memory=15 * 2**30, major=7, minor=5, multi_processor_count=40
            ),
        ],
    )


@pytest.fixture
def no_mps(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


# ---------------------------------------------------------------------------------------------
# discovery


def test_discover_on_this_machine_lists_the_cpu_with_its_ram_and_cores(no_mps):
    found = devices.discover()
    cpu = found[0]
    assert cpu.id == cpu.kind == cpu.torch_device == "cpu"
    assert cpu.total_memory_bytes == psutil.virtual_memory().total
    assert cpu.cores == psutil.cpu_count(logical=True)
    assert cpu.name and cpu.uuid is None
    if not torch.cuda.is_available():
        assert [d.kind for d in found] == ["cpu"]


def test_discover_lists_each_cuda_gpu_with_nvml_style_uuid(two_gpus, no_mps):
    cpu, a100, t4 = devices.discover()
    assert cpu.kind == "cpu"
    assert a100 == devices.DeviceInfo(
        id=f"cuda:GPU-{UUID_A}",
        kind="cuda",
        index=0,
        name="NVIDIA A100-SXM4-40GB",
        total_memory_bytes=40 * 2**30,
        compute_capability="8.0",
        uuid=f"GPU-{UUID_A}",
        cores=108,
        torch_device="cuda:0",
    )
    assert (t4.index, t4.name, t4.compute_capability, t4.cores, t4.uuid) == (1, "Tesla T4", "7.5", 40, f"GPU-{UUID_B}")
    assert t4.to_dict()["torch_device"] == "cuda:1"


def test_device_info_of_a_cuda_device_matches_discovery(two_gpus, no_mps):
    assert devices.device_info(torch.device("cuda:1")) == devices.discover()[2]
    assert devices.device_info(torch.device("cpu")).kind == "cpu"


def test_nvml_uuid_accepts_torch_and_nvml_spellings():
    assert devices.nvml_uuid(UUID_A) == f"GPU-{UUID_A}"
    assert devices.nvml_uuid(f"GPU-{UUID_A}".encode()) == f"GPU-{UUID_A}"
    assert devices.nvml_uuid(f"gpu-{UUID_A.upper()}") == f"GPU-{UUID_A}"
    assert devices.nvml_uuid("MIG-1234") == "MIG-1234"
    assert devices.nvml_uuid(UUID_A, mig=True) == f"MIG-{UUID_A}"
    assert devices.nvml_uuid(None) is None


MIG_UUID = "0c1d2e3f-6666-7777-8888-cccccccccccc"


@pytest.mark.parametrize(
    "name, visible",
    [
        ("NVIDIA A100-SXM4-40GB MIG 1g.5gb", None),  # as CUDA names a slice
        ("NVIDIA A100-SXM4-40GB", f"MIG-{MIG_UUID}"),  # a name that does not say, the slice chosen by its id
    ],
)
def test_a_mig_slice_is_named_as_nvml_and_cuda_visible_devices_accept_it(monkeypatch, no_mps, name, visible):
    from fake_nvml import cuda_properties, install_fake_cuda

    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    install_fake_cuda(monkeypatch, [cuda_properties(MIG_UUID, name=name)])
    info = devices.device_info("cuda:0")
    # torch spells the slice's UUID as bare hex; "GPU-<the slice's digits>" names no device NVML or CUDA knows
    assert info.uuid == f"MIG-{MIG_UUID}" and info.id == f"cuda:MIG-{MIG_UUID}"
    assert devices_config.lock_name("cuda:0") == f"cuda:MIG-{MIG_UUID}"


def test_a_whole_gpu_is_named_gpu_even_beside_a_mig_slice(monkeypatch, no_mps):
    from fake_nvml import cuda_properties, install_fake_cuda

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", f"GPU-{UUID_A}")
    install_fake_cuda(monkeypatch, [cuda_properties(UUID_A, name="NVIDIA H100 80GB HBM3")])
    assert devices.device_info("cuda:0").uuid == f"GPU-{UUID_A}"


# ---------------------------------------------------------------------------------------------
# resolve_device


def test_auto_picks_cpu_without_accelerators(no_mps, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert devices.resolve_device("auto") == torch.device("cpu")
    assert devices.resolve_device(None) == torch.device("cpu")
    assert devices.resolve_device(" CPU ") == torch.device("cpu")


def test_auto_prefers_cuda_then_mps(two_gpus, monkeypatch):
    assert devices.resolve_device("auto") == torch.device("cuda:0")
    install_fake_cuda(monkeypatch, [])
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert devices.resolve_device("auto") == torch.device("mps")
    assert devices.resolve_device("mps") == torch.device("mps")


def test_cuda_indices_resolve_and_out_of_range_says_how_many(two_gpus):
    assert devices.resolve_device("cuda") == torch.device("cuda:0")
    assert devices.resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(
        DeviceError, match=r"--device cuda:5: this machine has 2 visible CUDA devices \(cuda:0 to cuda:1\)"
    ):
        devices.resolve_device("cuda:5")


def test_cuda_without_cuda_says_why_in_one_line(monkeypatch):
    install_fake_cuda(monkeypatch, [])
    for spec in ("cuda", "cuda:0"):
        with pytest.raises(DeviceError) as caught:
            devices.resolve_device(spec)
        message = str(caught.value)
        assert message.startswith(f"--device {spec}: no CUDA device is available on this machine (torch ")
        assert "\n" not in message


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_on_this_cpu_machine_is_a_device_error():
    with pytest.raises(DeviceError, match="no CUDA device is available"):
        devices.resolve_device("cuda")


def test_mps_without_mps_is_a_device_error(no_mps):
    with pytest.raises(DeviceError, match="--device mps: MPS is not available"):
        devices.resolve_device("mps")


@pytest.mark.parametrize("spec", ["tpu", "cuda:x", "gpu", "cuda:-1", "xla:0"])
def test_unknown_device_lists_the_accepted_forms(spec):
    with pytest.raises(DeviceError, match=f"--device {spec}: unknown device; use auto, cpu, cuda, cuda:N or mps"):
        devices.resolve_device(spec)


# ---------------------------------------------------------------------------------------------
# sync and memory


def test_cpu_has_no_memory_counters_and_sync_is_a_no_op():
    cpu = torch.device("cpu")
    devices.synchronize(cpu)
    devices.reset_peak_memory(cpu)
    devices.free_memory(cpu)
    assert devices.peak_memory(cpu) is None
    assert devices.current_memory(cpu) is None


def test_cuda_memory_calls_name_the_device_they_ask_about(two_gpus):
    # Each GPU holds a different figure, so a call that dropped its device argument (and asked the
    # current device, cuda:0) would read the other GPU's. What the allocator's figures mean end to
    # end (peaks per batch in a stored profile) is tested in test_cuda_paths.py.
    two_gpus["peak"].update({0: 7 * 2**30, 1: 3 * 2**30})
    two_gpus["allocated"].update({0: 5 * 2**30, 1: 2**30})
    gpu1 = torch.device("cuda:1")
    devices.synchronize(gpu1)
    assert two_gpus["synchronized"] == [1]
    assert (devices.peak_memory(gpu1), devices.current_memory(gpu1)) == (3 * 2**30, 2**30)
    devices.reset_peak_memory(gpu1)
    assert devices.peak_memory(gpu1) == 0 and devices.peak_memory(torch.device("cuda:0")) == 7 * 2**30
    devices.free_memory(gpu1)
    assert two_gpus["empty_cache"] == 1


# ---------------------------------------------------------------------------------------------
# out of memory


def test_typed_out_of_memory_errors_are_recognised():
    assert devices.is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert devices.is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory"))
    assert devices.is_out_of_memory(MemoryError())


def test_a_real_cpu_allocation_failure_is_recognised():
    try:
        torch.empty(2**62, dtype=torch.uint8)  # 4 EiB: no machine has it
    except Exception as exc:  # whatever type this torch raises, it must count as OOM
        assert devices.is_out_of_memory(exc)
    else:
        pytest.fail("allocating 4 EiB succeeded")


def test_untyped_allocator_messages_are_recognised():
    cpu = RuntimeError(
        "[enforce fail at alloc_cpu.cpp:127] . DefaultCPUAllocator: can't allocate memory: "
        "you tried to allocate 1125899906842624 bytes. Error code 12 (Cannot allocate memory)"
    )
    mps = RuntimeError("MPS backend out of memory (MPS allocated: 17.00 GB, other allocations: 1.2 GB)")
    windows = RuntimeError("[enforce fail at C:\\cb\\alloc_cpu.cpp:81] data. DefaultCPUAllocator: not enough memory")
    assert all(devices.is_out_of_memory(e) for e in (cpu, mps, windows))


def test_other_errors_are_not_out_of_memory():
    assert not devices.is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x3 and 4x5)"))
    assert not devices.is_out_of_memory(ValueError("MPS backend out of memory"))  # not an allocator error type
    assert not devices.is_out_of_memory(KeyboardInterrupt())


# ---------------------------------------------------------------------------------------------
# precision


def test_unknown_dtype_is_a_usage_error_naming_the_choices():
    with pytest.raises(UsageError, match="--dtype fp64: unknown precision; use one of fp32, bf16, fp16"):
        devices.check_dtype(torch.device("cpu"), "fp64")
    with pytest.raises(UsageError):
        devices.autocast(torch.device("cpu"), "float16")


def test_the_precisions_a_command_accepts_by_name_are_those_the_device_layer_runs():
    # --dtype is checked by name before torch is imported; the device layer maps the same names to autocast
    assert tuple(devices.DTYPES) == devices_config.DTYPE_NAMES


def test_cpu_supports_fp32_and_bf16():
    for dtype in ("fp32", "bf16"):
        devices.check_dtype(torch.device("cpu"), dtype)


def test_cpu_fp16_is_allowed_only_when_autocast_works(monkeypatch):
    devices._autocast_works.cache_clear()
    devices.check_dtype(torch.device("cpu"), "fp16")  # this torch autocasts fp16 on CPU
    devices._autocast_works.cache_clear()
    monkeypatch.setattr(torch.amp, "is_autocast_available", lambda device_type: False)
    try:
        with pytest.raises(DeviceError, match="--dtype fp16: autocast to fp16 does not work on cpu"):
            devices.check_dtype(torch.device("cpu"), "fp16")
    finally:
        devices._autocast_works.cache_clear()


def test_bf16_on_a_pre_ampere_gpu_is_a_device_error(two_gpus):
    devices.check_dtype(torch.device("cuda:0"), "bf16")  # A100
    devices.check_dtype(torch.device("cuda:1"), "fp16")  # T4
    with pytest.raises(DeviceError, match="--dtype bf16: Tesla T4 has no native bfloat16"):
        devices.check_dtype(torch.device("cuda:1"), "bf16")


def test_autocast_runs_the_forward_pass_at_the_chosen_dtype():
    layer = torch.nn.Linear(4, 3)
    x = torch.ones(2, 4)
    assert isinstance(devices.autocast(torch.device("cpu"), "fp32"), contextlib.nullcontext)
    with devices.autocast(torch.device("cpu"), "fp32"):
        assert layer(x).dtype == torch.float32
    with devices.autocast(torch.device("cpu"), "bf16"):
        assert layer(x).dtype == torch.bfloat16


def test_only_fp16_on_cuda_needs_a_grad_scaler():
    assert devices.needs_grad_scaler(torch.device("cuda:0"), "fp16")
    assert not devices.needs_grad_scaler(torch.device("cuda:0"), "bf16")
    assert not devices.needs_grad_scaler(torch.device("cpu"), "fp16")
    assert not devices.needs_grad_scaler(torch.device("cuda:0"), "fp32")


# ---------------------------------------------------------------------------------------------
# driver version


def test_driver_version_comes_from_nvml_when_it_is_there(monkeypatch):
    install_fake_nvml(monkeypatch, make_fake_pynvml([FakeGpu(uuid=f"GPU-{UUID_A}")], driver_version="550.54.15"))
    assert telemetry.driver_version() == "550.54.15"


def test_driver_version_without_nvml_falls_back_to_torch_build(monkeypatch):
    install_fake_nvml(monkeypatch, make_fake_pynvml(init_error="NVMLError_LibraryNotFound"))
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    assert telemetry.driver_version() == "CUDA 12.4 (torch build; driver unknown)"
    monkeypatch.setattr(torch.version, "cuda", None)
    assert telemetry.driver_version() is None


# ---------------------------------------------------------------------------------------------
# the first GPU: allocation failures outside the caching allocator, reserved memory, locks, set_device


@pytest.mark.parametrize(
    "message",
    [
        "CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported at some other API call",
        "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`",
        "cuDNN error: CUDNN_STATUS_ALLOC_FAILED",
        "NCCL error in: ProcessGroupNCCL.cpp:1970, unhandled cuda error (run with NCCL_DEBUG=INFO for details)\n"
        "ncclUnhandledCudaError: Call to CUDA function failed.\nLast error:\nCuda failure 'out of memory'",
    ],
)
def test_raw_cuda_allocation_failures_of_libraries_are_out_of_memory(message):
    assert devices.is_out_of_memory(RuntimeError(message))
    assert devices.is_out_of_memory(torch.distributed.DistBackendError(message))  # NCCL's own RuntimeError


def test_cuda_peak_memory_is_the_reserved_peak_when_fragmentation_holds_more(two_gpus):
    # the tensors peaked at 5 GiB, but the allocator held 7 GiB of segments: 7 GiB is what the GPU needed
    two_gpus["peak"][1], two_gpus["reserved_peak"][1] = 5 * 2**30, 7 * 2**30
    assert devices.peak_memory(torch.device("cuda:1")) == 7 * 2**30
    devices.reset_peak_memory(torch.device("cuda:1"))
    assert devices.peak_memory(torch.device("cuda:1")) == 0


def test_device_locks_name_the_physical_gpu_whatever_the_cuda_visible_devices(monkeypatch):
    from largestep.jobs.torchrun import lock_names

    # this process sees GPUs A, B; another with CUDA_VISIBLE_DEVICES=1,0 sees B, A
    install_fake_cuda(monkeypatch, [cuda_properties(UUID_A), cuda_properties(UUID_B)])
    here = (lock_names("cuda:1", 1), lock_names("cuda:0", 2), devices_config.lock_name("cpu"))
    install_fake_cuda(monkeypatch, [cuda_properties(UUID_B), cuda_properties(UUID_A)])
    there = (lock_names("cuda:0", 1), lock_names("cuda:0", 2), devices_config.lock_name("cpu"))
    assert here[0] == there[0] == [f"cuda:GPU-{UUID_B}"]  # one GPU, one lock, under either numbering
    assert set(here[1]) == set(there[1]) == {f"cuda:GPU-{UUID_A}", f"cuda:GPU-{UUID_B}"}
    assert here[2] == there[2] == "cpu"


def test_use_device_makes_the_jobs_gpu_current_so_plain_cuda_lands_on_it(two_gpus):
    devices.use_device(torch.device("cuda:1"))
    assert two_gpus["current"] == 1
    assert devices.device_info("cuda").index == 1  # plain "cuda" now means the job's GPU
    devices.use_device(torch.device("cpu"))
    assert two_gpus["current"] == 1


def test_the_torch_floor_has_every_torch_api_the_gpu_paths_call():
    import re
    from pathlib import Path

    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text(encoding="utf-8")
    dev = (Path(__file__).resolve().parents[1] / "dev").read_text(encoding="utf-8")
    floors = {
        tuple(int(part) for part in found)
        for found in re.findall(r'"torch>=(\d+)\.(\d+)', pyproject) + re.findall(r'"torch>=(\d+)\.(\d+)', dev)
    }
    # torch.amp.GradScaler(device) came in 2.3; the UUID in torch.cuda.get_device_properties, by which
    # GPUs are matched to NVML and locked, in 2.4 (pytorch/pytorch#125083): an older torch fails on a GPU
    assert floors == {(2, 4)}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="GPU device files are Linux's")
def test_auto_names_the_cpu_without_asking_torch_only_where_no_gpu_device_file_exists(monkeypatch, tmp_path):
    from largestep.measure import devices_config

    asked = []
    monkeypatch.setattr(devices, "resolve_device", lambda spec: asked.append(spec) or torch.device("cuda:0"))
    monkeypatch.setattr(devices_config, "_GPU_DEVICE_FILES", (str(tmp_path / "nvidia[0-9]*"),))
    monkeypatch.delitem(sys.modules, "torch")  # as in a command that has not imported it
    assert devices_config.resolve_name("auto") == "cpu" and devices_config.lock_name("cuda:0") == "cuda:0"
    assert not asked
    (tmp_path / "nvidia0").touch()  # a GPU's device file: only torch can tell
    assert devices_config.resolve_name("auto") == "cuda:0" and asked == ["auto"]
    assert devices_config.resolve_name(" CPU ") == "cpu" and asked == ["auto"]


# ---------------------------------------------------------------------------------------------
# TF32 and cuDNN


@pytest.fixture
def torch_math():
    """torch's process-wide TF32 and cuDNN settings at torch's defaults for the test, as they were after it."""
    before = (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.backends.cudnn.benchmark,
        torch.get_float32_matmul_precision(),
    )
    torch.set_float32_matmul_precision("highest")
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = False, True
    torch.backends.cudnn.benchmark = False
    yield
    (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark) = before[
        :3
    ]
    torch.set_float32_matmul_precision(before[3])


def test_tf32_comes_from_the_flag_else_the_workload_else_stays_as_torch_has_it(torch_math):
    import types

    defaults = {
        "matmul_allow_tf32": False,
        "cudnn_allow_tf32": True,
        "cudnn_benchmark": False,
        "float32_matmul_precision": "highest",
    }
    assert devices.math_settings() == defaults
    silent = types.SimpleNamespace(tf32=None, cudnn_benchmark=None)
    assert devices.use_math(silent) == defaults  # nothing asked: torch's own
    wants = types.SimpleNamespace(tf32=True, cudnn_benchmark=True)
    on = {
        "matmul_allow_tf32": True,
        "cudnn_allow_tf32": True,
        "cudnn_benchmark": True,
        "float32_matmul_precision": "high",
    }
    assert devices.use_math(wants) == on  # the workload's field
    off = {
        "matmul_allow_tf32": False,
        "cudnn_allow_tf32": False,
        "cudnn_benchmark": True,
        "float32_matmul_precision": "highest",
    }
    assert devices.use_math(wants, tf32=False) == off  # --no-tf32 wins over the field


def test_a_workloads_tf32_and_cudnn_benchmark_must_be_true_false_or_none():
    import dataclasses

    from largestep.errors import WorkloadError
    from tiny_workload import make

    for name in ("tf32", "cudnn_benchmark"):
        with pytest.raises(WorkloadError, match=f"{name} must be True, False or None"):
            dataclasses.replace(make(), **{name: "yes"})
