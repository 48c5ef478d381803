"""Data-parallel jobs for real: 2 gloo ranks launched by the job runner, on CPU.

- a 2-rank run lands on the weights of a single-process run on the same global batch and seed;
- its noise-scale metric equals McCandlish's estimator computed in one process on the same shards;
- a rank killed mid-run ends the job CRASHED (never a hang);
- a 2-rank profile measures global batches; bad --nproc input is one line and exit code 2.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psutil
import pytest
import torch
from helpers import wait_for

from largestep import jobs, store
from largestep.jobs import start as starts
from largestep.jobs.bodies import SpoolRunLog
from largestep.measure.noise import noise_scale_from_norms
from largestep.measure.profiler import ProfileConfig
from largestep.measure.train import TrainConfig, lr_at, train
from largestep.workloads.base import Workload

HERE = Path(__file__).resolve()
SGD_SPEC = f"{HERE}:make_sgd"
RANK_ONE_OOM_SPEC = f"{HERE}:make_rank_one_oom"
CPU = torch.device("cpu")
GLOBAL_BATCH, STEPS, WARMUP = 64, 12, 256


def make_sgd(samples: int = 1024, features: int = 8) -> Workload:
    """A small two-class problem trained by SGD (momentum 0.9): its updates are linear in the gradient,
    so a rank-averaged gradient and a full-batch gradient give the same weights up to rounding."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(samples + 256, features, generator=g)
    y = (x @ torch.randn(features, generator=g) > 0).long()
    return Workload(
        name="ddp-sgd",
        model=lambda: torch.nn.Sequential(torch.nn.Linear(features, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2)),
        train=(x[:samples], y[:samples]),
        val=(x[samples:], y[samples:]),
        loss=torch.nn.functional.cross_entropy,
        baseline_batch_size=32,
        baseline_lr=0.05,
        optimizer="sgd",
        epochs=1,
        metrics={"accuracy": lambda out, target: float((out.argmax(dim=1) == target).float().mean())},
    )


class _FailsOnRankOne(torch.nn.Module):
    """A model whose forward raises on rank 1 only, after a few steps: one rank failing mid-run."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(8, 2)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        if os.environ.get("RANK") == "1" and self.calls > 3:
            raise RuntimeError("the data on this shard is broken")
        return self.net(x)


def make_failing(samples: int = 1024) -> Workload:
    workload = make_sgd(samples)
    return Workload(**{**workload.__dict__, "name": "ddp-fails", "model": _FailsOnRankOne})


class _RankOneOutOfMemoryAbove(torch.nn.Module):
    """Rank 1 alone runs out of memory above ``limit`` samples (a GPU with less free memory than its peer's)."""

    def __init__(self, inner: torch.nn.Module, limit: int):
        super().__init__()
        self.inner, self.limit = inner, limit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        if rank == 1 and x.shape[0] > self.limit:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {x.shape[0]} rows (simulated)")
        return self.inner(x)


class _RankOneFailsAbove(torch.nn.Module):
    """Rank 1 alone fails above ``limit`` samples with an error that is not out of memory (a bad shard, a bug)."""

    def __init__(self, inner: torch.nn.Module, limit: int):
        super().__init__()
        self.inner, self.limit = inner, limit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        if rank == 1 and x.shape[0] > self.limit:
            raise RuntimeError("the data on this shard is broken")
        return self.inner(x)


def make_rank_one_fails() -> Workload:
    import dataclasses

    base = make_sgd()
    return dataclasses.replace(base, name="ddp-rank-one-fails", model=lambda: _RankOneFailsAbove(base.model(), 32))


def make_rank_one_oom() -> Workload:
    import dataclasses

    base = make_sgd()
    return dataclasses.replace(base, name="ddp-rank-one-oom", model=lambda: _RankOneOutOfMemoryAbove(base.model(), 32))


def _events(home, job_id) -> list[dict]:
    return jobs.events.read_all(home.job_dir(job_id))


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory):
    """One 2-rank SGD run (through the job runner and its rank launcher), shared by the tests below."""
    from largestep.home import Home

    home = Home(tmp_path_factory.mktemp("ddp") / "home")
    config = TrainConfig(
        batch_size=GLOBAL_BATCH, lr=0.05, nproc=2, max_steps=STEPS, warmup_samples=WARMUP, log_every_steps=1, seed=3
    )
    started = time.monotonic()
    [job_id] = starts.start_train(home, SGD_SPEC, {}, "cpu", config, save_weights=True)
    state = jobs.wait(home, job_id, timeout_s=120)
    assert state == jobs.FINISHED, (home.job_dir(job_id) / "output.log").read_text()[-3000:]
    store.ingest(home)
    return home, job_id, config, time.monotonic() - started


