"""Exports: data formats round-trip, every format keeps micro x accumulation x devices == global batch,
bad splits and formats are refused in one line, and the snippets are valid Python / JSON / shell."""

from __future__ import annotations

import ast
import json
import shlex

import pytest

from largestep.errors import UsageError
from largestep.plan.export import (
    DATA_FORMATS,
    FILE_SUFFIX,
    FORMATS,
    config_document,
    export_config,
    export_filename,
    parse_config,
    split_batch,
)

PYTHON_FORMATS = ("torch", "hf", "lightning")


def make_rec(**overrides) -> dict:
    rec = {
        "recommendation_id": "rec-1a2b3c4d",
        "created_at": "2026-11-23T19:20:00+00:00",
        "tool_version": "0.1.0",
        "workload": "fraud-gru",
        "workload_spec": "fraud-gru",
        "workload_options": {"samples": "20000"},
        "profile_id": "prof-0f0e0d0c",
        "noise_id": "nois-01020304",
        "device": {"id": "cuda:0", "name": "NVIDIA A100-SXM4-40GB", "kind": "cuda"},
        "dtype": "fp32",
        "batch_size": 1024,
        "learning_rate": 0.008,
        "warmup_steps": 20,
        "warmup_samples": 20480,
        "micro_batch_size": 1024,
        "gradient_accumulation_steps": 1,
        "world_size": 1,
        "rule": "linear",
        "optimizer": "adam",
        "weight_decay": 0.0,
        "epochs": 10,
        "schedule": "constant",
        "baseline": {"batch_size": 128, "learning_rate": 0.001},
        "noise_scale": 812.0,
        "predicted_speedup": {"throughput": 4.1, "time_to_target": 3.2},
        "experiments_per_gpu_day": {"baseline": 120.5, "recommended": 480.1},
        "candidates": [{"batch_size": 128}, {"batch_size": 1024}],
        "reasons": ["saturation"],
    }
    rec.update(overrides)
    return rec


def without_none(value):
    """TOML's convention: it has no null, so None values are left out of the text."""
    if isinstance(value, dict):
        return {k: without_none(v) for k, v in value.items() if v is not None}
    return value


# -- reading the outputs back: the split each format actually says --------------------------------


