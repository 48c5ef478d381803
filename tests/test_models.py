"""Real training code's shapes: Datasets through a DataLoader, dict batches, models that return their
own loss, optimizer factories with parameter groups, clipping, schedules in samples; and the one-line
refusal of each mistake the contract names."""

from __future__ import annotations

import gc
import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from largestep.cli import main
from largestep.errors import WorkloadError
from largestep.measure import noise as noise_module
from largestep.measure.noise import estimate_noise
from largestep.measure.profiler import ProfileConfig, block_steps_for, run_profile
from largestep.measure.train import NullLog, TrainConfig, compile_before_clock, evaluate, train

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))

import model_workloads  # noqa: E402
import tiny_workload  # noqa: E402

CPU = torch.device("cpu")
DICT_SPEC = f"{TESTS / 'model_workloads.py'}:make_dict"


@pytest.mark.slow
def test_a_dataset_of_tuples_trains_exactly_as_the_same_tensors_do():
    # the same seeded order and the same arithmetic: the loader path changes nothing but where data comes from
    config = TrainConfig(batch_size=64, lr=1e-2, epochs=1, seed=3)
    from_tensors = train(tiny_workload.make(), CPU, config)
    from_dataset = train(model_workloads.make_tuples(), CPU, config)
    assert from_dataset.steps == from_tensors.steps == 2048 // 64
    assert from_dataset.final_val_loss == pytest.approx(from_tensors.final_val_loss, rel=1e-5)
    assert from_dataset.final_metrics["accuracy"] == pytest.approx(from_tensors.final_metrics["accuracy"])


@pytest.mark.slow
def test_dict_batches_and_the_models_own_loss_learn_and_are_scored():
    workload = model_workloads.make_dict()
    torch.manual_seed(0)
    untrained = evaluate(workload.model(), workload, CPU, "fp32")
    result = train(workload, CPU, TrainConfig(batch_size=32, lr=5e-3, epochs=2))
    assert result.final_val_loss < 0.6 * untrained[0]
    # accuracy from out["logits"] against the batch's "labels"
    assert result.final_metrics["accuracy"] > 0.85 > untrained[1]["accuracy"] - 0.2


def test_each_parameter_group_follows_its_own_rate_through_warmup_and_schedule():
    made = []

    def keep(model, lr):
        made.append(model_workloads.two_groups(model, lr))
        return made[-1]

    workload = replace(model_workloads.make_dict(), optimizer=keep, schedule="linear")
    seen = []

    class Rates(NullLog):
        def logged(self, rows):
            groups = made[-1].param_groups
            seen.append((rows[0]["lr"], groups[0]["lr"], groups[1]["lr"]))

    train(
        workload, CPU, TrainConfig(batch_size=64, lr=4e-3, epochs=1, warmup_samples=256, log_every_steps=4), log=Rates()
    )
    assert len(seen) >= 5
    for run_lr, body, head in seen:
        assert body == pytest.approx(run_lr) and head == pytest.approx(10 * run_lr)  # scaled together
    rates = [body for _, body, _ in seen]
    assert max(rates) <= 4e-3 and rates[-1] < 0.2 * max(rates)  # linear decay towards zero at the end


def test_clipping_bounds_every_update_by_the_global_norm():
    def moved(max_grad_norm):
        workload = model_workloads.make_dict(max_grad_norm=max_grad_norm)
        workload = replace(workload, optimizer="sgd", warmup_samples=0)
        torch.manual_seed(0)
        start = torch.cat([p.detach().flatten() for p in workload.model().parameters()])
        path = TESTS.parent / ".pytest-clip.pt"
        try:
            train(workload, CPU, TrainConfig(batch_size=32, lr=0.5, max_steps=5, seed=0), save_to=str(path))
            end = torch.cat([v.flatten() for v in torch.load(path).values()])
        finally:
            path.unlink(missing_ok=True)
        return float((end - start).norm())

    # SGD with momentum 0.9: after 5 steps each clipped to norm 1e-3, at most lr * 1e-3 * (1+1.9+2.71+3.44+4.1)
    assert moved(1e-3) <= 0.5 * 1e-3 * 13.2
    assert moved(0.0) > 10 * moved(1e-3)


BROKEN = [
    ("shape", "items change shape or type"),
    ("no_loss", "carries no loss"),
    ("no_labels", "no 'labels' key"),
    ("schedule", "schedule must be one of"),
    ("optimizer", "not a torch.optim.Optimizer"),
    ("grad_norm", "max_grad_norm must be a finite"),
]


