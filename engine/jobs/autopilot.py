"""The one-click flow as a job: profile, noise scale, recommend, train both, compare, headline.

The autopilot job orchestrates child jobs (each its own process, queued on the device) and,
like every job, never opens the database: it reads its children's results from their spools
with the same builders the store's ingest mirrors, and spools its own phases, recommendation
and comparison. Cancelling it cancels its children.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import pandas as pd

from engine import jobs
from engine.errors import LargestepError
from engine.jobs import events
from engine.jobs.runner import JobContext
from engine.plan.compare import compare_groups
from engine.plan.recommend import RecommendConfig, recommend

__all__ = ["AutopilotConfig", "autopilot_task", "PHASES", "headline"]

PHASES = ("profile", "noise scale", "recommendation", "baseline runs", "recommended runs", "comparison")
MAX_EPOCH_FACTOR = 3.0  # the recommended runs get at most this many times the baseline's epochs


@dataclass(frozen=True)
class AutopilotConfig:
    repeats: int = 3                      # seeds per arm (baseline, recommended)
    epochs: float | None = None           # None: the workload's
    rule: str = "linear"
    noise_batches: int = 32
    min_seconds: float = 1.0              # profiler: timed seconds per batch size
    max_batch: int = 65536
    tolerance: float = 0.01               # compare: target = baseline best val loss + 1%
    launcher: dict | None = None          # None: child jobs run here; {"kind": "ray", ...}: as Ray tasks
    nproc: int = 1                        # data-parallel ranks of the profile and of every training run
    compile: bool = False                 # torch.compile the model in every step: profile, noise scale, runs


def headline(rec: dict, comparison: dict) -> dict:
    """One line a person reads first: the pair, measured vs predicted speedup, the metric difference."""
    groups = comparison.get("groups") or []
    recommended = groups[1] if len(groups) > 1 else {}
    measured = recommended.get("speedup")
    text = (f"batch {rec['batch_size']} at lr {rec['learning_rate']:.3g} (baseline {rec['baseline']['batch_size']} "
            f"at {rec['baseline']['learning_rate']:.3g}): ")
    if measured is not None:
        text += f"{measured:.2f}x faster to the baseline's validation loss (predicted {rec['predicted_speedup']['time_to_target']:.2f}x)"
    else:
        text += (f"did not reach the baseline's validation loss {comparison.get('target_val_loss', float('nan')):.4f} "
                 f"(predicted {rec['predicted_speedup']['time_to_target']:.2f}x)")
    diff, p = recommended.get("metric_difference"), recommended.get("p_value")
    if diff is not None:
        text += f"; {comparison.get('metric')} {diff:+.4f}"
        text += (f" (Welch p = {p:.3g})" if p is not None
                 else " (no p-value: fewer than two finished seeds on a side)")
    return {"text": text, "batch_size": rec["batch_size"], "learning_rate": rec["learning_rate"],
            "measured_speedup": measured, "predicted_speedup": rec["predicted_speedup"]["time_to_target"],
            "predicted_throughput_speedup": rec["predicted_speedup"]["throughput"],
            "metric": comparison.get("metric"), "metric_difference": diff, "p_value": p,
            "device": rec["device"].get("name")}


def autopilot_task(ctx: JobContext) -> None:
    """The body of an ``autopilot`` job."""
    from engine.jobs.start import start_noise, start_profile, start_train
    from engine.measure.noise import default_warm_steps
    from engine.measure.profiler import ProfileConfig
    from engine.measure.train import TrainConfig
    from engine.workloads import load_workload

    params = ctx.params
    config = AutopilotConfig(**params.get("autopilot", {}))
    spec, options, device = params["workload"], params.get("options") or {}, params["device"]
    children: list[str] = []

    def phase(name: str, fraction: float, **extra) -> None:
        index = PHASES.index(name)
        ctx.spool.emit(events.AUTOPILOT_PHASE, phase=name, index=index, **extra)
        ctx.progress(name, (index + fraction) / len(PHASES), children=children, **extra)

    def wait_for(job_ids: list[str], name: str) -> list[str]:
        states = []
        for k, job_id in enumerate(job_ids):
            while True:
                state = jobs.derive_state(ctx.home.job_dir(job_id))
                if state in jobs.FINAL_STATES:
                    break
                status = jobs.read_status(ctx.home.job_dir(job_id)) or {}
                phase(name, (k + (status.get("progress") or 0.0)) / len(job_ids), job=job_id,
                      detail=status.get("phase"))
                time.sleep(0.5)
            states.append(state)
        return states

    try:
        workload = load_workload(spec, options)
        epochs = config.epochs or workload.epochs

        # profile
        profile_id = start_profile(ctx.home, spec, options, device,
                                   ProfileConfig(min_seconds=config.min_seconds, max_batch=config.max_batch,
                                                 nproc=config.nproc, compile=config.compile),
                                   launcher=config.launcher)
        children.append(profile_id)
        phase("profile", 0.0, job=profile_id)
        if wait_for([profile_id], "profile") != [jobs.FINISHED]:
            raise LargestepError(f"the profile {profile_id} did not finish")
        profile = events.profile_record(events.read_all(ctx.home.job_dir(profile_id)))

        # noise scale
        noise_id = start_noise(ctx.home, spec, options, device, batch_small=workload.baseline_batch_size,
                               batches=config.noise_batches, warm_steps=default_warm_steps(workload),
                               launcher=config.launcher, compile=config.compile)
        children.append(noise_id)
        phase("noise scale", 0.0, job=noise_id)
        wait_for([noise_id], "noise scale")
        noise = next((e for e in events.read_all(ctx.home.job_dir(noise_id)) if e["type"] == events.NOISE_ESTIMATE),
                     None)
        if noise is not None:
            noise = {**events.noise_row(noise), "id": noise_id}

        # recommendation
        phase("recommendation", 0.0)
        rec = recommend(dict(profile, epochs=epochs), RecommendConfig(rule=config.rule), noise)
        ctx.spool.emit(events.RECOMMENDATION, document=rec)

        # baseline runs, then recommended runs: queued on the device, one at a time
        base = TrainConfig(batch_size=rec["baseline"]["batch_size"], lr=rec["baseline"]["learning_rate"],
                           epochs=epochs, warmup_samples=rec["warmup_samples"], nproc=config.nproc,
                           compile=config.compile)
        factor = 1.0
        if rec.get("noise_scale"):
            b0, b, bn = rec["baseline"]["batch_size"], rec["batch_size"], rec["noise_scale"]
            factor = min(MAX_EPOCH_FACTOR, (b + bn) / (b0 + bn))  # S(B) B / S(B0) B0: the data the larger batch needs
        chosen = TrainConfig(batch_size=rec["batch_size"], lr=rec["learning_rate"], epochs=epochs * factor,
                             warmup_samples=rec["warmup_samples"], nproc=config.nproc, compile=config.compile)
        baseline_ids = start_train(ctx.home, spec, options, device, base, config.repeats, role="baseline",
                                   recommendation_id=rec["recommendation_id"], launcher=config.launcher)
        recommended_ids = start_train(ctx.home, spec, options, device, chosen, config.repeats,
                                      role="recommended", recommendation_id=rec["recommendation_id"],
                                      launcher=config.launcher)
        children.extend(baseline_ids + recommended_ids)
        phase("baseline runs", 0.0, run_ids=baseline_ids)
        base_states = wait_for(baseline_ids, "baseline runs")
        phase("recommended runs", 0.0, run_ids=recommended_ids)
        rec_states = wait_for(recommended_ids, "recommended runs")

        # comparison
        phase("comparison", 0.0)
        groups, evals = [], []
        for name, ids, states in (("baseline", baseline_ids, base_states),
                                  ("recommended", recommended_ids, rec_states)):
            runs = []
            for job_id, state in zip(ids, states):
                spool = events.read_all(ctx.home.job_dir(job_id))
                runs.append({**events.run_record(spool, job_id), "state": state})
                evals += events.evaluations(spool, job_id)
            groups.append((name, runs))
        comparison = compare_groups(groups, pd.DataFrame(evals, columns=["run_id", "step", "epoch", "samples",
                                                                         "wall_time_s", "train_time_s", "val_loss"]),
                                    tolerance=config.tolerance)
        result = headline(rec, comparison)
        ctx.spool.emit(events.AUTOPILOT_RESULT, headline=result, comparison=comparison,
                       recommendation_id=rec["recommendation_id"], profile_id=profile_id, noise_id=noise_id,
                       baseline_runs=baseline_ids, recommended_runs=recommended_ids,
                       epochs={"baseline": epochs, "recommended": epochs * factor}, config=asdict(config))
        ctx.progress("done", 1.0, headline=result["text"])
    except BaseException:
        for job_id in children:  # cancelled or failed: take the children down too
            try:
                jobs.cancel(ctx.home, job_id, grace_s=2.0)
            except LargestepError:
                pass
        raise
