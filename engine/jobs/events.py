"""The job spool's protocol, written down once: every event a job writes, its fields, and the reader.

A job appends one JSON object a line to ``jobs/<id>/events.jsonl``: ``{"type": NAME, "t": unix
time, **fields}``. Writers name events by the constants below; readers (the store's ingest, the
CLI following a job, the autopilot reading its children) read them with :func:`read` and turn
them into records with the ``*_row`` functions here, so that the store and the autopilot derive
a run or a profile from its events in one way.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path

import orjson

__all__ = [
    "EventType",
    "CATALOGUE",
    "Batch",
    "read",
    "read_all",
    "line_number",
    "last",
    "problems",
    "NOISE_FIELDS",
    "POINT_FIELDS",
    "BACKGROUND_FIELDS",
    "METRIC_INDEX",
    "profile_start_row",
    "point_row",
    "profile_end_row",
    "profile_record",
    "noise_row",
    "noise_curve_row",
    "NOISE_CURVE_POINT",
    "run_start_row",
    "run_end_row",
    "run_record",
    "evaluations",
    "eval_rows",
    "TRAIN_METRICS",
    "START",
    "EXIT",
    "PROFILE_START",
    "POINT",
    "PROFILE_END",
    "TELEMETRY",
    "NOISE_ESTIMATE",
    "STABILITY",
    "RUN_START",
    "METRICS",
    "METRIC_VALUES",
    "EVAL",
    "RUN_END",
    "RECOMMENDATION",
    "AUTOPILOT_PHASE",
    "AUTOPILOT_RESULT",
    "VERIFICATION",
    "verification_row",
    "verifications",
]

EVENTS_FILE = "events.jsonl"
TAIL_BYTES = 65536  # the exit record is read from at most this much of a spool's end


@dataclass(frozen=True)
class EventType:
    name: str
    doc: str
    required: tuple[str, ...] = ()  # a reader relies on these: an event without one is unreadable
    optional: tuple[str, ...] = ()  # written where known


START, EXIT = "start", "exit"
PROFILE_START, POINT, PROFILE_END, TELEMETRY = "profile_start", "point", "profile_end", "telemetry"
NOISE_ESTIMATE, NOISE_CURVE_POINT, STABILITY = "noise_estimate", "noise_curve_point", "stability"
RUN_START, METRICS, METRIC_VALUES, EVAL, RUN_END = "run_start", "metrics", "metric_values", "eval", "run_end"
RECOMMENDATION, AUTOPILOT_PHASE, AUTOPILOT_RESULT = "recommendation", "autopilot_phase", "autopilot_result"
VERIFICATION = "verification"

#: A profile point's fields (largestep.measure.profiler.ProfilePoint), as the profile_points table has them.
POINT_FIELDS = (
    "batch_size",
    "status",
    "step_times_s",
    "median_s",
    "p25_s",
    "p75_s",
    "noisy",
    "samples_per_s",
    "peak_memory_bytes",
    "memory_is_estimate",
    "predicted_memory_bytes",
    "flops_per_step",
    "flops_per_s",
    "mean_power_w",
    "energy_per_sample_j",
    "started_at",
    "ended_at",
    "error",
    "compute_median_s",
    "input_bound",  # Dataset workloads: the compute alone; the loader limits
    "compile_s",  # --compile: the compiling first step, timed apart
    "visits",
    "remeasured",
    "inconsistent",  # interleaved rounds; the physics check
    "others_busy_cores",
    "loaded_visits",
    "under_load",  # visits other processes contended
    "warmup_steps",  # untimed steps before a size's first timed ones
    "estimate_s",
)  # the step time: the profile's estimator of the raw times
#: The background load while a run trained or a point was timed (largestep.measure.telemetry.background_load): the
#: mean and 90th percentile of other processes' whole-machine CPU busy %, the most other processes seen on the
#: GPU and the device memory they held. A point event and a run_end event carry them where measured.
BACKGROUND_FIELDS = (
    "background_cpu_pct",
    "background_cpu_p90_pct",
    "background_gpu_processes",
    "background_gpu_mem_bytes",
)
#: A noise estimate's fields (largestep.measure.noise.NoiseEstimate), as the noise_estimates table has them.
NOISE_FIELDS = (
    "b_simple",
    "ci_low",
    "ci_high",
    "g2",
    "trace_sigma",
    "g_small_sq",
    "g_big_sq",
    "batch_small",
    "batch_big",
    "batches",
    "warm_steps",
    "unreliable",
    "reason",
    "elapsed_s",
    "step_equivalents",
    "compile_s",
)
#: Where a metric row sits in a run: every metrics, metric_values and eval row carries these.
METRIC_INDEX = ("step", "epoch", "samples", "wall_time_s", "train_time_s")
#: The training metrics a ``metrics`` row carries beside its index (wide form).
TRAIN_METRICS = ("train_loss", "lr", "samples_per_s")

CATALOGUE: dict[str, EventType] = {
    e.name: e
    for e in (
        EventType(START, "the job got its device and began", ("kind", "pid")),
        EventType(EXIT, "the job's last word: its final state and why", ("state",), ("error",)),
        EventType(
            PROFILE_START,
            "a profile began: the workload, the device, the config, the plan",
            ("profile_id",),
            (
                "workload",
                "workload_spec",
                "world_size",
                "options",
                "device",
                "config",
                "planned",
                "baseline_batch_size",
                "baseline_lr",
                "optimizer",
                "n_train",
                "epochs",
                "warmup_samples",
                "weight_decay",
                "telemetry_source",
                "telemetry_reason",
                "versions",
                "schedule",
                "decay_samples",
                "max_grad_norm",
                "math_settings",
                "estimator",
                "threads",
                "cores",
                "carried_from",
            ),
        ),
        EventType(
            POINT,
            "one batch size measured (or refused: oom, over_budget, error)",
            ("profile_id", "batch_size", "status"),
            (*POINT_FIELDS[2:], *BACKGROUND_FIELDS),
        ),
        EventType(
            PROFILE_END,
            "the sweep ended: why, the saturation batch, the memory fit",
            ("profile_id",),
            (
                "stop_reason",
                "saturation_batch",
                "memory_fit_intercept_bytes",
                "memory_fit_slope_bytes",
                "inconsistency",
            ),
        ),
        EventType(TELEMETRY, "samples of device telemetry (10 Hz)", ("samples",)),
        EventType(
            NOISE_ESTIMATE,
            "a gradient noise scale estimate",
            ("batch_small", "batch_big"),
            ("workload", "workload_spec", "options", "device", *NOISE_FIELDS),
        ),
        EventType(
            NOISE_CURVE_POINT,
            "a noise scale estimate at a fraction of the baseline's training (one curve a job)",
            ("fraction", "step", "batch_small", "batch_big"),
            ("workload", "workload_spec", "options", "device", *NOISE_FIELDS),
        ),
        EventType(
            STABILITY,
            "a learning-rate stability check",
            ("batch_size", "recommended_lr", "max_stable_lr", "stable", "lrs", "losses"),
            ("id", "diverged_at_lr"),
        ),
        EventType(
            RUN_START,
            "a training run began: its config and what it runs on",
            ("config",),
            (
                "workload",
                "workload_spec",
                "options",
                "device",
                "versions",
                "launcher",
                "role",
                "recommendation_id",
                "primary_metric",
                "primary_metric_mode",
                "epochs",
                "warmup_samples",
                "steps_per_epoch",
                "total_steps",
                "micro_batch",
                "n_train",
                "n_params",
                "on_device",
                "world_size",
                "backend",
                "compile_s",
                "noise_probe_every",
                "math_settings",
            ),
        ),
        EventType(METRICS, "training metrics at logging steps, wide rows", ("rows",)),
        EventType(METRIC_VALUES, "named metric values at logging steps, long rows (the DDP noise scale)", ("rows",)),
        EventType(
            EVAL,
            "a validation pass",
            ("step", "val_loss"),
            ("epoch", "samples", "wall_time_s", "train_time_s", "metrics"),
        ),
        EventType(
            RUN_END,
            "a training run ended: its results",
            (),
            (
                "steps",
                "samples",
                "epochs",
                "wall_time_s",
                "train_time_s",
                "final_val_loss",
                "best_val_loss",
                "final_metrics",
                "reached_target",
                "time_to_target_s",
                "peak_memory_bytes",
                "diverged",
                "stop_reason",
                *BACKGROUND_FIELDS,
            ),
        ),
        EventType(RECOMMENDATION, "the autopilot's recommendation, the whole document", ("document",)),
        EventType(
            AUTOPILOT_PHASE,
            "the autopilot entered a phase",
            ("phase",),
            ("index", "job", "detail", "run_ids", "untrusted", "profile_id"),
        ),  # untrusted: why it stopped
        EventType(
            AUTOPILOT_RESULT,
            "the autopilot's headline and comparison",
            ("headline", "comparison"),
            (
                "recommendation_id",
                "profile_id",
                "noise_id",
                "baseline_runs",
                "recommended_runs",
                "epochs",
                "config",
                "attempts",
            ),
        ),
        EventType(
            VERIFICATION,
            "a calibration point: one comparison of a recommendation's baseline and recommended runs, "
            "predicted and measured factors with their intervals (largestep.plan.calibration)",
            ("verification",),
        ),
    )
}


_NEEDED = {name: frozenset(("t", *kind.required)) for name, kind in CATALOGUE.items()}


def problems(event: object) -> str | None:
    """Why ``event`` cannot be read (not an object, an unknown type, a missing field); None if it can."""
    if not isinstance(event, dict):
        return f"not a JSON object but {type(event).__name__}"
    needed = _NEEDED.get(event.get("type"))  # type: ignore[arg-type]
    if needed is None:
        return f"unknown event type {event.get('type')!r}"
    if event.keys() >= needed:  # every field a reader relies on (the check ingest makes once a line)
        return None
    kind = CATALOGUE[event["type"]]
    missing = [name for name in ("t", *kind.required) if name not in event]
    return f"{kind.name} event without {', '.join(missing)}"


# -- the reader -------------------------------------------------------------------------------------


@dataclass
class Batch:
    """The complete lines of a spool from an offset: its events, the offset after them, lines skipped."""

    events: list[dict] = field(default_factory=list)
    offset: int = 0
    skipped: int = 0
    bad_lines: list[tuple[int, str]] = field(default_factory=list)  # (byte offset, why) of skipped lines
    event_offsets: list[int] = field(default_factory=list)  # the byte offset of each event's line


def _parse(line: bytes) -> object:
    """One spool line. orjson first (several times faster); the json module for what orjson refuses:
    NaN and Infinity, which a diverging loss writes."""
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        return json.loads(line)


def read(job_dir: str | os.PathLike, offset: int = 0) -> Batch:
    """The events from byte ``offset`` up to the spool's last complete line (a line still being
    written is left for the next read). Unreadable lines (cut off by a crash, garbage, not an
    event) are skipped and counted."""
    path = Path(job_dir) / EVENTS_FILE
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read()
    except OSError:
        return Batch(offset=offset)
    end = data.rfind(b"\n")
    if end < 0:
        return Batch(offset=offset)
    batch = Batch(offset=offset + end + 1)
    lines = data[:end].split(b"\n")
    starts = accumulate((len(line) + 1 for line in lines), initial=offset)
    try:  # every line at once where every line is plain JSON, as a healthy spool's are
        parsed = list(map(orjson.loads, lines))
    except orjson.JSONDecodeError:
        parsed = [_parse_line(line) for line in lines]
    for where, line, event in zip(starts, lines, parsed):
        why = "not JSON" if event is _NOT_JSON else problems(event)
        if why is None:
            batch.events.append(event)  # type: ignore[arg-type]
            batch.event_offsets.append(where)
        elif line.strip():  # a blank line is no event, and no fault
            batch.skipped += 1
            batch.bad_lines.append((where, why))
    return batch


_NOT_JSON = object()


def _parse_line(line: bytes) -> object:
    try:
        return _parse(line)
    except ValueError:
        return _NOT_JSON


def line_number(job_dir: str | os.PathLike, byte_offset: int) -> int:
    """The 1-based line of the spool that starts at ``byte_offset`` (for messages people act on)."""
    try:
        with open(Path(job_dir) / EVENTS_FILE, "rb") as fh:
            return fh.read(byte_offset).count(b"\n") + 1
    except OSError:
        return 0


def read_all(job_dir: str | os.PathLike) -> list[dict]:
    """Every readable event of a spool, in order."""
    return read(job_dir).events


def last(job_dir: str | os.PathLike, name: str) -> dict | None:
    """The last event called ``name`` in the spool's final 64 KiB (the exit record, read often and fast)."""
    path = Path(job_dir) / EVENTS_FILE
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - TAIL_BYTES))
            tail = fh.read()
    except OSError:
        return None
    marker = f'"type": "{name}"'.encode()
    for line in reversed(tail.split(b"\n")):
        if marker in line:
            try:
                event = _parse(line)
            except ValueError:
                return None
            return event if problems(event) is None else None
    return None