@pytest.mark.parametrize("broken, says", BROKEN, ids=[b for b, _ in BROKEN])
def test_each_mistake_is_one_line_exit_2_and_stores_nothing(capsys, home, broken, says):
    code = main(["train", "--workload", DICT_SPEC, "--set", f"broken={broken}", "--batch-size", "32", "--lr", "0.01"])
    out, err = capsys.readouterr()
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("largestep: error: "), err
    assert says in err and "Traceback" not in out + err
    assert not home.root.exists() or not any((home.root / "jobs").glob("*"))


def test_a_workload_mixing_tensors_and_a_dataset_is_refused():
    base = model_workloads.make_tuples()
    with pytest.raises(WorkloadError, match="both be tensor tuples or both be Datasets"):
        replace(base, val=tiny_workload.make().val)


def test_an_unknown_schedule_in_a_train_config_is_refused_before_training():
    with pytest.raises(Exception, match="constant, cosine, linear, wsd"):
        train(model_workloads.make_dict(), CPU, TrainConfig(batch_size=32, lr=1e-2, schedule="step"))


def test_workloads_without_the_new_fields_keep_their_fast_path():
    workload = tiny_workload.make()
    assert not workload.uses_dataset and workload.loss is not None and math.isfinite(workload.baseline_lr)
    assert workload.optimizer_name == "adam"
    assert model_workloads.make_dict().optimizer_name == "factory:two_groups"


# -- the profiler and the noise scale on Dataset workloads ------------------------------------------

QUICK = ProfileConfig(batch_sizes=(32, 128), warmup_steps=1, min_steps=5, min_seconds=0.1)


@pytest.mark.slow
def test_a_slow_loader_is_reported_input_bound_with_its_compute_time():
    result = run_profile(model_workloads.make_slow_loader(delay_ms=2), CPU, replace(QUICK, batch_sizes=(16, 32)))
    assert [p.status for p in result.points] == ["ok", "ok"]
    for point in result.points:
        # 2 ms an item: at least 32 ms a batch of 16 to read, some thirty times the tiny model's step
        assert point.median_s >= point.batch_size * 2e-3
        assert point.compute_median_s < 0.5 * point.median_s
        assert point.input_bound
        assert point.samples_per_s == pytest.approx(point.batch_size / point.estimate_s)


@pytest.mark.slow
def test_a_model_heavier_than_its_loader_spends_its_step_computing():
    result = run_profile(model_workloads.make_heavy_model(), CPU, replace(QUICK, batch_sizes=(128,), min_steps=8))
    (point,) = result.points
    assert point.status == "ok" and point.compute_median_s is not None
    # the in-memory loader costs well under a millisecond against a step of tens: on a quiet machine the two
    # medians agree; on this shared one, other jobs' bursts make single steps up to twice as slow
    assert point.compute_median_s > 0.5 * point.median_s, (point.median_s, point.compute_median_s)


@pytest.fixture
def blocks_of_8_steps_on_one_thread(monkeypatch):
    """Timed blocks of 8 steps whatever this machine's step time (a busy machine's slow steps would
    shorten them), on one thread (a pool of threads on a shared machine waits for whichever one was
    descheduled)."""
    from largestep.measure import profiler

    monkeypatch.setattr(profiler, "BLOCK_SECONDS", 60.0)
    monkeypatch.setattr(profiler, "MAX_BLOCK_STEPS", 8)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_a_batch_read_slowly_now_and_then_costs_every_step_its_share(blocks_of_8_steps_on_one_thread):
    # one batch in four waits 20 ms (a new shard opened): training pays 5 ms a step for it on average, which
    # the median of single steps, all but one in four fast, would leave out
    every, delay_s = 4, 0.02
    workload = model_workloads.make_shard_reads(every, delay_s * 1e3)
    (point,) = run_profile(workload, CPU, replace(QUICK, batch_sizes=(32,), min_steps=5, min_seconds=0)).points
    assert point.status == "ok" and point.n == 5  # one time a block: its steps' mean
    share = delay_s / every
    assert point.median_s >= 0.9 * share, point.step_times_s
    assert point.median_s < delay_s, point.step_times_s  # a share of the wait, not the whole wait every step
    # the compute alone does not read: far below the loader-included step, which the loader limits
    assert point.compute_median_s < 0.5 * point.median_s and point.input_bound