@pytest.mark.distributed
def test_two_ranks_match_one_process_on_the_same_global_batch(two_rank_run):
    home, job_id, config, _ = two_rank_run
    events = _events(home, job_id)
    start = next(e for e in events if e["type"] == "run_start")
    assert start["config"]["batch_size"] == GLOBAL_BATCH and start["config"]["nproc"] == 2
    assert start["micro_batch"] == GLOBAL_BATCH // 2 and start["world_size"] == 2 and start["backend"] == "gloo"
    ddp_rows = [r for e in events if e["type"] == "metrics" for r in e["rows"]]

    # the same run in this process: one rank, the whole global batch per step
    captured, single = {}, []
    workload = make_sgd()
    factory = workload.model

    def keep(*args):
        captured["model"] = factory()
        return captured["model"]

    tracked = Workload(
        name="ddp-sgd",
        model=keep,
        train=workload.train,
        val=workload.val,
        loss=workload.loss,
        baseline_batch_size=32,
        baseline_lr=0.05,
        optimizer="sgd",
        epochs=1,
        metrics=dict(workload.metrics),
    )
    from dataclasses import replace

    train(
        tracked,
        CPU,
        replace(config, nproc=1),
        log=SpoolRunLog(lambda t, **f: single.extend(f["rows"]) if t == "metrics" else None),
    )
    one = torch.cat([p.detach().flatten() for p in captured["model"].parameters()])
    state = torch.load(home.job_dir(job_id) / "model.pt")
    two = torch.cat([t.flatten() for t in state.values()])

    assert [r["step"] for r in ddp_rows] == list(range(1, STEPS + 1))
    assert [r["samples"] for r in ddp_rows] == [GLOBAL_BATCH * s for s in range(1, STEPS + 1)]
    # the learning rate follows the global batch: warm-up over 256 samples is 4 steps of 64
    assert [r["lr"] for r in ddp_rows] == pytest.approx([r["lr"] for r in single], rel=1e-12)
    assert ddp_rows[0]["lr"] == pytest.approx(0.05 / WARMUP) and ddp_rows[-1]["lr"] == pytest.approx(0.05)
    assert [r["train_loss"] for r in ddp_rows] == pytest.approx([r["train_loss"] for r in single], rel=1e-5)
    assert not torch.equal(one, torch.cat([p.detach().flatten() for p in factory().parameters()]))  # it trained
    assert torch.allclose(one, two, atol=1e-6, rtol=1e-5), (one - two).abs().max()

    with store.connect(home) as con:
        run = store.get_run(con, job_id)
    assert run["batch_size"] == GLOBAL_BATCH and run["state"] == "FINISHED"


