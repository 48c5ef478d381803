"""A batch that grows during a run: the schedule's arithmetic, a real run on the tiny workload, the CLI."""

from __future__ import annotations

import pytest
import tiny_workload
import torch
from helpers import run_cli

from largestep.errors import UsageError
from largestep.jobs.bodies import SpoolRunLog
from largestep.measure.batch_schedule import (
    MIN_INTERVALS,
    PATIENCE,
    NoiseTrend,
    grown_batch,
    lr_multiple,
    parse_batch_schedule,
    phase_index,
    scheduled_steps,
)
from largestep.measure.train import TrainConfig, train

CPU = torch.device("cpu")


def test_parse_reads_batch_fraction_pairs():
    assert parse_batch_schedule("256:0, 1024:0.3,4096:0.6") == ((256, 0.0), (1024, 0.3), (4096, 0.6))


@pytest.mark.parametrize(
    "text, words",
    [
        ("", "empty"),
        ("256", "no start"),
        ("big:0", "batch:fraction pairs"),
        ("256:0.1,512:0.5", "must start at fraction 0"),
        ("256:0,512:0.5,1024:0.4", "must rise"),
        ("256:0,512:1.5", "at most 1"),
        ("0:0", "positive integer"),
        ("256:0,128:0.5", "batches must grow"),
        ("256:0,256:0.5", "batches must grow"),
    ],
)
def test_parse_says_how_to_fix_a_bad_schedule(text, words):
    with pytest.raises(UsageError, match=words):
        parse_batch_schedule(text)


def test_phases_rates_and_steps_follow_the_samples():
    phases = ((32, 0.0), (128, 0.5))
    assert [phase_index(phases, s, 1000) for s in (0, 499, 500, 999)] == [0, 0, 1, 1]
    # linear: lr/batch fixed, so 4x the first rate in the second phase, ramped over 256 samples from 1x
    assert lr_multiple(phases, 0, 1000, 256) == 1.0
    assert lr_multiple(phases, 500, 1000, 256) == pytest.approx(1 + 3 * 128 / 256)
    assert lr_multiple(phases, 700, 1000, 256) == 4.0
    assert lr_multiple(phases, 700, 1000, 256, rule="sqrt") == pytest.approx(2.0)
    # 16 steps of 32 reach 512 samples (past half of 1000), then 4 steps of 128
    assert scheduled_steps(phases, 1000) == 16 + 4


def collect():
    events = []
    return events, SpoolRunLog(lambda type_, **fields: events.append({"type": type_, **fields}))


@pytest.mark.slow
def test_a_run_grows_its_batch_logs_each_change_and_keeps_evaluating_every_epoch():
    events, log = collect()
    workload = tiny_workload.make()  # 2,048 samples, 3 epochs at batch 32: 6,144 samples
    config = TrainConfig(
        batch_size=32, lr=1e-2, batch_schedule=((32, 0.0), (128, 1 / 3), (512, 2 / 3)), warmup_samples=256
    )
    result = train(workload, CPU, config, log=log)
    changes = [
        (r["samples"], r["value"])
        for e in events
        if e["type"] == "metric_values"
        for r in e["rows"]
        if r["name"] == "batch_size"
    ]
    assert changes == [(2048, 128), (4096, 512)]
    assert result.samples == 6144 and result.steps == 64 + 16 + 4 == scheduled_steps(config.batch_schedule, 6144)
    evals = [e for e in events if e["type"] == "eval"]
    assert [e["samples"] for e in evals] == [2048, 4096, 6144] and [e["epoch"] for e in evals] == [1.0, 2.0, 3.0]
    # the rate keeps lr/batch fixed at every phase, warmed up again after each increase
    rates = {r["samples"]: r["lr"] for e in events if e["type"] == "metrics" for r in e["rows"]}
    late = [lr for s, lr in rates.items() if s >= 4096 + 512]
    assert late and all(lr == pytest.approx(1e-2 * 512 / 32) for lr in late)
    assert evals[-1]["metrics"]["accuracy"] > 0.8  # it still learns


def test_train_refuses_a_schedule_it_cannot_run(capsys, home, tiny_spec):
    for args, words in (
        (("--batch-schedule", "32:0,4096:0.5"), "larger than the 2048 training samples"),
        (("--batch-schedule", "32:0,64:0.5", "--accumulate", "2"), "drop --accumulate"),
        (("--batch-schedule", "32:0,64:0.5", "-b", "64"), "not the batch schedule's first"),
        ((), "give --batch-size, or --batch-schedule"),
    ):
        code, _, err = run_cli(
            capsys, "--home", str(home.root), "train", "--workload", tiny_spec, "--lr", "0.01", "--device", "cpu", *args
        )
        assert code == 2 and words in err and "Traceback" not in err, err
    assert not (home.root / "jobs").exists() or not any((home.root / "jobs").iterdir())


