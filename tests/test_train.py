"""The training loop: schedule, accumulation, evaluation, targets and divergence, on real models."""

from __future__ import annotations

import math
from dataclasses import replace

import pandas as pd
import pytest
import tiny_workload
import torch

from largestep.errors import Diverged, UsageError
from largestep.jobs.bodies import SpoolRunLog
from largestep.measure import train as train_module
from largestep.measure.train import TrainConfig, lr_at, train
from largestep.plan.compare import compare_groups, time_to_target, welch_p_value

CPU = torch.device("cpu")


def collect():
    """The run's reports as the spool events a job would write, in a list."""
    events = []
    return events, SpoolRunLog(lambda type_, **fields: events.append({"type": type_, **fields}))


def test_warmup_is_linear_in_samples_then_constant_or_cosine():
    assert lr_at(0, 1.0, 1000, 10_000) == pytest.approx(1 / 1000)
    assert lr_at(499, 1.0, 1000, 10_000) == pytest.approx(0.5)
    assert lr_at(1000, 1.0, 1000, 10_000) == 1.0
    assert lr_at(5_000, 1.0, 0, 10_000, "cosine") == pytest.approx(0.5)
    assert lr_at(10_000, 1.0, 0, 10_000, "cosine") == pytest.approx(0.0, abs=1e-12)


def test_linear_and_wsd_schedules_decay_to_zero_over_samples():
    # linear: from the peak after warm-up down to zero at the end of the run
    assert lr_at(1_000, 1.0, 1_000, 11_000, "linear") == pytest.approx(1.0)
    assert lr_at(6_000, 1.0, 1_000, 11_000, "linear") == pytest.approx(0.5)
    assert lr_at(11_000, 1.0, 1_000, 11_000, "linear") == pytest.approx(0.0)
    # wsd: stable at the peak until the decay phase (its length in samples), then linear to zero
    assert lr_at(7_999, 1.0, 1_000, 10_000, "wsd", decay_samples=2_000) == 1.0
    assert lr_at(9_000, 1.0, 1_000, 10_000, "wsd", decay_samples=2_000) == pytest.approx(0.5)
    assert lr_at(8_000, 1.0, 0, 10_000, "wsd") == 1.0  # default decay: the last fifth
    assert lr_at(9_500, 1.0, 0, 10_000, "wsd") == pytest.approx(0.25)
    # the same samples give the same rate multiple whatever the batch: the shape does not rescale
    assert lr_at(4_096, 2.0, 512, 8_192, "cosine") == pytest.approx(2 * lr_at(4_096, 1.0, 512, 8_192, "cosine"))