def _python_names(tree: ast.Module) -> dict:
    """Module-level constants `NAME = <literal>`."""
    names = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                names[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                pass
    return names


def _calls(tree: ast.Module, func_name: str) -> list[dict]:
    """Keyword arguments (constants resolved) of every call to `func_name` or `x.func_name`."""
    names = _python_names(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if called == func_name:
                kwargs = {}
                for kw in node.keywords:
                    if isinstance(kw.value, ast.Name) and kw.value.id in names:
                        kwargs[kw.arg] = names[kw.value.id]
                    else:
                        try:
                            kwargs[kw.arg] = ast.literal_eval(kw.value)
                        except ValueError:
                            kwargs[kw.arg] = kw.value
                found.append(kwargs)
    return found


def _one_call(tree, func_name) -> dict:
    calls = _calls(tree, func_name)
    assert len(calls) == 1, f"expected one {func_name}(...) call, found {len(calls)}"
    return calls[0]


def _cli_flags(text: str) -> dict:
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    assert len(lines) == 1, lines
    argv = shlex.split(lines[0])
    assert argv[:2] == ["largestep", "train"]
    flags: dict = {}
    rest = argv[2:]
    for flag, value in zip(rest[::2], rest[1::2]):
        assert flag.startswith("--"), argv
        flags.setdefault(flag, []).append(value)
    return flags


def split_in_output(text: str, fmt: str) -> dict:
    """{batch, micro, accumulation, devices} as the exported text states them."""
    if fmt in DATA_FORMATS:
        t = parse_config(text, fmt)["training"]
        return {
            "batch": t["batch_size"],
            "micro": t["micro_batch_size"],
            "accumulation": t["gradient_accumulation_steps"],
            "devices": t["devices"],
        }
    if fmt == "deepspeed":
        cfg = json.loads(text)
        micro, accumulation = cfg["train_micro_batch_size_per_gpu"], cfg["gradient_accumulation_steps"]
        # DeepSpeed infers the device count from the launcher: train_batch_size / (micro x accumulation)
        assert cfg["train_batch_size"] % (micro * accumulation) == 0
        return {
            "batch": cfg["train_batch_size"],
            "micro": micro,
            "accumulation": accumulation,
            "devices": cfg["train_batch_size"] // (micro * accumulation),
        }
    if fmt == "cli":
        flags = _cli_flags(text)
        batch = int(flags["--batch-size"][0])
        accumulation = int(flags.get("--accumulate", ["1"])[0])
        devices = int(flags.get("--nproc", ["1"])[0])
        assert batch % (accumulation * devices) == 0
        return {
            "batch": batch,
            "micro": batch // (accumulation * devices),
            "accumulation": accumulation,
            "devices": devices,
        }
    tree = ast.parse(text)
    names = _python_names(tree)
    if fmt == "torch":
        loader = _one_call(tree, "DataLoader")
        return {
            "batch": names["GLOBAL_BATCH"],
            "micro": loader["batch_size"],
            "accumulation": names["ACCUMULATION"],
            "devices": names["DEVICES"],
        }
    if fmt == "hf":
        args = _one_call(tree, "TrainingArguments")
        return {
            "batch": names["GLOBAL_BATCH"],
            "micro": args["per_device_train_batch_size"],
            "accumulation": args["gradient_accumulation_steps"],
            "devices": names["DEVICES"],
        }
    if fmt == "lightning":
        trainer = _one_call(tree, "Trainer")
        loader = _one_call(tree, "DataLoader")
        return {
            "batch": names["GLOBAL_BATCH"],
            "micro": loader["batch_size"],
            "accumulation": trainer["accumulate_grad_batches"],
            "devices": trainer["devices"],
        }
    raise AssertionError(fmt)


# -- round trips ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_json_and_yaml_round_trip_exactly(fmt):
    rec = make_rec()
    assert parse_config(export_config(rec, fmt), fmt) == config_document(rec)


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_round_trip_keeps_none_as_null(fmt):
    rec = make_rec(noise_scale=None, noise_id=None, epochs=None)
    doc = parse_config(export_config(rec, fmt), fmt)
    assert doc == config_document(rec)
    assert doc["scaling"]["noise_scale"] is None and doc["training"]["epochs"] is None


def test_toml_round_trip_drops_none_keys():
    """TOML has no null: None values are omitted, so parse_config(toml) lacks exactly those keys."""
    rec = make_rec(noise_scale=None, noise_id=None)
    doc = parse_config(export_config(rec, "toml"), "toml")
    assert doc == without_none(config_document(rec))
    assert "noise_scale" not in doc["scaling"] and "noise_id" not in doc["measured_on"]


def test_toml_round_trip_is_exact_when_nothing_is_none():
    rec = make_rec()
    assert without_none(config_document(rec)) == config_document(rec)
    assert parse_config(export_config(rec, "toml"), "toml") == config_document(rec)


@pytest.mark.parametrize("fmt", DATA_FORMATS)
def test_round_trip_of_a_re_split_document(fmt):
    rec = make_rec(noise_id=None)
    expected = config_document(rec, devices=4, micro_batch=64)
    if fmt == "toml":
        expected = without_none(expected)
    assert parse_config(export_config(rec, fmt, devices=4, micro_batch=64), fmt) == expected


def test_document_layout_carries_what_a_reader_needs():
    doc = config_document(make_rec(optimizer="sgd", weight_decay=5e-4))
    assert list(doc) == ["largestep", "workload", "training", "scaling", "measured_on", "prediction"]
    assert doc["largestep"] == {
        "version": "0.1.0",
        "recommendation_id": "rec-1a2b3c4d",
        "created_at": "2026-11-23T19:20:00+00:00",
    }
    assert doc["workload"] == {"name": "fraud-gru", "spec": "fraud-gru", "options": {"samples": "20000"}}
    assert doc["training"]["optimizer"] == {"name": "sgd", "weight_decay": 5e-4, "momentum": 0.9}
    assert doc["scaling"]["lr_per_sample"] == pytest.approx(0.008 / 1024)
    assert doc["scaling"]["baseline"] == {"batch_size": 128, "learning_rate": 0.001}
    assert doc["measured_on"] == {
        "profile_id": "prof-0f0e0d0c",
        "noise_id": "nois-01020304",
        "device": {"id": "cuda:0", "name": "NVIDIA A100-SXM4-40GB", "kind": "cuda"},
    }
    assert doc["prediction"]["speedup_time_to_target"] == 3.2
    assert "momentum" not in config_document(make_rec())["training"]["optimizer"]


def test_yaml_keeps_the_timestamp_a_string():
    text = export_config(make_rec(), "yaml")
    assert parse_config(text, "yaml")["largestep"]["created_at"] == "2026-11-23T19:20:00+00:00"


# -- the global batch identity, in every format ----------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_keeps_the_recommended_split(fmt):
    got = split_in_output(export_config(make_rec(), fmt), fmt)
    assert got == {"batch": 1024, "micro": 1024, "accumulation": 1, "devices": 1}
    assert got["micro"] * got["accumulation"] * got["devices"] == got["batch"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_keeps_a_re_split_over_four_devices(fmt):
    got = split_in_output(export_config(make_rec(), fmt, devices=4, micro_batch=64), fmt)
    assert got == {"batch": 1024, "micro": 64, "accumulation": 4, "devices": 4}
    assert got["micro"] * got["accumulation"] * got["devices"] == got["batch"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_keeps_a_recommendation_that_already_accumulates(fmt):
    rec = make_rec(micro_batch_size=256, gradient_accumulation_steps=4)
    got = split_in_output(export_config(rec, fmt), fmt)
    assert got == {"batch": 1024, "micro": 256, "accumulation": 4, "devices": 1}


def test_re_split_keeps_the_learning_rate_of_the_global_batch():
    for fmt in FORMATS:
        text = export_config(make_rec(), fmt, devices=4, micro_batch=64)
        assert "0.008" in text, fmt


def test_split_batch():
    assert split_batch(1024) == (1024, 1, 1)
    assert split_batch(1024, 4) == (256, 1, 4)
    assert split_batch(1024, 4, 64) == (64, 4, 4)
    assert split_batch(1024, 1, 1024) == (1024, 1, 1)


def test_more_devices_never_raise_the_micro_batch_above_the_recommended_one():
    # the recommendation accumulates 4 x 256 because 1024 did not fit; on 2 devices each takes 512,
    # still 2 x 256 per device
    rec = make_rec(micro_batch_size=256, gradient_accumulation_steps=4)
    t = config_document(rec, devices=2)["training"]
    assert (t["micro_batch_size"], t["gradient_accumulation_steps"], t["devices"]) == (256, 2, 2)
    t = config_document(make_rec(), devices=8)["training"]
    assert (t["micro_batch_size"], t["gradient_accumulation_steps"], t["devices"]) == (128, 1, 8)


# -- refusals -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "devices, micro, expected",
    [
        (3, None, "1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024"),  # 3 does not divide 1024
        (4, 100, "1, 2, 4, 8, 16, 32, 64, 128, 256"),  # valid micro-batches per device
        (1, 2048, "1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024"),
        (0, None, "positive integer"),
        (-2, None, "positive integer"),
        (1, 0, "positive integer"),
        (2.5, None, "positive integer"),
        (True, None, "positive integer"),
        (2048, None, "1, 2, 4"),
    ],
)
def test_invalid_splits_are_refused_in_one_line_naming_what_works(devices, micro, expected):
    with pytest.raises(UsageError) as info:
        export_config(make_rec(), "yaml", devices=devices, micro_batch=micro)
    message = str(info.value)
    assert "\n" not in message
    assert expected in message


def test_invalid_split_message_names_the_flag_and_the_valid_micro_batches():
    with pytest.raises(
        UsageError,
        match=r"^--micro-batch 100 does not divide .*use one of 1, 2, 4, 8, 16, 32, 64, "
        r"128, 256$",
    ):
        split_batch(1024, 4, 100)
    with pytest.raises(UsageError, match=r"^--devices 3 does not divide the global batch 1024"):
        split_batch(1024, 3)


def test_an_inconsistent_recommendation_is_refused():
    with pytest.raises(UsageError, match="inconsistent"):
        export_config(make_rec(micro_batch_size=256, gradient_accumulation_steps=2), "yaml")


@pytest.mark.parametrize("fmt", ["xml", "", "pytorch-lightning", "YAMLL"])
def test_unknown_format_is_refused_listing_the_formats(fmt):
    with pytest.raises(UsageError) as info:
        export_config(make_rec(), fmt)
    message = str(info.value)
    assert "\n" not in message
    assert ", ".join(FORMATS) in message


def test_parse_config_refuses_snippets_and_bad_text_in_one_line():
    with pytest.raises(UsageError, match="unknown format"):
        parse_config("{}", "torch")
    for fmt, text in [("json", "{not json"), ("yaml", "a: [1, 2"), ("toml", "a = ")]:
        with pytest.raises(UsageError) as info:
            parse_config(text, fmt)
        assert "\n" not in str(info.value)
    with pytest.raises(UsageError, match="no mapping"):
        parse_config("- 1\n- 2\n", "yaml")


def test_format_names_are_case_insensitive_and_yml_is_yaml():
    assert export_config(make_rec(), "YAML") == export_config(make_rec(), "yml") == export_config(make_rec(), "yaml")


def test_an_unknown_optimizer_is_refused():
    with pytest.raises(UsageError, match="adam, adamw, sgd"):
        export_config(make_rec(optimizer="lion"), "torch")


# -- the snippets ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", PYTHON_FORMATS)
@pytest.mark.parametrize(
    "variant",
    [
        {},
        {"optimizer": "sgd", "schedule": "cosine"},
        {"optimizer": "adamw", "weight_decay": 0.01, "dtype": "bf16"},
        {"optimizer": "adam", "weight_decay": 1e-4, "dtype": "fp16", "epochs": None},
    ],
)
def test_python_snippets_are_valid_python(fmt, variant):
    for split in ({}, {"devices": 4, "micro_batch": 64}):
        ast.parse(export_config(make_rec(**variant), fmt, **split))


def test_torch_snippet_accumulates_only_when_asked():
    tree = ast.parse(export_config(make_rec(), "torch", devices=4, micro_batch=64))
    names = _python_names(tree)
    assert names["ACCUMULATION"] == 4
    text = export_config(make_rec(), "torch", devices=4, micro_batch=64)
    assert "(loss / ACCUMULATION).backward()" in text
    assert "% ACCUMULATION" in text
    assert "DistributedSampler(train_dataset)" in text and "DistributedDataParallel" in text
    single = export_config(make_rec(), "torch")
    assert "DistributedSampler" not in single


@pytest.mark.slow
def test_torch_snippet_runs_and_steps_once_per_global_batch():
    """Execute the exported loop on a tiny model: one optimizer step per ACCUMULATION micro-batches."""
    import torch
    from torch.utils.data import TensorDataset

    rec = make_rec(
        batch_size=32,
        micro_batch_size=32,
        learning_rate=0.01,
        warmup_steps=2,
        warmup_samples=64,
        epochs=1,
        optimizer="sgd",
        schedule="cosine",
    )
    namespace: dict = {}
    exec(compile(export_config(rec, "torch", micro_batch=8), "<torch export>", "exec"), namespace)
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    data = TensorDataset(torch.randn(96, 3), torch.randint(0, 2, (96,)))
    steps = []
    original = torch.optim.SGD.step

    def counting_step(self, *args, **kwargs):
        steps.append(self.param_groups[0]["momentum"])
        return original(self, *args, **kwargs)

    torch.optim.SGD.step = counting_step
    try:
        namespace["train"](model, data, torch.nn.functional.cross_entropy)
    finally:
        torch.optim.SGD.step = original
    assert steps == [0.9, 0.9, 0.9]  # 96 samples / global batch 32, momentum 0.9


@pytest.mark.parametrize("fmt", ["torch", "lightning"])
def test_sgd_gets_momentum_in_torch_and_lightning(fmt):
    tree = ast.parse(export_config(make_rec(optimizer="sgd"), fmt))
    (sgd,) = _calls(tree, "SGD")
    assert sgd["momentum"] == 0.9
    assert sgd["lr"] == 0.008


def test_sgd_gets_momentum_in_deepspeed():
    cfg = json.loads(export_config(make_rec(optimizer="sgd", weight_decay=5e-4), "deepspeed"))
    assert cfg["optimizer"] == {"type": "SGD", "params": {"lr": 0.008, "weight_decay": 5e-4, "momentum": 0.9}}


def test_sgd_in_hf_passes_an_explicit_optimizer_with_momentum():
    tree = ast.parse(export_config(make_rec(optimizer="sgd"), "hf"))
    assert _one_call(tree, "TrainingArguments")["optim"] == "sgd"
    (sgd,) = _calls(tree, "SGD")
    assert sgd["momentum"] == 0.9
    assert "optimizers" in _one_call(tree, "Trainer")


def test_adam_and_adamw_map_to_the_right_optimizers():
    for name, torch_cls, ds_type in [("adam", "Adam", "Adam"), ("adamw", "AdamW", "AdamW")]:
        rec = make_rec(optimizer=name, weight_decay=0.0)
        assert len(_calls(ast.parse(export_config(rec, "torch")), torch_cls)) == 1
        cfg = json.loads(export_config(rec, "deepspeed"))
        assert cfg["optimizer"]["type"] == ds_type
        hf = export_config(rec, "hf")
        args = _one_call(ast.parse(hf), "TrainingArguments")
        assert args["optim"] == "adamw_torch"
    # DeepSpeed's "Adam" runs AdamW unless adam_w_mode is false
    assert json.loads(export_config(make_rec(), "deepspeed"))["optimizer"]["params"]["adam_w_mode"] is False
    hf = export_config(make_rec(optimizer="adam"), "hf")
    assert _one_call(ast.parse(hf), "TrainingArguments")["weight_decay"] == 0.0
    assert "AdamW with weight_decay=0 is Adam" in hf


def test_hf_arguments():
    args = _one_call(ast.parse(export_config(make_rec(dtype="bf16"), "hf")), "TrainingArguments")
    assert args["learning_rate"] == 0.008
    assert args["warmup_steps"] == 20
    assert args["lr_scheduler_type"] == "constant_with_warmup"
    assert args["num_train_epochs"] == 10
    assert (args["bf16"], args["fp16"]) == (True, False)
    cosine = _one_call(ast.parse(export_config(make_rec(schedule="cosine"), "hf")), "TrainingArguments")
    assert cosine["lr_scheduler_type"] == "cosine"
    text = export_config(make_rec(), "hf", devices=4, micro_batch=64)
    assert "global batch 1024 = per_device_train_batch_size 64 x gradient_accumulation_steps 4 x 4 devices" in text


def test_lightning_scheduler_steps_per_optimizer_step_and_precision():
    text = export_config(make_rec(dtype="bf16"), "lightning")
    assert '"interval": "step"' in text
    assert "def configure_optimizers(self):" in text
    assert len(_calls(ast.parse(text), "LambdaLR")) == 1
    trainer = _one_call(ast.parse(text), "Trainer")
    assert trainer["precision"] == "bf16-mixed"
    assert trainer["accelerator"] == "gpu"
    assert (
        _one_call(ast.parse(export_config(make_rec(dtype="fp16"), "lightning")), "Trainer")["precision"] == "16-mixed"
    )


@pytest.mark.parametrize("fmt", ["torch", "lightning"])
def test_cosine_and_constant_schedules_differ(fmt):
    constant = export_config(make_rec(schedule="constant"), fmt)
    cosine = export_config(make_rec(schedule="cosine"), fmt)
    assert "math.cos" in cosine and "math.cos" not in constant
    for text, total in ((constant, False), (cosine, True)):
        factor = _load_lr_factor(text)
        args = (1000,) if total else ()
        assert factor(0, *args) == pytest.approx(1 / 20)  # linear warm-up over 20 steps
        assert factor(19, *args) == pytest.approx(1.0)
        if total:
            assert factor(510, *args) == pytest.approx(0.5)
            assert factor(1000, *args) == pytest.approx(0.0)
        else:
            assert factor(999, *args) == 1.0


def _load_lr_factor(text: str):
    """The snippet's lr_factor with its constants, without importing Lightning or building anything."""
    tree = ast.parse(text)
    keep = [
        node
        for node in tree.body
        if isinstance(node, ast.Assign)
        and isinstance(node.targets[0], ast.Name)
        and node.targets[0].id.isupper()
        or isinstance(node, ast.FunctionDef)
        and node.name == "lr_factor"
    ]
    namespace: dict = {"math": __import__("math")}
    exec(compile(ast.Module(body=keep, type_ignores=[]), "<lr_factor>", "exec"), namespace)
    return namespace["lr_factor"]


def test_deepspeed_config():
    cfg = json.loads(export_config(make_rec(dtype="fp16"), "deepspeed", devices=4, micro_batch=64))
    assert cfg["train_batch_size"] == 1024
    assert cfg["train_micro_batch_size_per_gpu"] * cfg["gradient_accumulation_steps"] * 4 == 1024
    assert cfg["scheduler"] == {
        "type": "WarmupLR",
        "params": {"warmup_min_lr": 0, "warmup_max_lr": 0.008, "warmup_num_steps": 20, "warmup_type": "linear"},
    }
    assert cfg["fp16"] == {"enabled": True} and cfg["bf16"] == {"enabled": False}
    assert any("rec-1a2b3c4d" in line for line in cfg["_comment"])
    cosine = json.loads(export_config(make_rec(schedule="cosine"), "deepspeed"))
    assert any("WarmupCosineLR" in line for line in cosine["_comment"])


def test_cli_line_reproduces_the_run():
    flags = _cli_flags(
        export_config(make_rec(workload_options={"samples": "20000", "note": "a b; rm -rf /"}, dtype="bf16"), "cli")
    )
    assert flags["--workload"] == ["fraud-gru"]
    assert flags["--set"] == ["samples=20000", "note=a b; rm -rf /"]  # quoted: one argument each
    assert flags["--lr"] == ["0.008"]
    assert flags["--warmup-samples"] == ["20480"]
    assert flags["--epochs"] == ["10"]
    assert flags["--dtype"] == ["bf16"]
    assert flags["--device"] == ["cuda:0"]
    assert "--accumulate" not in flags
    plain = _cli_flags(export_config(make_rec(epochs=None), "cli"))
    assert "--epochs" not in plain and "--dtype" not in plain
    assert _cli_flags(export_config(make_rec(schedule="cosine"), "cli"))["--schedule"] == ["cosine"]


def test_workload_paths_with_spaces_survive_the_shell():
    spec = "/home/me/my models/net.py:make"
    flags = _cli_flags(export_config(make_rec(workload_spec=spec), "cli"))
    assert flags["--workload"] == [spec]


# -- the header and None -------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", [f for f in FORMATS if f != "json"])
def test_every_snippet_starts_with_the_provenance_header(fmt):
    text = export_config(make_rec(), fmt)
    head = "\n".join(json.loads(text)["_comment"]) if fmt == "deepspeed" else text.split("\n\n")[0]
    if fmt != "deepspeed":
        assert text.startswith("# generated by largestep ")
    for fact in ("rec-1a2b3c4d", "2026-11-23T19:20:00+00:00", "NVIDIA A100-SXM4-40GB", "prof-0f0e0d0c", "rule: linear"):
        assert fact in head, (fmt, fact)


@pytest.mark.parametrize("fmt", PYTHON_FORMATS + ("cli", "yaml", "toml"))
def test_a_hostile_device_name_cannot_break_out_of_the_comment(fmt):
    rec = make_rec(device={"id": "cpu", "name": "evil\nimport os; os.system('x')\r\n", "kind": "cpu"})
    text = export_config(rec, fmt)
    assert "\nimport os" not in text
    if fmt in PYTHON_FORMATS:
        ast.parse(text)


@pytest.mark.parametrize("fmt", FORMATS)
def test_no_noise_scale_is_handled_in_every_format(fmt):
    rec = make_rec(noise_scale=None, noise_id=None, predicted_speedup={"throughput": 4.1, "time_to_target": None})
    text = export_config(rec, fmt)
    if fmt in DATA_FORMATS:
        doc = parse_config(text, fmt)
        assert doc["scaling"].get("noise_scale") is None
        assert doc["scaling"]["assumed_perfect_scaling"] is True
    elif fmt == "deepspeed":
        assert any("not estimated" in line for line in json.loads(text)["_comment"])
    else:
        assert "noise scale: not estimated" in text
        if fmt in PYTHON_FORMATS:
            ast.parse(text)


def test_non_finite_numbers_become_none_so_json_stays_valid():
    doc = parse_config(export_config(make_rec(noise_scale=float("inf")), "json"), "json")
    assert doc["scaling"]["noise_scale"] is None


def test_file_suffixes_and_names():
    assert set(FILE_SUFFIX) == set(FORMATS)
    assert export_filename(make_rec(), "hf") == "largestep-rec-1a2b3c4d-hf.py"
    assert export_filename(make_rec(), "deepspeed").endswith(".json")
    assert export_filename(make_rec(), "cli").endswith(".sh")


# -- on the first GPUs: what the snippets do where more than one device is visible ------------------------


class _TrainingArguments:
    """transformers.TrainingArguments as far as the batch goes: one process driving ``n_gpu`` GPUs runs
    DataParallel, so its train_batch_size is the per-device batch times n_gpu."""

    n_gpu, world_size = 1, 1

    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)

    @property
    def train_batch_size(self) -> int:
        return self.per_device_train_batch_size * max(1, self.n_gpu)


def _hf_snippet(monkeypatch, n_gpu: int, world_size: int, **split) -> dict:
    import sys
    import types

    fake = types.ModuleType("transformers")
    fake.TrainingArguments = type(
        "TrainingArguments", (_TrainingArguments,), {"n_gpu": n_gpu, "world_size": world_size}
    )
    fake.Trainer = lambda **kwargs: kwargs
    monkeypatch.setitem(sys.modules, "transformers", fake)
    namespace: dict = {}
    exec(compile(export_config(make_rec(), "hf", **split), "<hf export>", "exec"), namespace)
    return namespace


def test_hf_snippet_refuses_one_process_driving_several_gpus_with_dataparallel(monkeypatch):
    # the recommendation is for 1 device; one process seeing 4 GPUs would step on 4 x 1024 samples
    namespace = _hf_snippet(monkeypatch, n_gpu=4, world_size=1)
    with pytest.raises(AssertionError, match="step on 4096 samples"):
        namespace["make_trainer"](model=None, train_dataset=None)
    # launched as the snippet says (torchrun, one GPU a process), the batch holds
    _hf_snippet(monkeypatch, n_gpu=1, world_size=4, devices=4, micro_batch=256)["make_trainer"](None, None)


@pytest.mark.slow
def test_torch_snippet_on_several_gpus_uses_local_rank_set_device_device_ids_and_no_sync(monkeypatch):
    """Run the 4-device snippet as its rank on LOCAL_RANK 1 would (a fake CUDA, a 1-process gloo group)."""
    import socket

    import torch
    from fake_nvml import UUID_A, UUID_B, FakeAllocator, cuda_on_cpu, cuda_properties, install_fake_cuda
    from torch.utils.data import TensorDataset

    gpu = install_fake_cuda(monkeypatch, [cuda_properties(UUID_A), cuda_properties(UUID_B)])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for name, value in {
        "LOCAL_RANK": "1",
        "RANK": "0",
        "WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }.items():
        monkeypatch.setenv(name, value)
    backends, device_ids, no_sync_entered = [], [], []
    real_init = torch.distributed.init_process_group

    def init_process_group(backend, **kwargs):  # NCCL needs a real GPU: gloo carries the same calls here
        backends.append(backend)
        real_init("gloo", **kwargs)

    class DDP(torch.nn.parallel.DistributedDataParallel):
        def __init__(self, module, **kwargs):
            device_ids.append(kwargs.pop("device_ids", None))
            super().__init__(module, **kwargs)  # the module is on the CPU here

        def no_sync(self):
            no_sync_entered.append(True)
            return super().no_sync()

    monkeypatch.setattr(torch.distributed, "init_process_group", init_process_group)
    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", DDP)
    rec = make_rec(
        batch_size=64,
        micro_batch_size=64,
        learning_rate=0.01,
        warmup_steps=1,
        warmup_samples=64,
        epochs=1,
        optimizer="sgd",
    )
    namespace: dict = {}
    exec(compile(export_config(rec, "torch", devices=4, micro_batch=8), "<torch export>", "exec"), namespace)
    data = TensorDataset(torch.randn(128, 3), torch.randint(0, 2, (128,)))
    try:
        with cuda_on_cpu(gpu, FakeAllocator(fixed_bytes=0, bytes_per_sample=0)):
            namespace["train"](torch.nn.Linear(3, 2), data, torch.nn.functional.cross_entropy)
    finally:
        torch.distributed.destroy_process_group()
    assert gpu["current"] == 1 and backends == ["nccl"] and device_ids == [[1]]
    # 128 samples / 8 a micro-batch = 16 micro-batches, ACCUMULATION 2: 8 of them only accumulate
    assert len(no_sync_entered) == 8


# -- a batch schedule ------------------------------------------------------------------------------


def scheduled_rec(**overrides) -> dict:
    """make_rec with a two-phase batch schedule planned from a noise curve."""
    plan = {
        "curve_id": "nois-0a0b0c0d",
        "spec": "8:0,32:0.5",
        "epochs": 2.0,
        "samples_ratio": 1.3,
        "phases": [
            {
                "start_fraction": 0.0,
                "batch_size": 8,
                "learning_rate": 0.01,
                "warmup_samples": 64,
                "baseline_fraction": 0.0,
                "noise_scale": 20.0,
                "step_time_s": 0.01,
            },
            {
                "start_fraction": 0.5,
                "batch_size": 32,
                "learning_rate": 0.04,
                "warmup_samples": 64,
                "baseline_fraction": 0.4,
                "noise_scale": 300.0,
                "step_time_s": 0.012,
            },
        ],
        "predicted_speedup": {"over_baseline": 2.5, "over_best_fixed": 1.2},
        "best_fixed": {"batch_size": 16, "speedup_over_baseline": 2.1},
    }
    return make_rec(
        batch_size=16,
        learning_rate=0.02,
        micro_batch_size=16,
        optimizer="sgd",
        baseline={"batch_size": 8, "learning_rate": 0.01},
        batch_schedule=plan,
        **overrides,
    )


@pytest.mark.parametrize("fmt", DATA_FORMATS)
def test_data_formats_carry_the_batch_schedule_as_a_list_of_phases(fmt):
    document = parse_config(export_config(scheduled_rec(), fmt), fmt)
    section = document["batch_schedule"]
    assert section["spec"] == "8:0,32:0.5"
    assert [(p["start_fraction"], p["batch_size"], p["learning_rate"]) for p in section["phases"]] == [
        (0.0, 8, 0.01),
        (0.5, 32, 0.04),
    ]
    assert section["prediction"] == {
        "speedup_over_baseline": 2.5,
        "speedup_over_best_fixed": 1.2,
        "best_fixed_batch": 16,
    }
    assert "batch_schedule" not in parse_config(export_config(make_rec(), fmt), fmt)


def test_lightning_export_switches_the_batch_through_a_loader_per_epoch():
    text = export_config(scheduled_rec(), "lightning")
    tree = ast.parse(text)
    classes = {node.name for node in ast.walk(tree) if isinstance(node, ast.ClassDef)}
    assert {"LargestepModule", "BatchScheduleModule"} <= classes
    assert "reload_dataloaders_every_n_epochs=1" in text and "BATCH_SCHEDULE = [" in text
    assert "BatchScheduleModule" not in export_config(make_rec(), "lightning")


@pytest.mark.slow
def test_torch_export_trains_with_the_batch_growing_and_the_rate_ramped():
    import torch
    from torch.utils.data import TensorDataset

    namespace: dict = {}
    exec(compile(export_config(scheduled_rec(), "torch"), "<torch export>", "exec"), namespace)
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    data = TensorDataset(torch.randn(100, 3), torch.randint(0, 2, (100,)))
    seen = []  # (batch, lr) of every optimizer step
    original = torch.optim.SGD.step

    def recording_step(self, *args, **kwargs):
        seen.append((len(last_input[0]), self.param_groups[0]["lr"]))
        return original(self, *args, **kwargs)

    last_input = [None]
    model.register_forward_pre_hook(lambda module, inputs: last_input.__setitem__(0, inputs[0]))
    torch.optim.SGD.step = recording_step
    try:
        namespace["train_with_batch_schedule"](model, data, torch.nn.functional.cross_entropy)
    finally:
        torch.optim.SGD.step = original
    # 2 epochs of 100 samples: batches of 8 until 100 samples are seen (13 steps), then of 32 to 200
    assert [b for b, _ in seen] == [8] * 13 + [32] * 3
    # the rate ramps over 64 samples: from 0 in the first phase, from 0.01 to 0.04 after the increase
    lrs = [lr for _, lr in seen]
    assert lrs[:2] == pytest.approx([0.01 * 8 / 64, 0.01 * 16 / 64]) and lrs[12] == pytest.approx(0.01)
    assert lrs[13:] == pytest.approx([0.01 + 0.03 * (4 + 32) / 64, 0.04, 0.04])
