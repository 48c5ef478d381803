"""Export a recommendation: a config document (YAML, JSON, TOML) or a ready snippet.

Formats
    yaml, json, toml   the config document of :func:`config_document`, serialised
    torch              plain PyTorch: optimizer, LambdaLR warm-up, DataLoader, accumulation loop
    hf                 Hugging Face ``TrainingArguments(...)`` (and a ``Trainer`` factory)
    lightning          a LightningModule's ``configure_optimizers`` and a ``Trainer(...)``
    deepspeed          a DeepSpeed config (JSON)
    cli                the ``largestep train`` line that reproduces the run

Every format carries the same global batch split, which must hold exactly::

    global batch = micro-batch x gradient accumulation x devices

``devices`` / ``micro_batch`` re-split the recommended global batch (the learning rate, tied to
the global batch, does not change); a split that does not divide exactly is refused with the
values that would work.

The document's layout (see :func:`config_document`)::

    largestep:   version, recommendation_id, created_at
    workload:    name, spec, options
    training:    batch_size (global), micro_batch_size, gradient_accumulation_steps, devices,
                 learning_rate, optimizer {name, weight_decay[, momentum][, factory]}, warmup_steps,
                 warmup_samples, schedule, [decay_samples, decay_steps (wsd)], [max_grad_norm], epochs, dtype,
                 [threads (--threads the profile measured with)]
    scaling:     rule, lr_per_sample, lr_scale, param_groups, baseline {batch_size, learning_rate},
                 noise_scale, assumed_perfect_scaling

An optimizer factory (``optimizer.name`` "factory:<function>") sets each parameter group's rate
relative to the rate it is given, so every group scales by the same ``lr_scale``; the snippets
call the factory with ``LEARNING_RATE``. Schedules (constant, cosine, linear, wsd) are defined in
samples by the workload and given here in optimizer steps at the recommended batch.
    measured_on: profile_id, noise_id, device {id, name, kind}, [estimator], [accepted_load: why the
                 profile could not be trusted, when the recommendation was made with --accept-load]
    prediction:  speedup_throughput, speedup_time_to_target,
                 experiments_per_gpu_day {baseline, recommended}
    batch_schedule (only when the recommendation planned one from a noise curve):
                 curve_id, spec (the `largestep train --batch-schedule` value), epochs, samples_ratio,
                 phases [{start_fraction, batch_size, learning_rate, warmup_samples}],
                 prediction {speedup_over_baseline, speedup_over_best_fixed, best_fixed_batch}

The torch and lightning snippets of a recommendation with a batch schedule also carry the
schedule as code that switches the batch (a new DataLoader per phase).

TOML has no null: a ``None`` value is left out of the TOML text, so :func:`parse_config` of TOML
gives back the document without its ``None`` keys. YAML and JSON keep them as null.
"""

from __future__ import annotations

import json
import math
import operator
import re
import shlex
from typing import Any

from ..about import __version__
from ..errors import UsageError
from .recommend import model_text

__all__ = [
    "FORMATS",
    "DATA_FORMATS",
    "FILE_SUFFIX",
    "OPTIMIZERS",
    "SGD_MOMENTUM",
    "export_config",
    "export_filename",
    "config_document",
    "parse_config",
    "split_batch",
]

FORMATS = ("yaml", "json", "toml", "torch", "hf", "lightning", "deepspeed", "cli")
DATA_FORMATS = ("yaml", "json", "toml")
FILE_SUFFIX = {
    "yaml": ".yaml",
    "json": ".json",
    "toml": ".toml",
    "torch": ".py",
    "hf": ".py",
    "lightning": ".py",
    "deepspeed": ".json",
    "cli": ".sh",
}
OPTIMIZERS = ("adam", "adamw", "sgd")
FACTORY = "factory:"  # a workload's optimizer factory, recorded as "factory:<function name>"
SGD_MOMENTUM = 0.9  # the workload contract's "sgd" is SGD with momentum 0.9
SCHEDULES = ("constant", "cosine", "linear", "wsd")
WSD_DEFAULT_DECAY = 0.2  # wsd without decay_samples: the last fifth of the run (as largestep.measure.train)

_ALIASES = {"yml": "yaml"}
_REQUIRED = ("recommendation_id", "batch_size", "learning_rate", "optimizer")


# -- the batch split -----------------------------------------------------------------------------


def split_batch(global_batch: int, devices: int = 1, micro_batch: int | None = None) -> tuple[int, int, int]:
    """(micro-batch, gradient accumulation, devices) with micro x accumulation x devices == global.

    Without ``micro_batch`` each device takes its whole share in one pass (accumulation 1).
    Raises UsageError, naming the values that would work, when the split is not exact.
    """
    global_batch = _positive_int(global_batch, "the global batch")
    devices = _positive_int(devices, "--devices")
    if global_batch % devices:
        raise UsageError(
            f"--devices {devices} does not divide the global batch {global_batch}; "
            f"use one of {_join(_divisors(global_batch))}"
        )
    per_device = global_batch // devices
    if micro_batch is None:
        return per_device, 1, devices
    micro_batch = _positive_int(micro_batch, "--micro-batch")
    if per_device % micro_batch:
        share = (
            f"the {per_device} samples each of {devices} devices takes per step" if devices > 1 else "the global batch"
        )
        raise UsageError(
            f"--micro-batch {micro_batch} does not divide {share} (global batch {global_batch}); "
            f"use one of {_join(_divisors(per_device))}"
        )
    return micro_batch, per_device // micro_batch, devices