def _replayed_norms(config: TrainConfig) -> dict[int, tuple[float, float]]:
    """The 2-rank run replayed in one process, each rank's shard gradient computed explicitly: per step, the mean
    over the ranks of their shard gradient's |g|² (B_small = 32) and the all-reduced gradient's |g|² (B_big = 64)."""
    from largestep.measure.train import TensorBatches

    workload = make_sgd()
    torch.manual_seed(config.seed)
    model = workload.model()
    optimizer = workload.make_optimizer(model, config.lr)
    params = list(model.parameters())
    batches = TensorBatches(workload.train, CPU, GLOBAL_BATCH, config.seed)
    samples = 0
    norms = {}
    for step, (x, y) in enumerate(batches.epoch(0), start=1):
        if step > STEPS:
            break
        shard_grads = []
        for r in range(2):  # rank r's shard: the r-th half of the global batch
            xs, ys = x[r * 32 : (r + 1) * 32], y[r * 32 : (r + 1) * 32]
            shard_grads.append(torch.autograd.grad(workload.loss(model(xs), ys), params))
        flat = [torch.cat([g.flatten().double() for g in grads]) for grads in shard_grads]
        mean = (flat[0] + flat[1]) / 2
        norms[step] = (float(sum(f.dot(f) for f in flat) / 2), float(mean.dot(mean)))
        for p, g0, g1 in zip(params, *shard_grads):
            p.grad = (g0 + g1) / 2
        for group in optimizer.param_groups:
            group["lr"] = lr_at(samples, config.lr, WARMUP, STEPS * GLOBAL_BATCH)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        samples += GLOBAL_BATCH
    return norms


def test_the_noise_scale_metric_is_mcCandlish_on_the_rank_shards(two_rank_run):
    """Replay the run in one process, computing each rank's shard gradient explicitly: the logged
    |G|² and tr(Σ) at every step (each a logging step, so each probed) are the estimator's on (B_small = 32,
    B_big = 64)."""
    home, job_id, config, _ = two_rank_run
    with store.connect(home) as con:
        frame = store.run_metrics(con, [job_id], ["noise_g2", "noise_trace_sigma", "noise_scale"])
    logged = {(int(r.step), r.name): r.value for r in frame.itertuples()}
    expected = {
        step: noise_scale_from_norms(small, big, 32, GLOBAL_BATCH)
        for step, (small, big) in _replayed_norms(config).items()
    }
    assert len(expected) == STEPS
    for step, (g2, trace) in expected.items():
        assert logged[(step, "noise_g2")] == pytest.approx(g2, rel=1e-4, abs=1e-9), step
        assert logged[(step, "noise_trace_sigma")] == pytest.approx(trace, rel=1e-4), step
        if g2 > 0 and trace > 0:
            assert logged[(step, "noise_scale")] == pytest.approx(trace / g2, rel=1e-3), step
        else:
            assert (step, "noise_scale") not in logged


@pytest.mark.distributed
def test_the_noise_probe_reads_the_gradients_every_few_steps_not_every_step(home):
    """The probe's float64 norms of every bucket cost each step they run on, and a profile's steps run without
    them: it reads steps 8 and 12 of a run logging every 12 (every NOISE_PROBE_EVERY-th step and the logging step),
    and the logged estimate is theirs."""
    from largestep.measure.train import NOISE_PROBE_EVERY

    assert NOISE_PROBE_EVERY == 8
    config = TrainConfig(
        batch_size=GLOBAL_BATCH, lr=0.05, nproc=2, max_steps=STEPS, warmup_samples=WARMUP, log_every_steps=STEPS, seed=3
    )
    [job_id] = starts.start_train(home, SGD_SPEC, {}, "cpu", config)
    assert jobs.wait(home, job_id, timeout_s=120) == jobs.FINISHED, (home.job_dir(job_id) / "output.log").read_text()
    store.ingest(home)
    with store.connect(home) as con:
        frame = store.run_metrics(con, [job_id], ["noise_g_small_sq", "noise_g_big_sq"])
    logged = {(int(r.step), r.name): r.value for r in frame.itertuples()}
    norms = _replayed_norms(config)
    probed = [8, 12]
    assert set(logged) == {(STEPS, "noise_g_small_sq"), (STEPS, "noise_g_big_sq")}
    assert logged[(STEPS, "noise_g_small_sq")] == pytest.approx(sum(norms[s][0] for s in probed) / 2, rel=1e-4)
    assert logged[(STEPS, "noise_g_big_sq")] == pytest.approx(sum(norms[s][1] for s in probed) / 2, rel=1e-4)
    start = next(e for e in _events(home, job_id) if e["type"] == "run_start")
    assert start["noise_probe_every"] == NOISE_PROBE_EVERY


