"""What the dashboard's pages share, prepared without Streamlit: the metric tiles, the hardware
card, the device and profile pickers, cancelling a job, and the export downloads."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import pandas as pd

from .. import jobs, store
from ..errors import LargestepError, UsageError
from ..format import format_bytes
from ..home import Home
from ..plan.export import FILE_SUFFIX, FORMATS, export_config, export_filename

__all__ = [
    "Metric",
    "DeviceCard",
    "HardwareView",
    "hardware_view",
    "device_options",
    "TABLE_WORKLOAD",
    "cancel",
    "ProfileChoice",
    "profile_choices",
    "parse_optional_float",
    "load_recommendation",
    "latest_recommendation_for",
    "FORMAT_LABELS",
    "CODE_LANGUAGE",
    "Download",
    "downloads",
]

TABLE_WORKLOAD = "table"  # the built-in that reads a user's data file (options: path, label)
FORMAT_LABELS = {
    "yaml": "YAML",
    "json": "JSON",
    "toml": "TOML",
    "torch": "PyTorch",
    "hf": "Hugging Face",
    "lightning": "Lightning",
    "deepspeed": "DeepSpeed",
    "cli": "CLI",
}
CODE_LANGUAGE = {
    "yaml": "yaml",
    "json": "json",
    "toml": "toml",
    "torch": "python",
    "hf": "python",
    "lightning": "python",
    "deepspeed": "json",
    "cli": "bash",
}
MIME = {
    ".yaml": "application/yaml",
    ".json": "application/json",
    ".toml": "application/toml",
    ".py": "text/x-python",
    ".sh": "text/x-shellscript",
}


@dataclass(frozen=True)
class Metric:
    label: str
    value: str
    help: str | None = None


@dataclass(frozen=True)
class DeviceCard:
    title: str  # "NVIDIA A100-SXM4-40GB"
    subtitle: str  # "CUDA · cuda:0"
    facts: tuple[Metric, ...]  # memory, cores, compute capability
    live: tuple[Metric, ...] = ()  # NVML now: utilisation, power, temperature, memory used


@dataclass(frozen=True)
class HardwareView:
    cards: tuple[DeviceCard, ...]
    nvml_note: str | None  # why there is no GPU telemetry; None when NVML works
    software: str  # "torch 2.x · CUDA - · Python 3.11 · host"


def hardware_view(report: dict) -> HardwareView:
    """The hardware card from :func:`largestep.measure.telemetry.hardware_report`."""
    cards = []
    for device in report.get("devices", []):
        kind = device.get("kind", "?")
        facts = [Metric("RAM" if kind == "cpu" else "Memory", format_bytes(device.get("total_memory_bytes")))]
        if device.get("cores"):
            facts.append(Metric("Logical cores" if kind == "cpu" else "SMs", str(device["cores"])))
        if device.get("compute_capability"):
            facts.append(Metric("Compute capability", str(device["compute_capability"])))
        live = _live_metrics(device.get("live") or {})
        cards.append(
            DeviceCard(
                title=str(device.get("name") or kind),
                subtitle=f"{kind.upper()} · {device.get('torch_device', '')}",
                facts=tuple(facts),
                live=live,
            )
        )
    nvml = report.get("nvml") or {}
    note = None
    if not nvml.get("available"):
        note = (
            f"NVML is absent: {nvml.get('reason') or 'unknown reason'}. GPU utilisation, power and "
            f"temperature cannot be read here; profiles sample CPU utilisation and process memory with "
            f"psutil instead."
        )
    software = " · ".join(
        filter(
            None,
            [
                f"torch {report.get('torch')}",
                f"CUDA {report['cuda']}" if report.get("cuda") else "CPU-only torch",
                f"{report.get('torch_threads')} torch threads" if report.get("torch_threads") else None,
                f"Python {report.get('python')}",
                report.get("host"),
            ],
        )
    )
    return HardwareView(cards=tuple(cards), nvml_note=note, software=software)


def _live_metrics(sample: dict) -> tuple[Metric, ...]:
    shown = [
        ("gpu_util_pct", "GPU util", "{:.0f} %"),
        ("power_w", "Power", "{:.0f} W"),
        ("temp_c", "Temperature", "{:.0f} °C"),
        ("sm_clock_mhz", "SM clock", "{:.0f} MHz"),
    ]
    out = [Metric(label, fmt.format(sample[key])) for key, label, fmt in shown if sample.get(key) is not None]
    if sample.get("mem_used_bytes") is not None:
        out.append(Metric("Memory used", format_bytes(sample["mem_used_bytes"])))
    return tuple(out)


def device_options(report: dict) -> dict[str, str]:
    """``--device`` value -> label, for a select box: every device torch can use here."""
    options = {}
    for device in report.get("devices", []):
        value = device.get("torch_device") or device.get("id")
        options[value] = f"{value} — {device.get('name')}"
    return options or {"cpu": "cpu"}


def cancel(home: Home, job_id: str) -> str:
    """Stop a job (an autopilot stops its children first) and record its new state; a one-line message.

    A run tracked from the user's own code is not ours to stop: the message says so."""
    try:
        stopped = jobs.cancel(home, job_id)
    except LargestepError as exc:
        return str(exc)
    store.ingest(home)
    return f"Cancelled {job_id}." if stopped else f"{job_id} had already ended."