# -- events as records (one derivation, shared by the store and the autopilot) ----------------------


def _first(events: list[dict], name: str) -> dict:
    return next((e for e in events if e.get("type") == name), {})


def _last(events: list[dict], name: str) -> dict:
    return next((e for e in reversed(events) if e.get("type") == name), {})


def profile_start_row(e: dict) -> dict:
    """The ``profiles`` columns a profile_start event sets (the device's own row aside)."""
    config, device = e.get("config") or {}, e.get("device") or {}
    return {
        "id": e["profile_id"],
        "workload": e.get("workload"),
        "workload_spec": e.get("workload_spec"),
        "options": e.get("options") or {},
        "device_id": device.get("id"),
        "device_name": device.get("name"),
        "device_kind": device.get("kind"),
        "dtype": config.get("dtype"),
        "started_at": e.get("t"),
        "memory_budget_bytes": config.get("memory_budget_bytes"),
        "baseline_batch_size": e.get("baseline_batch_size"),
        "baseline_lr": e.get("baseline_lr"),
        "optimizer": e.get("optimizer"),
        "epochs": e.get("epochs"),
        "n_train": e.get("n_train"),
        "telemetry_source": e.get("telemetry_source"),
        "telemetry_reason": e.get("telemetry_reason"),
        "config": config,
        "versions": e.get("versions") or {},
        "warmup_samples": e.get("warmup_samples"),
        "weight_decay": e.get("weight_decay"),
        "schedule": e.get("schedule"),
        "decay_samples": e.get("decay_samples"),
        "max_grad_norm": e.get("max_grad_norm"),
        "math_settings": e.get("math_settings"),
        "estimator": e.get("estimator"),
        "threads": e.get("threads"),
        "cores": e.get("cores"),
        "carried_from": e.get("carried_from"),
    }