@pytest.mark.distributed
def test_a_rank_killed_mid_run_ends_the_job_crashed_not_hung(home):
    config = TrainConfig(batch_size=GLOBAL_BATCH, lr=0.05, nproc=2, epochs=10_000, log_every_steps=5)
    [job_id] = starts.start_train(home, SGD_SPEC, {}, "cpu", config)
    job_dir = home.job_dir(job_id)
    assert wait_for(lambda: '"type": "metrics"' in (job_dir / "events.jsonl").read_text(), 90), (
        job_dir / "output.log"
    ).read_text()[-2000:]
    job = psutil.Process(jobs.read_status(job_dir)["pid"])
    ranks = {
        int(p.environ().get("RANK", -1)): p
        for p in job.children(recursive=True)
        if "largestep.jobs.torchrun" in " ".join(p.cmdline())
    }
    assert set(ranks) == {0, 1}, ranks
    # a single-machine run opens nothing another machine can reach
    listening = [
        c.laddr for p in [job, *ranks.values()] for c in p.net_connections("inet") if c.status == psutil.CONN_LISTEN
    ]
    assert listening and all(address.ip in ("127.0.0.1", "::1") for address in listening), listening
    os.kill(ranks[1].pid, signal.SIGKILL)
    killed_at = time.monotonic()
    assert jobs.wait(home, job_id, timeout_s=60) == jobs.CRASHED
    assert time.monotonic() - killed_at < 60
    assert not ranks[0].is_running() or ranks[0].status() == psutil.STATUS_ZOMBIE  # no orphan left behind
    store.ingest(home)
    with store.connect(home) as con:
        job = store.get_job(con, job_id)
    assert job["state"] == "CRASHED" and "rank 1" in job["error"]


@pytest.mark.distributed
def test_a_rank_that_fails_ends_the_run_with_its_own_error_and_stops_the_other(home):
    config = TrainConfig(batch_size=GLOBAL_BATCH, lr=0.05, nproc=2, epochs=10_000, log_every_steps=5)
    [job_id] = starts.start_train(home, f"{HERE}:make_failing", {}, "cpu", config)
    assert jobs.wait(home, job_id, timeout_s=120) == jobs.FAILED, (home.job_dir(job_id) / "output.log").read_text()
    store.ingest(home)
    with store.connect(home) as con:
        job = store.get_job(con, job_id)
    assert job["error"].startswith("rank 1 of 2: RuntimeError: the data on this shard is broken"), job["error"]
    ranks_left = [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if "largestep.jobs.torchrun" in (line := " ".join(p.info["cmdline"] or [])) and str(home.root) in line
    ]
    assert not ranks_left


@pytest.mark.distributed
def test_a_two_rank_profile_measures_global_batches_with_the_all_reduce(home, tiny_spec):
    config = ProfileConfig(batch_sizes=(32, 128), min_steps=3, min_seconds=0.2, warmup_steps=1, nproc=2)
    job_id = starts.start_profile(home, tiny_spec, {}, "cpu", config)
    assert jobs.wait(home, job_id, timeout_s=120) == jobs.FINISHED, (home.job_dir(job_id) / "output.log").read_text()
    store.ingest(home)
    with store.connect(home) as con:
        profile = store.load_profile(con, job_id)
    assert [p["batch_size"] for p in profile["points"]] == [32, 128]
    assert all(p["status"] == "ok" and p["n"] >= 3 for p in profile["points"])
    assert profile["config"]["nproc"] == 2
    from largestep.plan.recommend import RecommendConfig, recommend

    rec = recommend(profile, RecommendConfig(noise_scale=1e6, accept_load=True), None)  # 2 ranks, 2 shared cores
    assert rec["world_size"] == 2 and rec["micro_batch_size"] * 2 == rec["batch_size"]
    from largestep.plan.export import export_config

    line = [x for x in export_config(rec, "cli").splitlines() if x.startswith("largestep")][0]
    assert "--nproc 2" in line and "--devices" not in line