@dataclass(frozen=True)
class ProfileChoice:
    id: str
    label: str  # "fraud-gru · AMD EPYC · fp32 · 2025-01-31 14:02 (prof-1a2b3c4d)"
    live: bool  # its job is still pending or running


def profile_choices(home: Home) -> list[ProfileChoice]:
    """Every stored profile, newest first, for a select box.

    A label never changes over a profile's life (no state in it): a select box keeps showing the
    label it was given, so a label that changed would leave a stale one on screen.
    """
    with store.connect(home) as con:
        frame = store.list_profiles(con)
    choices = []
    for row in frame.to_dict(orient="records"):
        started = pd.Timestamp(row["started_at"]).strftime("%Y-%m-%d %H:%M") if not pd.isna(row["started_at"]) else "?"
        state = row.get("state") or "?"
        label = (
            f"{row['workload']} · {row.get('device_name') or row.get('device_kind') or '?'} · "
            f"{row.get('dtype') or '?'} · {started} ({row['id']})"
        )
        choices.append(ProfileChoice(row["id"], label, state in (jobs.PENDING, jobs.RUNNING)))
    return choices


def parse_optional_float(text: str | None, what: str) -> float | None:
    """A number typed into a text box; empty means "not given"."""
    if text is None or not str(text).strip():
        return None
    try:
        value = float(str(text).strip())
    except ValueError:
        raise UsageError(f"{what} must be a number such as 0.001 or 1e-3, not {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise UsageError(f"{what} must be a positive number, not {text!r}")
    return value


def load_recommendation(home: Home, rec_id: str | None = "latest") -> dict | None:
    with store.connect(home) as con:
        return store.load_recommendation(con, rec_id)


def latest_recommendation_for(home: Home, profile_id: str) -> dict | None:
    """The newest saved recommendation made from ``profile_id``."""
    with store.connect(home) as con:
        frame = store.list_recommendations(con)
        mine = frame[frame["profile_id"] == profile_id]
        return store.load_recommendation(con, str(mine["id"].iloc[0])) if len(mine) else None


@dataclass(frozen=True)
class Download:
    fmt: str
    label: str
    file_name: str
    mime: str
    data: str | Callable[[], str]


def downloads(rec: dict, devices: int | None = None, micro_batch: int | None = None) -> list[Download]:
    """One download per export format (all of :data:`largestep.plan.export.FORMATS`)."""
    out = []
    for fmt in FORMATS:
        suffix = FILE_SUFFIX[fmt]
        out.append(
            Download(
                fmt=fmt,
                label=FORMAT_LABELS.get(fmt, fmt),
                file_name=export_filename(rec, fmt),
                mime=MIME.get(suffix, "text/plain"),
                data=export_config(rec, fmt, devices=devices, micro_batch=micro_batch),
            )
        )
    return out