def point_row(e: dict) -> dict:
    """A ``profile_points`` row from a point event."""
    row = {"profile_id": e["profile_id"], **{k: e.get(k) for k in (*POINT_FIELDS, *BACKGROUND_FIELDS)}}
    row["step_times_s"] = [float(x) for x in (e.get("step_times_s") or [])]
    row["n"] = len(row["step_times_s"])
    return row


def profile_end_row(e: dict) -> dict:
    """The ``profiles`` columns a profile_end event sets."""
    return {
        "ended_at": e.get("t"),
        "stop_reason": e.get("stop_reason"),
        "saturation_batch": e.get("saturation_batch"),
        "memory_fit_intercept_bytes": e.get("memory_fit_intercept_bytes"),
        "memory_fit_slope_bytes": e.get("memory_fit_slope_bytes"),
        "inconsistency": e.get("inconsistency"),
    }


def profile_record(events: list[dict]) -> dict:
    """A profile as :func:`largestep.store.load_profile` returns it, from a profile job's events."""
    start = _first(events, PROFILE_START)
    record = {**profile_start_row(start), **profile_end_row(_last(events, PROFILE_END))}
    record["device_total_memory_bytes"] = (start.get("device") or {}).get("total_memory_bytes")
    # a batch size's later point (its rounds done, re-measured, flagged) replaces the earlier
    latest = {e["batch_size"]: e for e in events if e.get("type") == POINT}
    record["points"] = [point_row(e) for _, e in sorted(latest.items())]
    return record