@pytest.mark.slow
def test_a_run_logs_evaluates_every_epoch_and_learns():
    events, emit = collect()
    workload = tiny_workload.make()
    result = train(workload, CPU, TrainConfig(batch_size=32, lr=1e-2, epochs=3), log=emit)
    evals = [e for e in events if e["type"] == "eval"]
    assert [round(e["epoch"]) for e in evals] == [1, 2, 3]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] and evals[-1]["metrics"]["accuracy"] > 0.9
    rows = [r for e in events if e["type"] == "metrics" for r in e["rows"]]
    assert len(rows) >= 3 * 20 * 0.9  # about 20 logs per epoch
    assert all(r["train_loss"] > 0 and r["lr"] > 0 for r in rows)
    assert result.steps == 3 * (2048 // 32) and result.samples == result.steps * 32
    assert result.train_time_s < result.wall_time_s  # evaluation sits outside the training clock
    assert result.peak_memory_bytes > 0
    assert result.final_val_loss == evals[-1]["val_loss"]


def test_gradient_accumulation_matches_the_full_batch():
    """SGD on micro-batches of 16, accumulated twice, lands where batches of 32 do."""
    from largestep import Workload

    base = tiny_workload.make()
    workload = Workload(
        name="sgd",
        model=base.model,
        train=base.train,
        val=base.val,
        loss=base.loss,
        baseline_batch_size=32,
        baseline_lr=0.1,
        optimizer="sgd",
    )
    weights = []
    for accumulate in (1, 2):
        captured = {}

        torch.manual_seed(0)
        config = TrainConfig(batch_size=32, lr=0.05, accumulate=accumulate, max_steps=20, warmup_samples=0)
        original = workload.model

        def model_and_keep():
            m = original()
            captured["model"] = m
            return m

        tracked = Workload(
            name="sgd",
            model=model_and_keep,
            train=workload.train,
            val=workload.val,
            loss=workload.loss,
            baseline_batch_size=32,
            baseline_lr=0.1,
            optimizer="sgd",
        )
        train(tracked, CPU, config)
        weights.append(torch.cat([p.detach().flatten() for p in captured["model"].parameters()]))
    assert torch.allclose(weights[0], weights[1], atol=1e-5)


def test_the_target_stops_the_run_and_records_the_time():
    result = train(
        tiny_workload.make(),
        CPU,
        TrainConfig(batch_size=32, lr=1e-2, epochs=10, target_val_loss=0.2, eval_every_epochs=0.25),
    )
    assert result.reached_target and result.stop_reason == "target"
    assert 0 < result.time_to_target_s <= result.train_time_s and result.final_val_loss <= 0.2
    assert result.epochs < 10


def test_an_absurd_learning_rate_diverges_within_a_few_steps():
    events, emit = collect()
    with pytest.raises(Diverged, match="the learning rate is too high for this batch"):
        train(tiny_workload.make(), CPU, TrainConfig(batch_size=32, lr=1e6, epochs=50, warmup_samples=0), log=emit)
    last = [r for e in events if e["type"] == "metrics" for r in e["rows"]][-1]
    assert last["step"] <= 10


@pytest.mark.parametrize("poison", ["data", "loss"])
def test_nan_in_the_data_or_the_loss_diverges_saying_where_to_look(poison):
    base = tiny_workload.make()
    if poison == "data":  # past the first samples, which the trial step sees
        x, y = base.train
        x = x.clone()
        x[5:64] = float("nan")
        workload = replace(base, train=(x, y))
    else:
        workload = replace(base, loss=lambda output, target: base.loss(output, target) * float("nan"))
    with pytest.raises(Diverged) as diverged:
        train(workload, CPU, TrainConfig(batch_size=32, lr=1e-2, epochs=1))
    assert str(diverged.value).startswith("loss nan at step 1 (lr ")
    assert "not finite from the first step: look for NaN or infinite values in the training data" in str(diverged.value)
    assert "None" not in str(diverged.value)


def test_every_interval_is_logged_but_progress_is_reported_at_most_once_a_second(monkeypatch):
    """A job's progress rewrites and fsyncs its status file: reported at every logging step it cost
    more than the step itself on a small model; the metrics still reach the spool at every interval."""

    def run():
        events, log = collect()
        reports = []
        result = train(
            tiny_workload.make(),
            CPU,
            TrainConfig(batch_size=32, lr=1e-2, max_steps=40, log_every_steps=1),
            log=log,
            progress=lambda phase, fraction: reports.append((phase, fraction)),
        )
        rows = [r for e in events if e["type"] == "metrics" for r in e["rows"]]
        return result, rows, reports

    result, rows, reports = run()
    assert [r["step"] for r in rows] == list(range(1, 41))
    assert reports[0][0].startswith("step 1/40, loss") and reports[0][1] == pytest.approx(1 / 40)
    assert len(reports) <= 2 + result.train_time_s / train_module.PROGRESS_EVERY_S
    monkeypatch.setattr(train_module, "PROGRESS_EVERY_S", 0.0)  # no limit: one report a logging step
    assert len(run()[2]) == 40


@pytest.mark.parametrize("fold_every", [1024, 3])
def test_each_logged_loss_is_the_mean_of_its_intervals_micro_batch_losses(monkeypatch, fold_every):
    """Losses are kept on the device and summed when logged (also in folds of a long interval's list)."""
    monkeypatch.setattr(train_module._IntervalLoss, "FOLD_EVERY", fold_every)
    base = tiny_workload.make()
    seen = []

    def recorded_loss(output, target):
        loss = base.loss(output, target)
        seen.append(float(loss.detach()))
        return loss

    events, log = collect()
    workload = replace(base, loss=recorded_loss)
    train(workload, CPU, TrainConfig(batch_size=32, lr=1e-2, accumulate=2, max_steps=12, log_every_steps=4), log=log)
    rows = [r for e in events if e["type"] == "metrics" for r in e["rows"]]
    assert [r["step"] for r in rows] == [4, 8, 12]
    micro_losses = seen[:24]  # then the evaluation's
    for i, row in enumerate(rows):  # 4 steps of 2 micro-batches each
        assert row["train_loss"] == pytest.approx(sum(micro_losses[8 * i : 8 * i + 8]) / 8, rel=1e-6)


@pytest.mark.parametrize(
    "config, says",
    [
        (TrainConfig(batch_size=0, lr=1.0), "batch-size"),
        (TrainConfig(batch_size=32, lr=0.0), "--lr"),
        (TrainConfig(batch_size=32, lr=1.0, accumulate=3), "divisible"),
        (TrainConfig(batch_size=32, lr=1.0, schedule="step"), "schedule"),
        (TrainConfig(batch_size=100_000, lr=1.0), "larger than"),
    ],
)
def test_bad_configs(config, says):
    with pytest.raises(UsageError, match=says):
        train(tiny_workload.make(), CPU, config)


def test_time_to_target_and_welch():
    evals = pd.DataFrame(
        {
            "run_id": ["a"] * 3,
            "step": [1, 2, 3],
            "wall_time_s": [2.0, 4.0, 6.0],
            "train_time_s": [1.0, 2.0, 3.0],
            "val_loss": [0.9, 0.5, 0.4],
        }
    )
    assert time_to_target(evals, 0.5) == (2.0, 4.0)
    assert time_to_target(evals, 0.1) == (None, None)
    from scipy import stats

    a, b = [0.80, 0.82, 0.81], [0.70, 0.72, 0.69]
    assert welch_p_value(a, b) == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue)
    assert welch_p_value([0.8], b) is None