@pytest.mark.slow
@pytest.mark.distributed
def test_one_rank_out_of_memory_ends_the_profile_at_its_ceiling_instead_of_hanging(home):
    # global 128 is a shard of 64 a rank: rank 1 runs out of memory, rank 0 waits in the all-reduce
    config = ProfileConfig(batch_sizes=(32, 64, 128), min_steps=3, min_seconds=0.1, warmup_steps=1, nproc=2)
    job_id = starts.start_profile(home, RANK_ONE_OOM_SPEC, {}, "cpu", config)
    started = time.monotonic()
    state = jobs.wait(home, job_id, timeout_s=240)
    assert state == jobs.FINISHED, (home.job_dir(job_id) / "output.log").read_text()
    assert time.monotonic() - started < 200  # not the collective timeout (600 s)
    store.ingest(home)
    with store.connect(home) as con:
        profile = store.load_profile(con, job_id)
    points = {p["batch_size"]: p for p in profile["points"]}
    assert {b: p["status"] for b, p in points.items()} == {32: "ok", 64: "ok", 128: "oom"}
    assert profile["stop_reason"] == "oom" and points[128]["error"].startswith("rank 1: OutOfMemoryError")
    # measured for real: on a busy machine both points may be noisy, and a noisy point is no saturation batch
    assert profile["saturation_batch"] in (32, 64) or all(points[b]["noisy"] for b in (32, 64))


@pytest.mark.slow
@pytest.mark.distributed
def test_one_rank_failing_ends_the_profile_failed_with_its_error_within_seconds(home):
    # global 128 is a shard of 64 a rank: rank 1 fails (not out of memory) while rank 0 waits in the all-reduce
    config = ProfileConfig(batch_sizes=(32, 64, 128), min_steps=3, min_seconds=0.1, warmup_steps=1, nproc=2)
    job_id = starts.start_profile(home, f"{HERE}:make_rank_one_fails", {}, "cpu", config)
    job_dir = home.job_dir(job_id)
    assert wait_for(lambda: '"batch_size": 64' in (job_dir / "events.jsonl").read_text(), 120), (
        job_dir / "output.log"
    ).read_text()[-3000:]
    reached_128 = time.monotonic()
    state = jobs.wait(home, job_id, timeout_s=120)
    assert state == jobs.FAILED, (job_dir / "output.log").read_text()[-3000:]
    assert time.monotonic() - reached_128 < 60  # not the collective timeout (600 s)
    store.ingest(home)
    with store.connect(home) as con:
        job = store.get_job(con, job_id)
    assert job["error"].startswith("rank 1 of 2: RuntimeError: the data on this shard is broken"), job["error"]


@pytest.mark.timeout(900)  # its subprocesses (or the session's autopilot) may take 300 s and more
@pytest.mark.distributed
@pytest.mark.e2e
def test_an_autopilot_over_two_ranks_profiles_and_trains_data_parallel(home, tiny_spec):
    from largestep.jobs.autopilot import AutopilotConfig

    # two ranks on two cores: the profile may well be under load, and a tiny model's sub-millisecond steps fail
    # the physics check there ("keep your baseline"): both arms are asked for, whatever was recommended
    config = AutopilotConfig(
        repeats=1,
        epochs=1,
        nproc=2,
        min_seconds=0.2,
        max_batch=256,
        noise_batches=4,
        accept_load=True,
        arms=("baseline", "recommended"),
    )
    job_id = starts.start_autopilot(home, tiny_spec, {}, "cpu", config)
    assert jobs.wait(home, job_id, timeout_s=300) == jobs.FINISHED, (home.job_dir(job_id) / "output.log").read_text()
    store.ingest(home)
    with store.connect(home) as con:
        result = store.load_autopilot(con, job_id)
        profile = store.load_profile(con, result["profile_id"])
        rec = store.load_recommendation(con, result["recommendation_id"])
        runs = [store.get_run(con, r) for r in result["baseline_runs"] + result["recommended_runs"]]
    assert profile["config"]["nproc"] == 2 and rec["world_size"] == 2
    assert all(run["config"]["nproc"] == 2 and run["micro_batch_size"] * 2 == run["batch_size"] for run in runs)
    # what the autopilot reported is what the store kept: its runs, at the recommended pair, as compared
    baseline_run, recommended_run = runs
    assert (baseline_run["role"], baseline_run["batch_size"]) == ("baseline", rec["baseline"]["batch_size"])
    assert (recommended_run["role"], recommended_run["batch_size"]) == ("recommended", rec["batch_size"])
    assert recommended_run["lr"] == pytest.approx(rec["learning_rate"])
    assert all(run["state"] == "FINISHED" for run in runs)
    compared = {g["name"]: g for g in result["comparison"]["groups"]}
    for group, run in zip(("baseline", "recommended"), runs):
        assert compared[group]["runs"][0]["id"] == run["id"]
        assert compared[group]["final_val_loss"]["mean"] == pytest.approx(run["final_val_loss"])
    assert result["headline"]["measured_speedup"] == compared["recommended"]["speedup"]
    assert (
        result["headline"]["batch_size"] == rec["batch_size"] and str(rec["batch_size"]) in result["headline"]["text"]
    )