@pytest.mark.slow
def test_a_full_garbage_collection_now_and_then_costs_every_step_its_share(blocks_of_8_steps_on_one_thread):
    # one batch in 40 makes the collector traverse the whole heap: 2 of the 10 timed blocks of 8 steps pay
    # for it, which their median would leave out, though the loop pays its share on every step
    every = 40
    workload = model_workloads.make_full_collections(every)
    collection_s = min(_seconds(gc.collect) for _ in range(3))  # one full collection of this heap
    (point,) = run_profile(workload, CPU, replace(QUICK, batch_sizes=(32,), min_steps=10, min_seconds=0)).points
    assert point.status == "ok" and point.n == 10
    assert point.median_s >= 0.8 * collection_s / every, (collection_s, point.step_times_s)
    assert point.median_s < collection_s / 2, (collection_s, point.step_times_s)  # a share, not a collection a step


def _seconds(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def test_a_datasets_timed_blocks_hold_whole_epochs_when_an_epoch_is_short():
    # about 50 ms of steps a block: 4 ms steps, 13 a block; epochs of 8 steps: one epoch a block
    assert block_steps_for(0.004) == 13
    assert block_steps_for(0.004, epoch_steps=8) == 8
    assert block_steps_for(0.001, epoch_steps=8) == 48  # six epochs, each starting the loader's iteration once
    assert block_steps_for(0.004, epoch_steps=100) == 13  # a longer epoch: its start falls in some blocks


def test_tensor_workloads_keep_one_timing_and_are_never_input_bound():
    result = run_profile(tiny_workload.make(), CPU, replace(QUICK, batch_sizes=(32,), min_seconds=0))
    (point,) = result.points
    assert point.compute_median_s is None and not point.input_bound


@pytest.mark.slow
def test_the_noise_scale_of_dict_batches_and_a_models_own_loss():
    estimate = estimate_noise(
        model_workloads.make_dict(), CPU, batch_small=32, batch_big=256, batches=8, warm_steps=20, bootstrap=200
    )
    # the per-chunk gradients are noisier than the big batch's: both estimates are finite and ordered
    assert math.isfinite(estimate.g_small_sq) and math.isfinite(estimate.g_big_sq)
    assert estimate.g_small_sq > estimate.g_big_sq > 0
    assert estimate.batches == 8 and estimate.trace_sigma > 0


@pytest.mark.slow
def test_profile_from_the_cli_stores_and_shows_the_loader_and_compute_times(capsys, home):
    spec = f"{TESTS / 'model_workloads.py'}:make_slow_loader"
    code = main(
        [
            "profile",
            "--workload",
            spec,
            "--set",
            "delay_ms=2",
            "--batch-sizes",
            "16",
            "--min-steps",
            "3",
            "--min-seconds",
            "0",
            "--warmup-steps",
            "1",
            "--json",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    (point,) = json.loads(out)["points"]
    assert point["input_bound"] is True
    assert 0 < point["compute_time_s"] < point["step_time_s"]["median"]
    code = main(["profiles", "--json"])
    assert code == 0


# -- torch.compile ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_compile_happens_before_the_clock_and_its_time_is_recorded_apart(monkeypatch):
    started = {}

    class Facts(NullLog):
        def started(self, **facts):
            started.update(facts)

    config = TrainConfig(batch_size=64, lr=1e-2, max_steps=6, compile=True)
    result = train(model_workloads.make_dict(), CPU, config, log=Facts())
    assert result.steps == 6 and math.isfinite(result.final_val_loss)
    # the compiling pass is timed before the run starts; the six compiled steps come after it
    assert started["compile_s"] > 0
    assert started["config"]["compile"] is True
    point = run_profile(
        tiny_workload.make(), CPU, replace(QUICK, batch_sizes=(32,), compile=True, min_seconds=0)
    ).points[0]
    assert point.status == "ok", point.error
    # the compiling step is recorded apart; the timed steps are the compiled ones only
    assert point.compile_s > 0 and point.n == QUICK.min_steps
    # the noise estimate compiles for its two shapes (the baseline's steps, the small batch's gradients) first,
    # before its clock: a compile made 6 s slower leaves the estimate's own time as it was
    compiled_shapes = []

    def slow_compile(forward, workload, device, dtype, batch_sizes):
        compiled_shapes.append(batch_sizes)
        seconds = compile_before_clock(forward, workload, device, dtype, batch_sizes)
        time.sleep(6.0)
        return seconds + 6.0

    monkeypatch.setattr(noise_module, "compile_before_clock", slow_compile)
    estimate = estimate_noise(
        model_workloads.make_dict(), CPU, batch_small=16, batches=2, warm_steps=2, bootstrap=50, compile=True
    )
    assert compiled_shapes == [(model_workloads.make_dict().baseline_batch_size, 16)]
    assert estimate.compile_s > 6.0 and math.isfinite(estimate.g2)
    assert 0 < estimate.elapsed_s < 6.0  # the 6 s of compiling are not in the estimate's own time
    assert estimate_noise(model_workloads.make_dict(), CPU, batches=2, warm_steps=2, bootstrap=50).compile_s is None


# -- exports of the new recipe -------------------------------------------------------------------


def _export_rec(**overrides) -> dict:
    rec = {
        "recommendation_id": "rec-00000001",
        "workload": "hf-tiny-bert",
        "workload_spec": "examples/hf_tiny.py:bert",
        "batch_size": 256,
        "learning_rate": 8e-3,
        "warmup_steps": 4,
        "warmup_samples": 1024,
        "micro_batch_size": 256,
        "gradient_accumulation_steps": 1,
        "world_size": 1,
        "rule": "linear",
        "optimizer": "factory:no_decay_for_norms_and_biases",
        "weight_decay": 0.0,
        "epochs": 3,
        "schedule": "wsd",
        "decay_samples": 2560,
        "max_grad_norm": 1.0,
        "baseline": {"batch_size": 32, "learning_rate": 1e-3},
        "device": {"kind": "cpu"},
    }
    return {**rec, **overrides}


def _lr_factor_of(snippet: str):
    namespace: dict = {}
    exec(compile(snippet, "<export>", "exec"), namespace)  # the snippet as a user would run it
    return namespace["lr_factor"]


def test_exports_scale_every_param_group_alike_and_keep_the_schedule_in_steps():
    from largestep.plan.export import config_document, export_config

    doc = config_document(_export_rec())
    assert doc["scaling"]["lr_scale"] == pytest.approx(8.0)
    assert "every parameter group" in doc["scaling"]["param_groups"]
    assert doc["training"]["decay_steps"] == 10 and doc["training"]["max_grad_norm"] == 1.0
    torch_snippet = export_config(_export_rec(), "torch")
    assert "no_decay_for_norms_and_biases(model, LEARNING_RATE)" in torch_snippet
    assert "clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)" in torch_snippet
    # wsd in optimizer steps: warm-up 4, stable, then the last 10 of 100 decay linearly to zero
    factor = _lr_factor_of(torch_snippet)
    assert factor(0, 100) == pytest.approx(0.25) and factor(50, 100) == 1.0
    assert factor(95, 100) == pytest.approx(0.5) and factor(100, 100) == 0.0
    linear = _lr_factor_of(export_config(_export_rec(schedule="linear"), "torch"))
    assert linear(4, 104) == 1.0 and linear(54, 104) == pytest.approx(0.5)
    hf = export_config(_export_rec(), "hf")
    assert 'lr_scheduler_type="warmup_stable_decay"' in hf and '"num_decay_steps": 10' in hf
    assert "max_grad_norm=1.0" in hf and "optimizers=(optimizer, None)" in hf
    deepspeed = json.loads(export_config(_export_rec(), "deepspeed"))
    assert "optimizer" not in deepspeed and deepspeed["gradient_clipping"] == 1.0
    assert any("no warm-up-stable-decay" in note for note in deepspeed["_comment"])
    assert "gradient_clip_val=MAX_GRAD_NORM" in export_config(_export_rec(), "lightning")


def test_the_cli_offers_exactly_the_contracts_schedules():
    from largestep.cli import cli
    from largestep.workloads.base_config import SCHEDULES

    option = next(p for p in cli.commands["train"].params if p.name == "schedule")
    assert tuple(option.type.choices) == SCHEDULES


def test_the_stability_ramp_moves_every_parameter_group_together():
    from largestep.measure.stability import check_stability

    made = []

    def keep(model, lr):
        made.append(model_workloads.two_groups(model, lr))
        return made[-1]

    workload = replace(model_workloads.make_dict(), optimizer=keep)
    result = check_stability(workload, CPU, 32, 5e-3, steps=6)
    body, head = (group["lr"] for group in made[-1].param_groups)
    assert body == pytest.approx(result.lrs[-1]) and head == pytest.approx(10 * result.lrs[-1])