def test_compare_groups_speedup_against_the_baseline():
    def runs(name, seeds, best):
        return [
            {
                "id": f"{name}{s}",
                "seed": s,
                "best_val_loss": best,
                "final_val_loss": best,
                "primary_metric": "acc",
                "final_primary_metric": 0.9 + 0.01 * s,
                "batch_size": 1,
                "lr": 1.0,
            }
            for s in seeds
        ]

    rows = []
    for run_id, times in {"b0": [10, 20, 30], "b1": [12, 22, 32], "r0": [2, 4, 6], "r1": [3, 5, 7]}.items():
        for step, (t, loss) in enumerate(zip(times, [0.9, 0.6, 0.5])):
            rows.append({"run_id": run_id, "step": step, "wall_time_s": t + 1, "train_time_s": t, "val_loss": loss})
    result = compare_groups(
        [("base", runs("b", [0, 1], 0.5)), ("rec", runs("r", [0, 1], 0.5))], pd.DataFrame(rows), tolerance=0.0
    )
    base, rec = result["groups"]
    assert base["time_to_target_s"]["mean"] == pytest.approx(31) and rec["time_to_target_s"]["mean"] == pytest.approx(
        6.5
    )
    # the ratio of the Kaplan-Meier medians: the earliest time by which half the seeds reached the target
    assert rec["speedup"] == pytest.approx(30 / 6)
    assert rec["metric_difference"] == pytest.approx(0.0) and math.isclose(rec["p_value"], 1.0)