@pytest.mark.parametrize(
    "argv, says",
    [
        (
            ["train", "-w", "fraud-mlp", "-b", "64", "--lr", "0.01", "--nproc", "0"],
            "--nproc must be a positive integer",
        ),
        (
            ["train", "-w", "fraud-mlp", "-b", "64", "--lr", "0.01", "--nproc", "3", "-d", "cpu"],
            "--batch-size 64 is not divisible by --nproc 3 x --accumulate 1 = 3",
        ),
        (
            ["train", "-w", "fraud-mlp", "-b", "64", "--lr", "0.01", "--nproc", "2", "--accumulate", "3", "-d", "cpu"],
            "not divisible by --nproc 2 x --accumulate 3",
        ),
        (["train", "-w", "fraud-mlp", "-b", "64", "--lr", "0.01", "--nproc", "2", "-d", "mps"], "--nproc runs on cpu"),
        (
            ["train", "-w", "fraud-mlp", "-b", "64", "--lr", "0.01", "--nproc", "2", "-d", "cuda:1"],
            "--nproc 2 uses cuda:0 to cuda:1; give --device cuda, not cuda:1",
        ),
        (
            ["profile", "-w", "fraud-mlp", "--batch-sizes", "32,33", "--nproc", "2", "-d", "cpu"],
            "batch size 33 is not divisible by --nproc 2",
        ),
        (
            ["train", "-w", "fraud-mlp", "-b", "64", "--lr", "0.01", "--ray-address", "x:1"],
            "--ray-address needs --launcher ray",
        ),
        (
            ["autopilot", "-w", "fraud-mlp", "--nproc", "3", "-d", "cpu"],
            "--nproc 3 does not divide fraud-mlp's baseline",
        ),
        (["autopilot", "-w", "fraud-mlp", "--nproc", "0"], "--nproc must be a positive integer"),
    ],
)
def test_bad_nproc_input_is_one_line_and_exit_code_2(home, capsys, argv, says):
    from largestep.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("largestep: error: ") and len(err.splitlines()) == 1, err
    assert says in err, err
    assert not home.jobs.exists() or not any(home.jobs.iterdir())  # nothing was queued


def test_ranks_meet_on_loopback_unless_the_user_chose_an_interface(monkeypatch):
    from largestep.jobs.torchrun import loopback_interface, rank_environment

    monkeypatch.delenv("GLOO_SOCKET_IFNAME", raising=False)
    monkeypatch.delenv("NCCL_SOCKET_IFNAME", raising=False)
    env = rank_environment(nproc=2, rank=1, timeout_s=30.0)
    assert loopback_interface() is not None
    assert env["GLOO_SOCKET_IFNAME"] == env["NCCL_SOCKET_IFNAME"] == loopback_interface()
    assert (env["RANK"], env["LOCAL_RANK"], env["WORLD_SIZE"]) == ("1", "1", "2")
    monkeypatch.setenv("NCCL_SOCKET_IFNAME", "ib0")
    assert rank_environment(nproc=2, rank=0, timeout_s=30.0)["NCCL_SOCKET_IFNAME"] == "ib0"