def noise_row(e: dict) -> dict:
    """The ``noise_estimates`` columns a noise_estimate event sets (its id is the job's)."""
    return {
        "workload": e.get("workload"),
        "workload_spec": e.get("workload_spec"),
        "options": e.get("options") or {},
        "device_id": (e.get("device") or {}).get("id"),
        "created_at": e.get("t"),
        **{k: e.get(k) for k in NOISE_FIELDS},
    }


def noise_curve_row(e: dict, curve_id: str) -> dict:
    """The ``noise_curve_points`` columns a noise_curve_point event sets (its curve's id is the job's)."""
    return {"curve_id": curve_id, "fraction": e["fraction"], "step": e["step"], **noise_row(e)}


def run_start_row(e: dict, run_id: str) -> dict:
    """The ``runs`` columns a run_start event sets."""
    config, device = e.get("config") or {}, e.get("device") or {}
    return {
        "id": run_id,
        "group_id": config.get("group") or run_id,
        "role": e.get("role"),
        "recommendation_id": e.get("recommendation_id"),
        "workload": e.get("workload"),
        "workload_spec": e.get("workload_spec"),
        "options": e.get("options") or {},
        "device_id": device.get("id"),
        "device_name": device.get("name"),
        "batch_size": config.get("batch_size"),
        "micro_batch_size": e.get("micro_batch"),
        "accumulate": config.get("accumulate"),
        "lr": config.get("lr"),
        "warmup_samples": e.get("warmup_samples"),
        "epochs": e.get("epochs"),
        "schedule": config.get("schedule"),
        "dtype": config.get("dtype"),
        "seed": config.get("seed"),
        "target_val_loss": config.get("target_val_loss"),
        "tags": list(config.get("tags") or []),
        "primary_metric": e.get("primary_metric"),
        "primary_metric_mode": e.get("primary_metric_mode"),
        "n_params": e.get("n_params"),
        "total_steps": e.get("total_steps"),
        "started_at": e.get("t"),
        "config": config,
        "versions": e.get("versions") or {},
        "math_settings": e.get("math_settings"),
    }