def _split_for(rec: dict, devices: int | None, micro_batch: int | None) -> tuple[int, int, int]:
    """The split to export: the recommendation's own unless ``devices`` or ``micro_batch`` is given."""
    global_batch = rec["batch_size"]
    own_micro = rec.get("micro_batch_size") or global_batch
    if devices is None and micro_batch is None:
        micro, accumulation, n = split_batch(global_batch, rec.get("world_size") or 1, own_micro)
        own_accumulation = rec.get("gradient_accumulation_steps") or 1
        if accumulation != own_accumulation:
            raise UsageError(
                f"recommendation {rec['recommendation_id']} is inconsistent: micro-batch {own_micro} x "
                f"accumulation {own_accumulation} x {n} devices is not its batch {global_batch}"
            )
        return micro, accumulation, n
    if devices is None:
        devices = rec.get("world_size") or 1
    if micro_batch is None:
        # Only the device count changed: each device takes its whole share, but never more per
        # pass than the recommendation's own micro-batch, the largest one known to fit in memory.
        per_device = split_batch(global_batch, devices)[0]
        if per_device > own_micro:
            micro_batch = max(d for d in _divisors(per_device) if d <= own_micro)
    return split_batch(global_batch, devices, micro_batch)


def _positive_int(value: Any, what: str) -> int:
    try:
        if isinstance(value, bool):
            raise TypeError
        number = operator.index(value)
    except TypeError:
        raise UsageError(f"{what} must be a positive integer, not {value!r}") from None
    if number <= 0:
        raise UsageError(f"{what} must be a positive integer, not {value!r}")
    return number


def _divisors(n: int) -> list[int]:
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


def _join(values: list[int]) -> str:
    return ", ".join(str(v) for v in values)


# -- the config document -------------------------------------------------------------------------


def config_document(rec: dict, devices: int | None = None, micro_batch: int | None = None) -> dict:
    """The nested, readable document that the data formats serialise (layout: module docstring)."""
    _check(rec)
    micro, accumulation, n = _split_for(rec, devices, micro_batch)
    batch = int(rec["batch_size"])
    lr = float(rec["learning_rate"])
    optimizer: dict[str, Any] = {"name": rec["optimizer"], "weight_decay": float(rec.get("weight_decay") or 0.0)}
    if rec["optimizer"] == "sgd":
        optimizer["momentum"] = SGD_MOMENTUM
    if rec["optimizer"].startswith(FACTORY):
        optimizer["factory"] = rec["optimizer"][len(FACTORY) :]
    baseline = rec.get("baseline") or {}
    device = rec.get("device") or {}
    speedup = rec.get("predicted_speedup") or {}
    per_day = rec.get("experiments_per_gpu_day") or {}
    noise_scale = _number(rec.get("noise_scale"))
    doc = {
        "largestep": {
            "version": rec.get("tool_version") or __version__,
            "recommendation_id": rec["recommendation_id"],
            "created_at": rec.get("created_at"),
        },
        "workload": {
            "name": rec.get("workload"),
            "spec": rec.get("workload_spec") or rec.get("workload"),
            "options": dict(rec.get("workload_options") or {}),
        },
        "training": {
            "batch_size": batch,
            "micro_batch_size": micro,
            "gradient_accumulation_steps": accumulation,
            "devices": n,
            "learning_rate": lr,
            "optimizer": optimizer,
            "warmup_steps": int(rec.get("warmup_steps") or 0),
            "warmup_samples": int(rec.get("warmup_samples") or 0),
            "schedule": rec.get("schedule") or "constant",
            **_schedule_and_clipping(rec, batch),
            "epochs": _int(rec.get("epochs")),
            "dtype": rec.get("dtype") or "fp32",
        },
        "scaling": {
            "rule": rec.get("rule") or "linear",
            "lr_per_sample": lr / batch,
            "lr_scale": lr / float(baseline["learning_rate"]) if baseline.get("learning_rate") else None,
            "param_groups": "every parameter group's learning rate is multiplied by lr_scale",
            "baseline": {
                "batch_size": _int(baseline.get("batch_size")),
                "learning_rate": _number(baseline.get("learning_rate")),
            },
            "noise_scale": noise_scale,
            "assumed_perfect_scaling": bool(rec.get("assumed_perfect_scaling", noise_scale is None)),
        },
        "measured_on": {
            "profile_id": rec.get("profile_id"),
            "noise_id": rec.get("noise_id"),
            "device": {"id": device.get("id"), "name": device.get("name"), "kind": device.get("kind")},
        },
        "prediction": {
            "speedup_throughput": _number(speedup.get("throughput")),
            "speedup_time_to_target": _number(speedup.get("time_to_target")),
            **(
                {
                    "speedup_time_to_target_interval": [_number(v) for v in speedup["time_to_target_interval"]],
                    "coverage": _number(speedup.get("coverage")),
                }
                if speedup.get("time_to_target_interval")
                else {}
            ),
            # the noise model ranked on: the estimate or curve, and its correction by earlier verifications
            **({"noise_model": model_text(rec)} if rec.get("steps_model") else {}),
            "experiments_per_gpu_day": {
                "baseline": _number(per_day.get("baseline")),
                "recommended": _number(per_day.get("recommended")),
            },
        },
    }
    if rec.get("threads"):  # --threads the profile measured with: the run should train on as many
        doc["training"]["threads"] = int(rec["threads"])
    if rec.get("estimator"):
        doc["measured_on"]["estimator"] = rec["estimator"]  # which statistic of the steps is the step time
    if rec.get("accepted_load"):  # made from a profile that could not be trusted: why, wherever it goes
        doc["measured_on"]["accepted_load"] = rec["accepted_load"]
    if rec.get("batch_schedule"):
        doc["batch_schedule"] = _batch_schedule_section(rec["batch_schedule"])
    return doc


def _batch_schedule_section(plan: dict) -> dict:
    """A planned batch schedule as a list of phases (see largestep.plan.schedule)."""
    speed = plan["predicted_speedup"]
    return {
        "curve_id": plan.get("curve_id"),
        "spec": plan["spec"],
        "epochs": _number(plan.get("epochs")),
        "samples_ratio": _number(plan.get("samples_ratio")),
        "phases": [
            {
                "start_fraction": float(p["start_fraction"]),
                "batch_size": int(p["batch_size"]),
                "learning_rate": float(p["learning_rate"]),
                "warmup_samples": int(p["warmup_samples"]),
            }
            for p in plan["phases"]
        ],
        "prediction": {
            "speedup_over_baseline": _number(speed["over_baseline"]),
            "speedup_over_best_fixed": _number(speed["over_best_fixed"]),
            "best_fixed_batch": int(plan["best_fixed"]["batch_size"]),
            **(
                {
                    "speedup_over_baseline_interval": [_number(v) for v in speed["over_baseline_interval"]],
                    "speedup_over_best_fixed_interval": [_number(v) for v in speed["over_best_fixed_interval"]],
                }
                if speed.get("over_baseline_interval")
                else {}
            ),
        },
    }