# -- adaptive: the batch doubles when the live noise scale calls for it ------------------------------


def test_grown_batch_doubles_only_into_a_safe_size_past_the_multiple():
    sizes = (32, 64, 128, 512)
    assert grown_batch(32, sizes, 65.0, 2.0, 10_000) == 64
    assert grown_batch(32, sizes, 64.0, 2.0, 10_000) is None  # not above 2 x 32
    assert grown_batch(32, sizes, None, 2.0, 10_000) is None  # no estimate this interval
    assert grown_batch(128, sizes, 1e6, 2.0, 10_000) is None  # 256 was not measured (or not memory-safe)
    assert grown_batch(64, sizes, 1e6, 2.0, 100) is None  # 128 is more than the data


def test_an_adaptive_batch_grows_on_the_smoothed_estimates_interval_not_on_one_noisy_interval():
    """The live noise scale, pooled over the last intervals with a bootstrap interval: one interval whose
    estimate spikes past the threshold does not double the batch (it did, for good, before); a steady
    estimate above it does, after PATIENCE intervals, and the pool then starts again (hysteresis)."""
    sizes = (32, 64, 128)
    trend = NoiseTrend()
    for _ in range(MIN_INTERVALS + 2):  # tr(Σ)/|G|² = 40: below 2 x 32
        trend.add(1.0, 40.0)
        assert trend.grown(32, sizes, 2.0, 10_000) is None
    trend.add(0.1, 400.0)  # one interval alone says 4000
    assert trend.grown(32, sizes, 2.0, 10_000) is None
    steady = NoiseTrend()
    decisions = []
    for _ in range(MIN_INTERVALS + PATIENCE + 2):  # about 200, never quite the same
        steady.add(1.0, 200.0 + 20 * (-1) ** len(decisions))
        decisions.append(steady.grown(32, sizes, 2.0, 10_000))
    grew = [k for k, d in enumerate(decisions) if d is not None]
    assert grew == [MIN_INTERVALS + PATIENCE - 2] and decisions[grew[0]] == 64  # once, after PATIENCE looks
    assert steady.estimate() is None or len(steady.g2) < MIN_INTERVALS + PATIENCE  # a new pool at the new batch
    noisy = NoiseTrend()
    for k in range(12):  # about 100 on average, past 2 x 32, but too noisy: the interval reaches below 64
        noisy.add(1.0, 100.0 * (0.02 if k % 2 else 1.98))
        assert noisy.grown(32, sizes, 2.0, 10_000) is None
    estimate, low, high = noisy.estimate()
    assert low < 64 < estimate < high


def test_the_live_noise_probe_reads_loss_scaled_gradients_as_their_true_values():
    """fp16 with a GradScaler: every gradient carries the loss scale (2^16) until unscaled; the probe divides
    it out, so it estimates what it does without one (it was switched off under a scaler before)."""
    from largestep.measure.train import _MicroNoiseProbe

    torch.manual_seed(0)
    model = torch.nn.Linear(8, 1)
    x, y = torch.randn(64, 8), torch.randn(64, 1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    estimates = []
    for use in (None, scaler):
        probe = _MicroNoiseProbe(model, CPU, 4, 16, 64, use)
        for _step in range(3):
            model.zero_grad(set_to_none=True)
            for chunk in range(4):
                loss = torch.nn.functional.mse_loss(
                    model(x[16 * chunk : 16 * chunk + 16]), y[16 * chunk : 16 * chunk + 16]
                )
                (use.scale(loss / 4) if use is not None else loss / 4).backward()
                probe.after_micro_batch(model)
            probe.after_backward(model)
        rows = {
            r["name"]: r["value"]
            for r in probe.log_rows({"step": 3, "epoch": 0, "samples": 192, "wall_time_s": 0, "train_time_s": 0})
        }
        estimates.append(rows)
    plain, scaled = estimates
    for name in ("noise_g_small_sq", "noise_g_big_sq", "noise_g2", "noise_trace_sigma"):
        assert scaled[name] == pytest.approx(plain[name], rel=1e-6)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(accumulate=1), "--accumulate 2 or more"),
        (dict(batch_size=48), "not among the batches"),
        (dict(nproc=2, batch_size=64), "drop --nproc"),
        (dict(accumulate=4, adaptive_batches=(32, 64, 130)), "divide by --accumulate"),
        (dict(batch_schedule=((32, 0.0),)), "not both"),
    ],
)
def test_adaptive_settings_say_how_to_fix_them(kwargs, words):
    fields = dict(batch_size=32, lr=1e-2, accumulate=2, adaptive_batches=(32, 64, 128))
    with pytest.raises(UsageError, match=words):
        TrainConfig(**{**fields, **kwargs}).validate()