def run_end_row(e: dict, primary_metric: str | None) -> dict:
    """The ``runs`` columns a run_end event sets; the primary metric is the run_start's choice."""
    metrics = e.get("final_metrics") or {}
    return {
        "ended_at": e.get("t"),
        "steps": e.get("steps"),
        "samples": e.get("samples"),
        "wall_time_s": e.get("wall_time_s"),
        "train_time_s": e.get("train_time_s"),
        "final_val_loss": e.get("final_val_loss"),
        "best_val_loss": e.get("best_val_loss"),
        "final_metrics": metrics,
        # a workload may have no validation metric
        "final_primary_metric": metrics.get(primary_metric) if primary_metric else None,
        "reached_target": e.get("reached_target"),
        "time_to_target_s": e.get("time_to_target_s"),
        "peak_memory_bytes": e.get("peak_memory_bytes"),
        "stop_reason": e.get("stop_reason"),
        **{k: e.get(k) for k in BACKGROUND_FIELDS},
    }


def run_record(events: list[dict], run_id: str) -> dict:
    """A run as the ``runs`` table holds it, from a training job's events."""
    start = run_start_row(_first(events, RUN_START), run_id)
    end = _last(events, RUN_END)
    return {**start, **(run_end_row(end, start["primary_metric"]) if end else {})}


def eval_rows(e: dict) -> list[dict]:
    """An eval event as long metric rows: val_loss, then val_<metric> for each workload metric."""
    base = {k: e.get(k) for k in METRIC_INDEX}
    return [
        {**base, "name": "val_loss", "value": e.get("val_loss")},
        *({**base, "name": f"val_{name}", "value": value} for name, value in (e.get("metrics") or {}).items()),
    ]


def evaluations(events: list[dict], run_id: str) -> list[dict]:
    """The validation loss at each evaluation, in the shape of :func:`largestep.store.run_evaluations`."""
    return [
        {
            "run_id": run_id,
            "step": e.get("step"),
            "epoch": e.get("epoch"),
            "samples": e.get("samples"),
            "wall_time_s": e.get("wall_time_s"),
            "train_time_s": e.get("train_time_s"),
            "val_loss": e.get("val_loss"),
        }
        for e in events
        if e.get("type") == EVAL
    ]


def verification_row(e: dict) -> dict:
    """The ``verifications`` row a verification event carries (its time, where the row has none, the event's)."""
    row = dict(e["verification"])
    row.setdefault("created_at", e.get("t"))
    return row


def verifications(events: list[dict]) -> list[dict]:
    """Every verification row of a spool, in order."""
    return [verification_row(e) for e in events if e.get("type") == VERIFICATION]