def _schedule_and_clipping(rec: dict, batch: int) -> dict:
    """The WSD decay length (samples, and optimizer steps at ``batch``) and the clipping norm, where they apply:
    a recommendation without them keeps the document it always had."""
    extra: dict[str, Any] = {}
    if rec.get("schedule") == "wsd":
        samples = _int(rec.get("decay_samples"))  # None: the last fifth of the run
        extra["decay_samples"] = samples
        extra["decay_steps"] = -(-samples // batch) if samples is not None else None
    if _number(rec.get("max_grad_norm")) is not None:
        extra["max_grad_norm"] = _number(rec.get("max_grad_norm"))
    return extra


def _check(rec: dict) -> None:
    missing = [key for key in _REQUIRED if rec.get(key) is None]
    if missing:
        raise UsageError(f"the recommendation lacks {', '.join(missing)}; run `largestep recommend` again")
    if rec["optimizer"] not in OPTIMIZERS and not rec["optimizer"].startswith(FACTORY):
        raise UsageError(
            f"optimizer {rec['optimizer']!r} cannot be exported; known: {', '.join(OPTIMIZERS)} or an optimizer factory"
        )
    schedule = rec.get("schedule") or "constant"
    if schedule not in SCHEDULES:
        raise UsageError(f"schedule {schedule!r} cannot be exported; known: {', '.join(SCHEDULES)}")


def _number(value: Any) -> float | None:
    """A finite float, or None (JSON and TOML cannot carry NaN or infinity faithfully)."""
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def _drop_none(value: Any) -> Any:
    """The document without None values: TOML's convention, as TOML has no null."""
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    return value


# -- entry points --------------------------------------------------------------------------------


def export_config(rec: dict, fmt: str, devices: int | None = None, micro_batch: int | None = None) -> str:
    """The recommendation as text in ``fmt`` (one of FORMATS), optionally re-split over devices."""
    fmt = _format(fmt, FORMATS)
    doc = config_document(rec, devices, micro_batch)
    return _WRITERS[fmt](doc)


def export_filename(rec: dict, fmt: str) -> str:
    """A default file name, e.g. ``largestep-rec-1a2b3c4d-hf.py``."""
    fmt = _format(fmt, FORMATS)
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", str(rec.get("recommendation_id") or "recommendation"))
    return f"largestep-{stem}-{fmt}{FILE_SUFFIX[fmt]}"


def parse_config(text: str, fmt: str) -> dict:
    """A YAML, JSON or TOML export read back into the document (TOML: no None keys)."""
    fmt = _format(fmt, DATA_FORMATS)
    try:
        if fmt == "json":
            doc = json.loads(text)
        elif fmt == "yaml":
            import yaml

            doc = yaml.safe_load(text)
        else:
            doc = _tomllib().loads(text)
    except Exception as exc:  # each parser has its own error type; all mean "not valid"
        detail = " ".join(str(exc).split())
        raise UsageError(f"not valid {fmt.upper()}: {detail}") from None
    if not isinstance(doc, dict):
        raise UsageError(f"not a largestep config: the {fmt.upper()} text holds no mapping")
    return doc


def _format(fmt: str, allowed: tuple[str, ...]) -> str:
    name = str(fmt).strip().lower()
    name = _ALIASES.get(name, name)
    if name not in allowed:
        raise UsageError(f"unknown format {fmt!r}; use one of {', '.join(allowed)}")
    return name


def _tomllib():
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    return tomllib


# -- the header every output starts with ---------------------------------------------------------


def _header(doc: dict) -> list[str]:
    """Where the numbers come from, one fact a line (without comment markers)."""
    ls, train, scale, on = doc["largestep"], doc["training"], doc["scaling"], doc["measured_on"]
    device = on["device"]
    measured = f"measured on {_clean(device['name'] or device['id'] or 'an unknown device')}"
    where = device["id"] or device["kind"]
    if where and device["name"]:
        measured += f" ({_clean(where)})"
    measured += f", profile {_clean(on['profile_id'] or '-')}"
    if on["noise_id"]:
        measured += f", noise estimate {_clean(on['noise_id'])}"
    base = scale["baseline"]
    if scale["rule"] == "linear":
        rule = f"rule: linear, lr/batch fixed at {scale['lr_per_sample']:.4g} per sample"
    elif scale["rule"] == "noise":
        rule = "rule: noise, lr = baseline lr x (1 + B_noise/baseline batch) / (1 + B_noise/batch) (McCandlish et al.)"
    else:
        rule = f"rule: {_clean(scale['rule'])}, lr = baseline lr x sqrt(batch / baseline batch)"
    if base["batch_size"] and base["learning_rate"]:
        rule += f" (baseline: batch {base['batch_size']} at lr {base['learning_rate']:.4g})"
    noise = (
        f"gradient noise scale about {scale['noise_scale']:,.0f}"
        if scale["noise_scale"] is not None
        else "noise scale: not estimated (perfect scaling assumed up to saturation)"
        if scale["assumed_perfect_scaling"]
        else f"noise model: {_clean(doc['prediction'].get('noise_model') or '-')}"
    )
    lines = [
        f"generated by largestep {__version__} from recommendation {_clean(ls['recommendation_id'])} "
        f"made on {_clean(ls['created_at'] or 'an unknown date')}"
        + (f" by largestep {_clean(ls['version'])}" if ls["version"] != __version__ else ""),
        f"workload {_clean(doc['workload']['spec'] or '-')}; {measured}",
        f"{rule}; {noise}",
        f"global batch {train['batch_size']} = micro-batch {train['micro_batch_size']} x accumulation "
        f"{train['gradient_accumulation_steps']} x {_devices(train['devices'])}; learning rate "
        f"{train['learning_rate']:.6g} after {train['warmup_steps']} warm-up steps "
        f"({train['warmup_samples']} samples), then {train['schedule']}",
    ]
    if on.get("accepted_load"):
        lines.insert(0, f"ACCEPTED UNDER LOAD (--accept-load): {_clean(on['accepted_load'])}")
    pred = doc["prediction"]
    if pred["speedup_time_to_target"] is not None or pred["speedup_throughput"] is not None:
        parts = []
        if pred["speedup_time_to_target"] is not None:
            span = pred.get("speedup_time_to_target_interval")
            parts.append(
                f"{pred['speedup_time_to_target']:.2f}x the speed to the target"
                + (
                    f" ({(pred.get('coverage') or 0.9):.0%} prediction interval {span[0]:.2f}x to {span[1]:.2f}x)"
                    if span
                    else ""
                )
            )
        if pred["speedup_throughput"] is not None:
            parts.append(f"{pred['speedup_throughput']:.2f}x the throughput")
        lines.append("predicted: " + ", ".join(parts) + " of the baseline")
    return lines


def _schedule_interval(prediction: dict) -> str:
    """ ", 90% prediction intervals 1.1x-1.6x and 0.9x-1.2x" where the plan has them."""
    low = prediction.get("speedup_over_baseline_interval")
    fixed = prediction.get("speedup_over_best_fixed_interval")
    if not low or not fixed:
        return ""
    return f"; 90% prediction intervals {low[0]:.2f}x-{low[1]:.2f}x and {fixed[0]:.2f}x-{fixed[1]:.2f}x"


def _clean(value: Any) -> str:
    """Text safe inside a one-line comment: no newlines or control characters can break out."""
    return " ".join("".join(ch if ch.isprintable() else " " for ch in str(value)).split())


def _devices(n: int) -> str:
    return "1 device" if n == 1 else f"{n} devices"


def _comment(lines: list[str]) -> str:
    return "".join(f"# {line}\n" for line in lines)


# -- data formats --------------------------------------------------------------------------------


def _yaml(doc: dict) -> str:
    import yaml

    return _comment(_header(doc)) + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=100)