@pytest.mark.slow
def test_an_adaptive_run_doubles_its_batch_when_its_noise_scale_passes_the_multiple():
    events, log = collect()
    sizes = (32, 64, 128, 256)
    config = TrainConfig(
        batch_size=32, lr=1e-2, accumulate=4, adaptive_batches=sizes, adaptive_multiple=1.0, warmup_samples=256
    )
    result = train(tiny_workload.make(), CPU, config, log=log)
    rows = [r for e in events if e["type"] == "metric_values" for r in e["rows"]]
    low = {r["samples"]: r["value"] for r in rows if r["name"] == "noise_scale_low"}
    changes = [(r["samples"], int(r["value"])) for r in rows if r["name"] == "batch_size"]
    assert changes, "the tiny workload's noise scale passes 1 x the batch early on"
    batch = 32
    for samples, grown in changes:
        assert grown == 2 * batch and grown in sizes
        # decided on the smoothed estimate: its interval's lower end above 1 x the batch, twice in a row
        before = sorted(s for s in low if s <= samples)[-PATIENCE:]
        assert len(before) == PATIENCE and all(low[s] > 1.0 * batch for s in before)
        batch = grown
    assert result.samples >= 6144 and result.stop_reason == "epochs"


def test_train_adaptive_needs_a_profile_of_the_workload(capsys, home, tiny_spec):
    code, _, err = run_cli(
        capsys,
        "--home",
        str(home.root),
        "train",
        "--workload",
        tiny_spec,
        "--lr",
        "0.01",
        "-b",
        "32",
        "--accumulate",
        "2",
        "--batch-schedule",
        "adaptive",
        "--device",
        "cpu",
    )
    assert code == 2 and "needs a profile" in err and "Traceback" not in err


# -- the autopilot's third arm ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "arms, words",
    [
        (("baseline", "schedule"), "not baseline,schedule"),
        (("baseline", "fixed", "schedule", "extra"), "baseline,fixed,schedule"),
    ],
)
def test_autopilot_refuses_arms_it_does_not_know(arms, words):
    from largestep.jobs.autopilot import AutopilotConfig

    with pytest.raises(UsageError, match=words):
        AutopilotConfig(arms=arms).validate()
    with pytest.raises(UsageError, match="drop --nproc"):
        AutopilotConfig(arms=("baseline", "fixed", "schedule"), nproc=2).validate()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_autopilot_trains_the_schedule_arm_in_the_same_rotation_and_compares_it(
    capsys, monkeypatch, home, tiny_spec, tmp_path
):
    import json

    from helpers import open_page

    from largestep import jobs, store

    code, out, err = run_cli(
        capsys,
        "--home",
        str(home.root),
        "autopilot",
        "--workload",
        tiny_spec,
        "--repeats",
        "2",
        "--epochs",
        "2",
        "--arms",
        "baseline,fixed,schedule",
        "--device",
        "cpu",
        "--accept-load",
        "--json",
    )  # a real profile may be measured under load here
    assert code == 0, err
    result = json.loads(out)
    plan = result["recommendation"]["batch_schedule"]
    groups = {g["name"]: g for g in result["comparison"]["groups"]}
    assert list(groups) == ["baseline", "recommended", "schedule"]
    assert all(g["n"] == 2 for g in groups.values())
    # the rotation: baseline, fixed, schedule for seed 0, then again for seed 1, one run at a time
    with store.connect(home) as con:
        runs = store.frame_records(store.list_runs(con))
    order = [r["role"] for r in sorted(runs, key=lambda r: str(r["created_at"]))]
    assert order == ["baseline", "recommended", "schedule"] * 2
    with store.connect(home) as con:
        scheduled = store.get_run(con, next(r["id"] for r in runs if r["role"] == "schedule"))
    config = json.loads(scheduled["config"]) if isinstance(scheduled["config"], str) else scheduled["config"]
    assert [list(p) for p in config["batch_schedule"]] == [
        [p["batch_size"], p["start_fraction"]] for p in plan["phases"]
    ]
    # the schedule arm's line, measured beside predicted
    line = result["headline"]["schedule"]
    assert line["spec"] == plan["spec"] and line["predicted_speedup"] == plan["predicted_speedup"]["over_baseline"]
    assert line["text"].startswith(f"schedule {plan['spec']}: ")
    assert jobs.read_spec(home.job_dir(plan["curve_id"]))["kind"] == "noise_curve"
    # the Overview page shows the schedule arm's line under the headline, and its row in the comparison
    at = open_page(monkeypatch, home, "overview", timeout=120, cwd=tmp_path)
    assert line["text"] in [i.value for i in at.info]
    assert "schedule" in list(at.dataframe[0].value.iloc[:, 0])