def _json(doc: dict) -> str:
    return json.dumps(doc, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def _toml(doc: dict) -> str:
    import tomli_w

    return _comment(_header(doc)) + tomli_w.dumps(_drop_none(doc))


# -- code snippets -------------------------------------------------------------------------------

_TORCH_OPTIMIZER = {
    "adam": "torch.optim.Adam({params}, lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)",
    "adamw": "torch.optim.AdamW({params}, lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)",
    "sgd": "torch.optim.SGD({params}, lr=LEARNING_RATE, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)",
}


def _optimizer(doc: dict, model: str, params: str) -> str:
    """The optimizer expression: a named one on ``params``, or the workload's factory on ``model``
    (it sets every group's rate relative to LEARNING_RATE, so the groups scale together)."""
    optimizer = doc["training"]["optimizer"]
    if "factory" in optimizer:
        return f"{optimizer['factory']}({model}, LEARNING_RATE)"
    return _TORCH_OPTIMIZER[optimizer["name"]].format(params=params)


def _factory_note(doc: dict) -> list[str]:
    optimizer = doc["training"]["optimizer"]
    if "factory" not in optimizer:
        return []
    return [
        f"{optimizer['factory']} is the optimizer factory of workload {_clean(doc['workload']['spec'] or '-')}: "
        f"import it from there; called with LEARNING_RATE it scales every parameter group alike "
        f"(x{doc['scaling']['lr_scale'] or 1:.4g} of the baseline's rates)"
    ]


def _knobs(doc: dict) -> str:
    """Every number of the recommendation, one per line, as module constants."""
    t = doc["training"]
    epochs = t["epochs"]
    lines = [
        f"GLOBAL_BATCH = {t['batch_size']}  # samples per optimizer step, all devices together",
        f"MICRO_BATCH = {t['micro_batch_size']}  # samples per forward/backward pass on one device",
        f"ACCUMULATION = {t['gradient_accumulation_steps']}  # micro-batches per optimizer step",
        f"DEVICES = {t['devices']}  # data-parallel processes",
        f"LEARNING_RATE = {t['learning_rate']!r}  # peak, reached at the end of warm-up",
        f"WEIGHT_DECAY = {t['optimizer']['weight_decay']!r}",
    ]
    if t["optimizer"]["name"] == "sgd":
        lines.append(f"MOMENTUM = {SGD_MOMENTUM!r}")
    if t.get("max_grad_norm") is not None:
        lines.append(f"MAX_GRAD_NORM = {t.get('max_grad_norm')!r}  # clip gradients to this global norm")
    if t["schedule"] == "wsd":
        lines.append(
            f"DECAY_STEPS = {t['decay_steps']!r}  # optimizer steps of the final decay"
            + ("" if t["decay_steps"] is not None else "; None: the last fifth of the run")
        )
    lines += [
        f"WARMUP_STEPS = {t['warmup_steps']}  # optimizer steps of linear warm-up ({t['warmup_samples']} samples)",
        f"EPOCHS = {epochs if epochs is not None else 1}"
        + ("" if epochs is not None else "  # the workload sets no epoch count: choose yours"),
    ]
    return "\n".join(lines) + "\n"


def _lr_factor(doc: dict) -> str:
    """The LambdaLR multiplier: linear warm-up, then constant, cosine, linear or WSD decay to zero."""
    schedule = doc["training"]["schedule"]
    if schedule == "linear":
        return '''

def lr_factor(step: int, total_steps: int) -> float:
    """Multiplier of LEARNING_RATE at optimizer step `step`: linear warm-up, then linearly to zero."""
    if step < WARMUP_STEPS:
        return (step + 1) / WARMUP_STEPS
    return max(0.0, 1.0 - (step - WARMUP_STEPS) / max(1, total_steps - WARMUP_STEPS))
'''
    if schedule == "wsd":
        return f'''

def lr_factor(step: int, total_steps: int) -> float:
    """Multiplier of LEARNING_RATE at optimizer step `step`: warm-up, stable, then linear decay to zero."""
    if step < WARMUP_STEPS:
        return (step + 1) / WARMUP_STEPS
    decay = DECAY_STEPS if DECAY_STEPS is not None else round({WSD_DEFAULT_DECAY!r} * total_steps)
    if step < total_steps - decay:
        return 1.0
    return max(0.0, (total_steps - step) / max(1, decay))
'''
    if schedule == "cosine":
        return '''

def lr_factor(step: int, total_steps: int) -> float:
    """Multiplier of LEARNING_RATE at optimizer step `step`: linear warm-up, then cosine to zero."""
    if step < WARMUP_STEPS:
        return (step + 1) / WARMUP_STEPS
    progress = min(1.0, (step - WARMUP_STEPS) / max(1, total_steps - WARMUP_STEPS))
    return 0.5 * (1.0 + math.cos(math.pi * progress))
'''
    return '''

def lr_factor(step: int) -> float:
    """Multiplier of LEARNING_RATE at optimizer step `step`: linear warm-up, then constant."""
    if step < WARMUP_STEPS:
        return (step + 1) / WARMUP_STEPS
    return 1.0
'''


def _math_import(doc: dict) -> list[str]:
    return ["import math", ""] if doc["training"]["schedule"] == "cosine" else []


def _total_steps_line(doc: dict, indent: str, expression: str) -> str:
    """Only a decaying schedule needs the run's length, in optimizer steps (after accumulation)."""
    if doc["training"]["schedule"] == "constant":
        return ""
    return f"{indent}total_steps = {expression}  # optimizer steps, after accumulation\n"


def _scheduler_line(doc: dict, total_steps: str) -> str:
    if doc["training"]["schedule"] != "constant":
        return f"torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, {total_steps}))"
    return "torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)"


def _torch(doc: dict) -> str:
    t = doc["training"]
    distributed = t["devices"] > 1
    dtype = t["dtype"]
    imports = _math_import(doc) + ["import torch", "from torch.utils.data import DataLoader"]
    if distributed:
        imports = ["import contextlib", "import os"] + imports
        imports.append("from torch.utils.data.distributed import DistributedSampler")
    out = _comment(_header(doc) + _factory_note(doc))
    if distributed:
        out += _comment(
            [
                f"{t['devices']} devices: launch with `torchrun --nproc_per_node {t['devices']} <your script>`; "
                f"each process loads MICRO_BATCH = {t['micro_batch_size']} samples per pass",
                "through a DistributedSampler, and the model is wrapped in DistributedDataParallel, which "
                "averages gradients across devices. Each process trains on the GPU torchrun's LOCAL_RANK names.",
            ]
        )
    out += "\n".join(imports) + "\n\n" + _knobs(doc)
    out += "\nassert MICRO_BATCH * ACCUMULATION * DEVICES == GLOBAL_BATCH\n"
    out += _lr_factor(doc)
    sampler = "DistributedSampler(train_dataset)" if distributed else "None"
    total = "EPOCHS * (len(loader) // ACCUMULATION)"
    optimizer = _optimizer(doc, "model", "model.parameters()")
    body = '''

def train(model, train_dataset, loss_fn, device="cpu"):
    """Train `model` on `train_dataset` (items: inputs..., target) with the recommended settings."""
'''
    if distributed:
        body += """    # one process per device, started by torchrun, which names this process's device in LOCAL_RANK;
    # the device is made current before the process group starts (NCCL binds to the current device)
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if torch.device(device).type == "cuda" else "gloo")
    model.to(device)
    model = torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[local_rank] if torch.device(device).type == "cuda" else None)
"""
    else:
        body += "    model.to(device)\n"
    body += f"""    optimizer = {optimizer}
    sampler = {sampler}
    loader = DataLoader(train_dataset, batch_size=MICRO_BATCH, shuffle=sampler is None, sampler=sampler,
                        drop_last=True)
{_total_steps_line(doc, "    ", total)}    scheduler = {_scheduler_line(doc, "total_steps")}
"""
    if dtype == "fp16":
        body += "    scaler = torch.amp.GradScaler(torch.device(device).type)  # fp16 needs loss scaling\n"
    body += "\n    for epoch in range(EPOCHS):\n"
    if distributed:
        body += "        sampler.set_epoch(epoch)  # a different shuffle each epoch, the same on every device\n"
    body += """        optimizer.zero_grad(set_to_none=True)
        for i, (*inputs, target) in enumerate(loader):
            # forward backward: the loss is divided so the accumulated gradient is the mean over
            # the global batch, not the sum of ACCUMULATION micro-batch means
"""
    indent = "            "
    if distributed:
        body += (
            f"{indent}stepping = (i + 1) % ACCUMULATION == 0\n"
            f"{indent}# micro-batches that only accumulate skip DDP's gradient all-reduce\n"
            f"{indent}with contextlib.nullcontext() if stepping else model.no_sync():\n"
        )
        indent += "    "
    forward = "loss = loss_fn(model(*(x.to(device) for x in inputs)), target.to(device))"
    if dtype in ("bf16", "fp16"):
        torch_dtype = "torch.bfloat16" if dtype == "bf16" else "torch.float16"
        body += f"{indent}with torch.autocast(torch.device(device).type, dtype={torch_dtype}):\n{indent}    {forward}\n"
    else:
        body += f"{indent}{forward}\n"
    if dtype == "fp16":
        body += f"{indent}scaler.scale(loss / ACCUMULATION).backward()\n"
    else:
        body += f"{indent}(loss / ACCUMULATION).backward()\n"
    if distributed:
        body += "            if not stepping:\n                continue  # keep accumulating\n"
    else:
        body += "            if (i + 1) % ACCUMULATION:\n                continue  # keep accumulating\n"
    body += "            # update: one optimizer step per GLOBAL_BATCH samples\n"
    if t.get("max_grad_norm") is not None:
        if dtype == "fp16":
            body += "            scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones\n"
        body += "            torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)\n"
    if dtype == "fp16":
        body += "            scaler.step(optimizer)\n            scaler.update()\n"
    else:
        body += "            optimizer.step()\n"
    body += """            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
    return model
"""
    if "batch_schedule" in doc:
        body += _batch_schedule_code(doc) + _torch_batch_schedule(doc)
    return out + body


def _hf(doc: dict) -> str:
    t = doc["training"]
    name = t["optimizer"]["name"]
    wd = t["optimizer"]["weight_decay"]
    scheduler = _HF_SCHEDULER[t["schedule"]]
    factory = t["optimizer"].get("factory")
    out = _comment(_header(doc) + _factory_note(doc))
    out += _comment(
        [
            f"global batch {t['batch_size']} = per_device_train_batch_size {t['micro_batch_size']} x "
            f"gradient_accumulation_steps {t['gradient_accumulation_steps']} x {_devices(t['devices'])}"
            + (
                f" (launch with `torchrun --nproc_per_node {t['devices']}` or `accelerate launch`)"
                if t["devices"] > 1
                else ""
            ),
        ]
    )
    explicit = None
    if factory:
        explicit = f"{factory}(model, {t['learning_rate']!r})"
    elif name == "sgd":
        explicit = (
            f"torch.optim.SGD(model.parameters(), lr={t['learning_rate']!r}, momentum={SGD_MOMENTUM!r}, "
            f"weight_decay={wd!r})"
        )
    elif name == "adam" and wd:
        explicit = f"torch.optim.Adam(model.parameters(), lr={t['learning_rate']!r}, weight_decay={wd!r})"
    out += ("import torch\n" if explicit else "") + "from transformers import Trainer, TrainingArguments\n\n"
    out += f"GLOBAL_BATCH = {t['batch_size']}  # samples per optimizer step, all devices together\n"
    out += f"DEVICES = {t['devices']}  # processes the Trainer is launched on\n\n"
    optim_comment = {
        "adam": "  # the Trainer has no plain Adam: AdamW with weight_decay=0 is Adam",
        "adamw": "",
        "sgd": "  # plain SGD, no momentum: make_trainer below passes SGD with momentum 0.9",
    }.get(name, "  # unused: make_trainer below passes the workload's optimizer factory")
    args_wd = 0.0 if name == "adam" else wd
    args = [
        f"output_dir={'largestep-' + _clean(doc['largestep']['recommendation_id'])!r},",
        f"per_device_train_batch_size={t['micro_batch_size']},",
        f"gradient_accumulation_steps={t['gradient_accumulation_steps']},",
        f"learning_rate={t['learning_rate']!r},",
        f"warmup_steps={t['warmup_steps']},  # optimizer steps ({t['warmup_samples']} samples)",
        f'lr_scheduler_type="{scheduler}",',
    ]
    if t["schedule"] == "wsd" and t["decay_steps"] is not None:
        args.append(
            f'lr_scheduler_kwargs={{"num_decay_steps": {t["decay_steps"]}}},  # the final decay, optimizer steps'
        )
    # the Trainer clips at 1.0 unless told: 0 turns clipping off, as the workload trains
    args.append(f"max_grad_norm={t.get('max_grad_norm') if t.get('max_grad_norm') is not None else 0.0!r},")
    if t["epochs"] is not None:
        args.append(f"num_train_epochs={t['epochs']},")
    args += [
        f'optim="{"sgd" if name == "sgd" else "adamw_torch"}",{optim_comment}',
        f"weight_decay={args_wd!r},",
        f"bf16={t['dtype'] == 'bf16'},",
        f"fp16={t['dtype'] == 'fp16'},",
    ]
    out += "args = TrainingArguments(\n" + "".join(f"    {a}\n" for a in args) + ")\n"
    out += '''

def make_trainer(model, train_dataset, **kwargs):
    """A Trainer with these arguments; the learning-rate schedule comes from `args`."""
'''
    if explicit:
        why = (
            "the workload's optimizer factory, every parameter group scaled alike"
            if factory
            else "SGD with momentum 0.9, as measured"
            if name == "sgd"
            else "Adam's own (L2) weight decay, which AdamW does not reproduce"
        )
        out += f"    # {why}; with scheduler None the Trainer builds its warm-up schedule on it\n"
        out += f"    optimizer = {explicit}\n"
        out += (
            "    trainer = Trainer(model=model, args=args, train_dataset=train_dataset, "
            "optimizers=(optimizer, None), **kwargs)\n"
        )
    else:
        out += "    trainer = Trainer(model=model, args=args, train_dataset=train_dataset, **kwargs)\n"
    out += """    # the batch the Trainer will actually step on: train_batch_size is the per-device batch times the GPUs
    # one process drives (DataParallel when several are visible to it), times the processes
    used = args.train_batch_size * args.gradient_accumulation_steps * args.world_size
    assert used == GLOBAL_BATCH, (
        f"the Trainer would step on {used} samples ({args.train_batch_size} a process x "
        f"{args.gradient_accumulation_steps} accumulated x {args.world_size} processes), not GLOBAL_BATCH "
        f"{GLOBAL_BATCH}: launch DEVICES processes with torchrun, each seeing one GPU")
    return trainer
"""
    return out


_HF_SCHEDULER = {
    "constant": "constant_with_warmup",
    "cosine": "cosine",
    "linear": "linear",
    "wsd": "warmup_stable_decay",
}
_LIGHTNING_PRECISION = {"fp32": "32-true", "bf16": "bf16-mixed", "fp16": "16-mixed"}
_LIGHTNING_ACCELERATOR = {"cuda": "gpu", "mps": "mps", "cpu": "cpu"}


def _lightning(doc: dict) -> str:
    t = doc["training"]
    accelerator = _LIGHTNING_ACCELERATOR.get(doc["measured_on"]["device"]["kind"] or "", "auto")
    precision = _LIGHTNING_PRECISION.get(t["dtype"], "32-true")
    out = _comment(_header(doc) + _factory_note(doc))
    if t["devices"] > 1:
        out += _comment(
            [
                f"{t['devices']} devices: Lightning adds the DistributedSampler; each device loads "
                f"MICRO_BATCH = {t['micro_batch_size']} samples per pass"
            ]
        )
    imports = _math_import(doc) + ["import lightning as L", "import torch", "from torch.utils.data import DataLoader"]
    out += "\n".join(imports) + "\n\n"
    out += _knobs(doc)
    out += "\nassert MICRO_BATCH * ACCUMULATION * DEVICES == GLOBAL_BATCH\n"
    out += _lr_factor(doc)
    optimizer = _optimizer(doc, "self.model", "self.parameters()")
    clip = ", gradient_clip_val=MAX_GRAD_NORM" if t.get("max_grad_norm") is not None else ""
    out += f'''

class LargestepModule(L.LightningModule):
    """Wraps a model and its loss with the recommended optimizer and schedule."""

    def __init__(self, model, loss_fn):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def training_step(self, batch, batch_idx):
        *inputs, target = batch
        loss = self.loss_fn(self.model(*inputs), target)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        optimizer = {optimizer}
{_total_steps_line(doc, "        ", "self.trainer.estimated_stepping_batches")}        scheduler = {_scheduler_line(doc, "total_steps")}
        # "step": the schedule counts optimizer steps, as WARMUP_STEPS does
        return {{"optimizer": optimizer, "lr_scheduler": {{"scheduler": scheduler, "interval": "step"}}}}


def fit(model, loss_fn, train_dataset):
    loader = DataLoader(train_dataset, batch_size=MICRO_BATCH, shuffle=True, drop_last=True)
    trainer = L.Trainer(max_epochs=EPOCHS, accumulate_grad_batches=ACCUMULATION, devices=DEVICES,
                        accelerator="{accelerator}", precision="{precision}"{clip})
    trainer.fit(LargestepModule(model, loss_fn), loader)
    return trainer
'''
    if "batch_schedule" in doc:
        out += _batch_schedule_code(doc) + _lightning_batch_schedule(doc, accelerator, precision)
    return out


def _batch_schedule_code(doc: dict) -> str:
    """The schedule's constants and the function giving each step's batch and rate (torch and lightning)."""
    plan = doc["batch_schedule"]
    phases = "".join(
        f"    ({p['start_fraction']!r}, {p['batch_size']}, {p['learning_rate']!r}),\n" for p in plan["phases"]
    )
    warmup = plan["phases"][0]["warmup_samples"]
    epochs = plan["epochs"] if plan["epochs"] is not None else doc["training"]["epochs"] or 1
    return f'''

# -- the batch schedule: the batch grows as the gradient noise scale does (noise curve {_clean(plan["curve_id"])})
# predicted {plan["prediction"]["speedup_over_baseline"]:.2f}x the baseline's speed and \
{plan["prediction"]["speedup_over_best_fixed"]:.2f}x the best fixed batch's \
({plan["prediction"]["best_fixed_batch"]}){_schedule_interval(plan["prediction"])}
BATCH_SCHEDULE = [  # (share of the run's samples at which the phase starts, batch size, peak learning rate)
{phases}]
SCHEDULE_WARMUP_SAMPLES = {warmup}  # each phase ramps its rate linearly from the previous phase's
SCHEDULE_EPOCHS = {epochs!r}  # the scheduled run's length: larger batches need more samples to the same loss


def scheduled_phase(samples_seen: int, total_samples: int) -> tuple[int, float]:
    """(batch size, learning rate) for the optimizer step about to run: the phase in force, its rate
    ramped linearly from the previous phase's over SCHEDULE_WARMUP_SAMPLES after each increase."""
    index = max(i for i, (start, _, _) in enumerate(BATCH_SCHEDULE) if samples_seen >= start * total_samples)
    start, batch, lr = BATCH_SCHEDULE[index]
    previous_lr = BATCH_SCHEDULE[index - 1][2] if index else 0.0
    if SCHEDULE_WARMUP_SAMPLES <= 0:
        return batch, lr
    ramp = (samples_seen - start * total_samples + batch) / SCHEDULE_WARMUP_SAMPLES
    return batch, previous_lr + (lr - previous_lr) * min(1.0, ramp)
'''


def _torch_batch_schedule(doc: dict) -> str:
    optimizer = _optimizer(doc, "model", "model.parameters()")
    clip = (
        "            torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)\n"
        if doc["training"].get("max_grad_norm") is not None
        else ""
    )
    return f'''

def train_with_batch_schedule(model, train_dataset, loss_fn, device="cpu"):
    """Train on one device with the batch growing phase by phase: a new DataLoader at each phase's batch."""
    model.to(device)
    optimizer = {optimizer}
    base_lrs = [group["lr"] for group in optimizer.param_groups]  # each group scales with the schedule's rate
    total = int(SCHEDULE_EPOCHS * len(train_dataset))
    seen = 0
    while seen < total:
        batch, _ = scheduled_phase(seen, total)
        loader = DataLoader(train_dataset, batch_size=batch, shuffle=True, drop_last=True)
        if len(loader) == 0:
            raise ValueError(f"batch {{batch}} is larger than the {{len(train_dataset)}} training samples")
        for *inputs, target in loader:
            phase_batch, lr = scheduled_phase(seen, total)
            if phase_batch != batch or seen >= total:
                break  # the next phase starts: a new loader at its batch (or the run is over)
            for group, base_lr in zip(optimizer.param_groups, base_lrs):
                group["lr"] = base_lr * lr / LEARNING_RATE
            loss = loss_fn(model(*(x.to(device) for x in inputs)), target.to(device))
            loss.backward()
{clip}            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            seen += batch
    return model
'''


def _lightning_batch_schedule(doc: dict, accelerator: str, precision: str) -> str:
    optimizer = _optimizer(doc, "self.model", "self.parameters()")
    clip = ", gradient_clip_val=MAX_GRAD_NORM" if doc["training"].get("max_grad_norm") is not None else ""
    return f'''

class BatchScheduleModule(LargestepModule):
    """The batch grows at epoch starts (Lightning asks for a new loader every epoch with
    reload_dataloaders_every_n_epochs=1); the rate follows the schedule before every step."""

    def __init__(self, model, loss_fn, train_dataset):
        super().__init__(model, loss_fn)
        self.train_dataset = train_dataset
        self.total_samples = int(SCHEDULE_EPOCHS * len(train_dataset))
        self.samples_seen = 0

    def train_dataloader(self):
        batch, _ = scheduled_phase(self.samples_seen, self.total_samples)
        return DataLoader(self.train_dataset, batch_size=batch, shuffle=True, drop_last=True)

    def configure_optimizers(self):
        optimizer = {optimizer}
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        return optimizer

    def on_train_batch_start(self, batch, batch_idx):
        if self.samples_seen >= self.total_samples:
            self.trainer.should_stop = True
            return -1  # the scheduled samples are done
        _, lr = scheduled_phase(self.samples_seen, self.total_samples)
        for group, base_lr in zip(self.optimizers().optimizer.param_groups, self.base_lrs):
            group["lr"] = base_lr * lr / LEARNING_RATE

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.samples_seen += len(batch[-1])


def fit_with_batch_schedule(model, loss_fn, train_dataset):
    trainer = L.Trainer(max_epochs=int(SCHEDULE_EPOCHS) + 2, reload_dataloaders_every_n_epochs=1, devices=1,
                        accelerator="{accelerator}", precision="{precision}"{clip})
    trainer.fit(BatchScheduleModule(model, loss_fn, train_dataset))
    return trainer
'''


def _deepspeed(doc: dict) -> str:
    t = doc["training"]
    name = t["optimizer"]["name"]
    lr = t["learning_rate"]
    params: dict[str, Any] = {"lr": lr, "weight_decay": t["optimizer"]["weight_decay"]}
    if name == "adam":
        params["adam_w_mode"] = False  # DeepSpeed's "Adam" runs AdamW unless told otherwise
    elif name == "sgd":
        params["momentum"] = SGD_MOMENTUM  # not a DeepSpeed optimizer: built as torch.optim.SGD
    notes = _header(doc) + _factory_note(doc)
    warmup = {
        "warmup_min_lr": 0,
        "warmup_max_lr": lr,
        "warmup_num_steps": t["warmup_steps"],
        "warmup_type": "linear",
    }  # DeepSpeed's default warm-up is logarithmic
    scheduler: dict[str, Any] = {"type": "WarmupLR", "params": warmup}
    if t["schedule"] == "cosine":
        notes.append(
            "cosine decay after warm-up needs the run's total optimizer steps (epochs x steps per "
            "epoch), which the recommendation does not know: replace the scheduler with "
            '{"type": "WarmupCosineLR", "params": {"total_num_steps": N, "warmup_num_steps": '
            f'{t["warmup_steps"]}, "warmup_type": "linear", "cos_min_ratio": 0}}}}'
        )
    elif t["schedule"] == "linear":
        notes.append(
            "linear decay after warm-up needs the run's total optimizer steps: replace the scheduler with "
            '{"type": "WarmupDecayLR", "params": {"total_num_steps": N, "warmup_num_steps": '
            f'{t["warmup_steps"]}, "warmup_type": "linear", "warmup_max_lr": {lr!r}}}}}'
        )
    elif t["schedule"] == "wsd":
        notes.append(
            "DeepSpeed has no warm-up-stable-decay scheduler: pass lr_scheduler=LambdaLR(optimizer, "
            "lr_factor) to deepspeed.initialize, with lr_factor from `largestep export --format torch`"
        )
    if "factory" in t["optimizer"]:
        notes.append(
            f"the optimizer is the workload's factory: pass optimizer={t['optimizer']['factory']}(model, "
            f"{lr!r}) to deepspeed.initialize (this config then has no optimizer section)"
        )
    config = {
        "_comment": notes,
        "train_batch_size": t["batch_size"],
        "train_micro_batch_size_per_gpu": t["micro_batch_size"],
        "gradient_accumulation_steps": t["gradient_accumulation_steps"],
        "optimizer": {"type": {"adam": "Adam", "adamw": "AdamW", "sgd": "SGD"}.get(name), "params": params},
        "scheduler": scheduler,
        "bf16": {"enabled": t["dtype"] == "bf16"},
        "fp16": {"enabled": t["dtype"] == "fp16"},
    }
    if "factory" in t["optimizer"]:
        del config["optimizer"]
    if t.get("max_grad_norm") is not None:
        config["gradient_clipping"] = t.get("max_grad_norm")
    return json.dumps(config, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def _cli(doc: dict) -> str:
    t, w = doc["training"], doc["workload"]
    argv = ["largestep", "train", "--workload", str(w["spec"] or w["name"])]
    for key, value in w["options"].items():
        argv += ["--set", f"{key}={value}"]
    argv += [
        "--batch-size",
        str(t["batch_size"]),
        "--lr",
        repr(t["learning_rate"]),
        "--warmup-samples",
        str(t["warmup_samples"]),
    ]
    if t["epochs"] is not None:
        argv += ["--epochs", str(t["epochs"])]
    if t["gradient_accumulation_steps"] > 1:
        argv += ["--accumulate", str(t["gradient_accumulation_steps"])]
    if t["devices"] > 1:  # data-parallel ranks through torchrun; --batch-size stays the global batch
        argv += ["--nproc", str(t["devices"])]
    if t["schedule"] != "constant":
        argv += ["--schedule", t["schedule"]]
    if t["dtype"] != "fp32":
        argv += ["--dtype", t["dtype"]]
    if t.get("threads"):
        argv += ["--threads", str(t["threads"])]
    device = doc["measured_on"]["device"]["id"]
    if device and device != "auto" and t["devices"] == 1:  # one device id cannot name several
        argv += ["--device", str(device)]
    return _comment(_header(doc)) + " ".join(shlex.quote(a) for a in argv) + "\n"


_WRITERS = {
    "yaml": _yaml,
    "json": _json,
    "toml": _toml,
    "torch": _torch,
    "hf": _hf,
    "lightning": _lightning,
    "deepspeed": _deepspeed,
    "cli": _cli,
}
