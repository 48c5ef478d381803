"""Compare training runs honestly: time to the baseline's validation loss, and the quality reached.

The first group is the baseline (a run or a group of repeats). The target is the baseline's best
validation loss (the median over its repeats), loosened by a tolerance. A run's time to target
is the training time (evaluation excluded) at its first evaluation at or below the target.

- Censoring, not exclusion: a run that never reached the target counts as "at least its whole
  training time" (infinite when it ended without one: diverged, crashed). Each group's time to target
  is the Kaplan-Meier median over its runs; where fewer than half reached it, only a lower bound is
  known, and the speedup is then only a bound too ("at least", "at most"). The speedup is the ratio of
  the medians, with a bootstrap interval made for censored data and an exact (or permutation) test
  beside it (:mod:`largestep.plan.censored`); the words come from :mod:`largestep.plan.verdict`.
- Quality: the difference in the workload's primary metric (or, without one, the final
  validation loss), Welch's t-test p-value, and the difference's confidence interval held
  against a tolerance: "p > 0.05" on three seeds is not evidence of no difference, an interval
  inside the tolerance is. A seed that diverged or crashed has no value, and counts against
  equivalence rather than dropping out of it; fewer than three seeds an arm say nothing.
- The prediction's two factors beside the measurement: the steps to the target (Kaplan-Meier medians
  of steps, censored as the times are) and the time per step at those medians, so that the two
  measured factors multiply to the measured speedup.
- Conditions: each run records its background load (other processes' share of the machine's CPU,
  other processes on its GPU). Runs whose load differed materially from the rest are flagged, and
  :func:`conditions_text` says which, in words (see :func:`background_conditions` for the rule).

One implementation for every front end: the CLI's `compare`, the Runs page, the HTML report and
the autopilot's headline all call :func:`compare_groups` and render :func:`comparison_table`.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict

import numpy as np
import pandas as pd
from scipy import stats

from ..errors import UsageError
from ..format import DASH, format_bytes, format_pct, mean_std
from ..units import check_number
from .censored import gehan_test, km_medians, ratio_interval
from .verdict import CONFIDENCE, MIN_SEEDS, QUALITY_FAILED, QUALITY_TOO_FEW, failed_text, speedup_verdict

__all__ = [
    "CONFIDENCE",
    "compare_groups",
    "time_to_target",
    "first_reach",
    "km_median",
    "welch_p_value",
    "summarize",
    "comparison_table",
    "comparison_runs",
    "quality_verdict",
    "time_text",
    "speedup_text",
    "check_tolerance",
    "background_conditions",
    "LOAD_DIFFERENCE_PCT",
    "FAILED_STATES",
]

BOOTSTRAP_RESAMPLES = 2000  # resamples of the seeds of each arm, for the speedup's interval
FAILED_STATES = ("DIVERGED", "CRASHED", "FAILED", "KILLED")  # runs that ended without their final values
QUALITY_TOLERANCE = 0.01  # default: a quality difference within 1% of the baseline's value is "no change"
MAX_TOLERANCE = 10.0  # a target (or a quality band) ten times the baseline's value away is none
LOAD_DIFFERENCE_PCT = 20.0  # percentage points of the machine's CPU busy with other processes: conditions differ


def check_tolerance(tolerance: object, what: str = "--tolerance") -> float:
    """A share of the baseline's value (the target's loosening, the quality band): finite, 0 to 10."""
    return check_number(tolerance, what, low=0, high=MAX_TOLERANCE, low_inclusive=True)


def first_reach(evals: pd.DataFrame, target: float) -> dict | None:
    """The first evaluation at or below ``target``: its training time, wall time and step; None if never."""
    reached = evals[evals["val_loss"] <= target].sort_values("step")
    if reached.empty:
        return None
    first = reached.iloc[0]
    return {
        "train_time_s": float(first["train_time_s"]),
        "wall_time_s": float(first["wall_time_s"]),
        "step": int(first["step"]),
    }


def time_to_target(evals: pd.DataFrame, target: float) -> tuple[float | None, float | None]:
    """(training time, wall time) of the first evaluation at or below ``target``; None if never."""
    reach = first_reach(evals, target)
    return (reach["train_time_s"], reach["wall_time_s"]) if reach else (None, None)


def summarize(values: list[float | None]) -> dict:
    """{"mean", "std", "n"} of the finite values (std None with fewer than two)."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return {"mean": None, "std": None, "n": 0}
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else None,
        "n": len(values),
    }


def km_median(reached: list[float], censored: list[float]) -> tuple[float | None, float | None]:
    """(median, lower bound) of a time to target from runs that reached it and runs censored at their
    whole training time (Kaplan-Meier). The median is the earliest time by which half the runs are
    estimated to have reached the target; when that never happens, the median is None and the
    lower bound is the longest time seen."""
    if not reached and not censored:
        return None, None
    median, bound = km_medians(
        np.asarray([*reached, *censored], dtype=float), np.asarray([True] * len(reached) + [False] * len(censored))
    )
    return (None, float(bound)) if math.isnan(median) else (float(median), None)


def _arm_times(rows: list[dict]) -> tuple[list[float], list[float]]:
    """(times of the runs that reached the target, times the others are censored at). A run that ended
    without a training time (diverged, crashed) never gets there at all: censored at infinity."""
    reached = [r["time_to_target_s"] for r in rows if r["time_to_target_s"] is not None]
    censored = [
        r["censored_at_s"] if r["censored_at_s"] is not None else math.inf
        for r in rows
        if r["time_to_target_s"] is None
    ]
    return reached, censored


def _censored_arrays(reached: list[float], censored: list[float]) -> tuple[np.ndarray, np.ndarray]:
    return (np.asarray([*reached, *censored], dtype=float), np.asarray([True] * len(reached) + [False] * len(censored)))


def _speedup(base_rows: list[dict], rows: list[dict], confidence: float) -> dict:
    """The arm's speedup over the baseline: the ratio of medians or, where one is only a bound, the bound;
    the censored-data bootstrap interval and the Gehan permutation test (with MIN_SEEDS seeds an arm)."""
    base_median, base_bound = km_median(*_arm_times(base_rows))
    median, bound = km_median(*_arm_times(rows))
    out = {
        "speedup": None,
        "speedup_bound": None,
        "speedup_interval": None,
        "speedup_resamples": None,
        "speedup_test": None,
    }
    if base_median is not None and median is not None:
        out["speedup"] = base_median / median
    elif base_median is not None and bound is not None:
        out["speedup_bound"] = {"kind": "at most", "value": 0.0 if math.isinf(bound) else base_median / bound}
    elif median is not None and base_bound is not None:
        out["speedup_bound"] = {
            "kind": "at least",
            "value": math.inf if math.isinf(base_bound) else base_bound / median,
        }
    base_t, base_r = _censored_arrays(*_arm_times(base_rows))
    other_t, other_r = _censored_arrays(*_arm_times(rows))
    if len(base_rows) >= 2 and len(rows) >= 2:
        test = gehan_test(base_t, base_r, other_t, other_r)
        out["speedup_test"] = {
            "p": float(test["p"]),
            "exact": bool(test["exact"]),
            "smallest": test["smallest"],
            "name": "Gehan-Wilcoxon permutation test",
        }
    if len(base_rows) >= MIN_SEEDS and len(rows) >= MIN_SEEDS:
        interval = ratio_interval(base_t, base_r, other_t, other_r, confidence, BOOTSTRAP_RESAMPLES)
        low, high = float(interval["low"]), float(interval["high"])
        out["speedup_interval"] = [None if math.isnan(low) else low, None if math.isnan(high) else high]
        out["speedup_resamples"] = {"both_reached": int(interval["both"]), "of": BOOTSTRAP_RESAMPLES}
    return out


def _steps_median(rows: list[dict]) -> tuple[float | None, float | None]:
    """Kaplan-Meier (median, bound) of the steps to the target, censored at each run's steps as times are."""
    reached = [
        float(r["steps_to_target"])
        for r in rows
        if r["time_to_target_s"] is not None and r["steps_to_target"] is not None
    ]
    censored = [
        float(r["steps"]) if r.get("steps") and r["censored_at_s"] is not None else math.inf
        for r in rows
        if r["time_to_target_s"] is None
    ]
    return km_median(reached, censored)


def welch_p_value(a: list[float | None], b: list[float | None]) -> float | None:
    """Two-sided Welch's t-test p-value; None with fewer than two finite values on either side."""
    a = [v for v in a if v is not None and math.isfinite(v)]
    b = [v for v in b if v is not None and math.isfinite(v)]
    if len(a) < 2 or len(b) < 2:
        return None
    result = stats.ttest_ind(a, b, equal_var=False)
    p = float(result.pvalue)
    return p if math.isfinite(p) else (1.0 if statistics.fmean(a) == statistics.fmean(b) else None)


def _difference_interval(a: list[float], b: list[float], confidence: float = CONFIDENCE) -> list[float] | None:
    """The ``confidence`` interval of mean(a) - mean(b) (Welch), or None without two values a side."""
    if len(a) < 2 or len(b) < 2:
        return None
    if statistics.pstdev(a) == 0 and statistics.pstdev(b) == 0:
        d = statistics.fmean(a) - statistics.fmean(b)
        return [d, d]
    ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(confidence_level=confidence)
    return [float(ci.low), float(ci.high)] if math.isfinite(ci.low) and math.isfinite(ci.high) else None


def quality_verdict(difference: float | None, interval: list[float] | None, tolerance: float, mode: str) -> str:
    """ "equivalent" (the interval inside ±tolerance), "worse" or "better" (entirely beyond it, in the
    direction that matters for ``mode``), else "inconclusive" (more seeds would tell)."""
    if difference is None or interval is None:
        return "inconclusive"
    low, high = interval
    if -tolerance <= low and high <= tolerance:
        return "equivalent"
    worse_if_higher = mode == "min"
    if (low > tolerance and worse_if_higher) or (high < -tolerance and not worse_if_higher):
        return "worse"
    if (high < -tolerance and worse_if_higher) or (low > tolerance and not worse_if_higher):
        return "better"
    return "inconclusive"


def _quality(
    rows: list[dict],
    base_rows: list[dict],
    key: str,
    mode: str,
    relative_tolerance: float,
    confidence: float,
    names: tuple[str, str],
) -> dict:
    """The quality difference of an arm from the baseline, its interval and verdict. A seed that ended
    without its final value (diverged, crashed, failed, cancelled) is listed and counts against
    equivalence; with fewer than MIN_SEEDS seeds in an arm there is no verdict."""
    failed = [
        {"group": name, "run": r["id"], "seed": r.get("seed"), "state": r.get("state")}
        for name, arm in zip(names, (base_rows, rows))
        for r in arm
        if r.get("state") in FAILED_STATES
    ]
    a = [v for r in rows if (v := r[key]) is not None and math.isfinite(v)]
    b = [v for r in base_rows if (v := r[key]) is not None and math.isfinite(v)]
    out = {
        "difference": None,
        "interval": None,
        "p_value": None,
        "tolerance": None,
        "verdict": "inconclusive",
        "failed": failed,
        "seeds": min(len(rows), len(base_rows)),
    }
    if a and b:
        difference = statistics.fmean(a) - statistics.fmean(b)
        tolerance = relative_tolerance * abs(statistics.fmean(b))
        interval = _difference_interval(a, b, confidence)
        out.update(
            difference=difference,
            interval=interval,
            p_value=welch_p_value(a, b),
            tolerance=tolerance,
            verdict=quality_verdict(difference, interval, tolerance, mode),
        )
    if min(len(rows), len(base_rows)) < MIN_SEEDS:
        out["verdict"] = QUALITY_TOO_FEW
    elif failed and out["verdict"] != "worse":  # the survivors alone cannot vouch for the arm
        out["verdict"] = QUALITY_FAILED
    return out


def compare_groups(
    groups: list[tuple[str, list[dict]]],
    evals: pd.DataFrame,
    tolerance: float = 0.01,
    quality_tolerance: float = QUALITY_TOLERANCE,
    confidence: float = CONFIDENCE,
) -> dict:
    """``groups``: (name, runs) pairs, the baseline first; ``evals``: :func:`largestep.store.run_evaluations`.

    ``tolerance``: the target is the baseline's best validation loss loosened by this share;
    ``quality_tolerance``: a quality difference within this share of the baseline's value counts as none;
    ``confidence``: of every interval, and one minus the level of the speedup's test (a sequential look
    passes its own, see :func:`largestep.plan.verdict.look_levels`). Both tolerances are stored in the
    result, so every view of it judges with the same ones.
    UsageError when the baseline has no validation loss yet (there is no target to time against).
    """
    check_tolerance(tolerance)
    check_tolerance(quality_tolerance, "--quality-tolerance")
    check_number(confidence, "confidence", low=0, high=1 - 1e-9)
    baseline_name, baseline_runs = groups[0]
    bests = [r["best_val_loss"] for r in baseline_runs if r.get("best_val_loss") is not None]
    if not bests:
        raise UsageError(f"the baseline {baseline_name} has no validation loss yet")
    best = statistics.median(bests)
    target = best + tolerance * abs(best)
    metric = next((r.get("primary_metric") for r in baseline_runs if r.get("primary_metric")), None)
    mode = next((r.get("primary_metric_mode") for r in baseline_runs if r.get("primary_metric_mode")), "max")
    # the quality compared: the workload's primary metric, else the final validation loss
    quality_name, quality_mode = (metric, mode) if metric else ("final validation loss", "min")
    quality_key = "metric" if metric else "final_val_loss"

    out_groups, base_rows = [], None
    for index, (name, runs) in enumerate(groups):
        rows = [_run_row(run, evals, target) for run in runs]
        reached, censored = _arm_times(rows)
        median, at_least = km_median(reached, censored)
        times = summarize([r["time_to_target_s"] for r in rows])
        group = {
            "name": name,
            "runs": rows,
            "n": len(rows),
            "reached": times["n"],
            "batch_size": runs[0].get("batch_size"),
            "lr": runs[0].get("lr"),
            "role": runs[0].get("role"),
            "time_to_target_s": times,
            "time_to_target": {
                "median_s": median,
                "at_least_s": at_least,
                "reached": times["n"],
                "n": len(rows),
                "censored_runs": [r["id"] for r in rows if r["time_to_target_s"] is None],
            },
            "wall_time_to_target_s": summarize([r["wall_time_to_target_s"] for r in rows]),
            "final_val_loss": summarize([r["final_val_loss"] for r in rows]),
            "metric": summarize([r["metric"] for r in rows]),
            "time_per_step_s": summarize([r["time_per_step_s"] for r in rows]),
            "steps_to_target": summarize([r["steps_to_target"] for r in rows]),
            "steps_to_target_median": dict(zip(("median", "at_least"), _steps_median(rows))),
            "speedup": None,
            "speedup_interval": None,
            "metric_difference": None,
            "p_value": None,
            "quality": None,
            "verdict": None,
        }
        if index == 0:
            base_rows = rows
        else:
            group.update(_speedup(base_rows, rows, confidence))
            group["verdict"] = asdict(speedup_verdict(group, len(base_rows), confidence))
            group["quality"] = _quality(
                rows, base_rows, quality_key, quality_mode, quality_tolerance, confidence, (baseline_name, name)
            )
            if metric:
                group["metric_difference"] = group["quality"]["difference"]
                group["p_value"] = group["quality"]["p_value"]
        out_groups.append(group)
    conditions = background_conditions(out_groups)
    return {
        "baseline": baseline_name,
        "target_val_loss": target,
        "baseline_best_val_loss": best,
        "tolerance": tolerance,
        "time_basis": "training time, evaluation excluded",
        "time_statistic": "Kaplan-Meier median over seeds; a run that never reached the target counts as at "
        "least its whole training time",
        "confidence": confidence,
        "metric": metric,
        "metric_mode": mode,
        "min_seeds": MIN_SEEDS,
        "quality": {"name": quality_name, "mode": quality_mode, "tolerance_share": quality_tolerance},
        "conditions": conditions,
        "groups": out_groups,
    }


def _run_row(run: dict, evals: pd.DataFrame, target: float) -> dict:
    reach = first_reach(evals[evals["run_id"] == run["id"]], target)
    steps, train_time = run.get("steps"), run.get("train_time_s")
    return {
        "id": run["id"],
        "seed": run.get("seed"),
        "state": run.get("state"),
        "time_to_target_s": reach["train_time_s"] if reach else None,
        "wall_time_to_target_s": reach["wall_time_s"] if reach else None,
        "steps_to_target": reach["step"] if reach else None,
        "censored_at_s": None if reach else train_time,
        "final_val_loss": run.get("final_val_loss"),
        "metric": run.get("final_primary_metric"),
        "train_time_s": train_time,
        "steps": steps,
        "time_per_step_s": train_time / steps if train_time and steps else None,
        "background_cpu_pct": _finite(run.get("background_cpu_pct")),
        "background_gpu_processes": _finite(run.get("background_gpu_processes")),
        "background_gpu_mem_bytes": _finite(run.get("background_gpu_mem_bytes")),
        "conditions_differ": False,
    }


def _finite(value) -> float | None:
    """A number from a run record (a store row may hold NaN where the column is NULL), else None."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


# -- the conditions the runs ran under ---------------------------------------------------------


def background_conditions(groups: list[dict]) -> dict:
    """Whether the runs of a comparison ran under materially different background load, and which.

    The rule, on each run's mean share of the machine's CPU busy with other processes:
    - arms: when every run of one group ran with more than LOAD_DIFFERENCE_PCT points more of the CPU
      busy than every run of another, the groups ran under different conditions (all their runs are
      flagged, and their medians named);
    - otherwise single runs: a run whose load differs from the median of all the other runs by more
      than LOAD_DIFFERENCE_PCT points, or that shared its GPU with other processes while most others
      had it to themselves, is flagged. (One busy seed of two would move its group's median as much as
      a busy group: it is named as the one run it is.)
    Marks the flagged rows (``conditions_differ``) and sets each group's median ``background_cpu_pct``.
    Returns {"differed", "text", "flagged_runs", "rule"}; text is None when the conditions agreed or
    no run measured its load."""
    for group in groups:
        loads = [r["background_cpu_pct"] for r in group["runs"] if r["background_cpu_pct"] is not None]
        group["background_cpu_pct"] = statistics.median(loads) if loads else None
    rule = (
        f"every run of a group, or one run, with a share of the CPU busy with other processes more than "
        f"{LOAD_DIFFERENCE_PCT:.0f} points from the others', or other processes on a run's GPU"
    )
    measured = [g for g in groups if g["background_cpu_pct"] is not None]
    if len(measured) > 1:
        low = min(measured, key=lambda g: g["background_cpu_pct"])
        high = max(measured, key=lambda g: g["background_cpu_pct"])
        if _least_load(high) - _most_load(low) > LOAD_DIFFERENCE_PCT:
            for group in (low, high):
                for row in group["runs"]:
                    row["conditions_differ"] = True
            text = (
                f"the {high['name']} runs ran with a median {high['background_cpu_pct']:.0f}% of the CPU busy "
                f"with other processes, the {low['name']} runs with {low['background_cpu_pct']:.0f}%"
            )
            return {
                "differed": True,
                "text": text,
                "rule": rule,
                "flagged_runs": [r["id"] for g in (high, low) for r in g["runs"]],
            }
    runs = [(g["name"], r) for g in groups for r in g["runs"]]
    flagged = [
        (name, run, why) for name, run in runs if (why := _run_differs(run, [r for _, r in runs if r is not run]))
    ]
    for _name, run, _why in flagged:
        run["conditions_differ"] = True
    if not flagged:
        return {"differed": False, "text": None, "rule": rule, "flagged_runs": []}
    others = [r for _, r in runs if not r["conditions_differ"]]
    text = "; ".join(f"{name} seed {run.get('seed')} {why}" for name, run, why in flagged)
    if others:  # every run flagged: there are no others to speak of
        text += "; the others " + _others_text(others)
    return {"differed": True, "text": text, "rule": rule, "flagged_runs": [run["id"] for _, run, _ in flagged]}


def _least_load(group: dict) -> float:
    return min(r["background_cpu_pct"] for r in group["runs"] if r["background_cpu_pct"] is not None)


def _most_load(group: dict) -> float:
    return max(r["background_cpu_pct"] for r in group["runs"] if r["background_cpu_pct"] is not None)


def _run_differs(run: dict, others: list[dict]) -> str | None:
    """How ``run``'s conditions differ from the others' (a phrase), or None when they do not."""
    reasons = []
    load = run["background_cpu_pct"]
    other_loads = [r["background_cpu_pct"] for r in others if r["background_cpu_pct"] is not None]
    if load is not None and other_loads and abs(load - statistics.median(other_loads)) > LOAD_DIFFERENCE_PCT:
        reasons.append(f"ran with {load:.0f}% of the CPU busy with other processes")
    gpu = run["background_gpu_processes"]
    other_gpu = [r["background_gpu_processes"] for r in others if r["background_gpu_processes"] is not None]
    if gpu and other_gpu and statistics.median(other_gpu) == 0:
        memory = run.get("background_gpu_mem_bytes")
        count = int(gpu)
        reasons.append(
            f"shared its GPU with {count} other process{'' if count == 1 else 'es'}"
            + (f" ({format_bytes(memory)})" if memory else "")
        )
    return " and ".join(reasons) or None


def _others_text(others: list[dict]) -> str:
    """ "with 2% to 5%" of the CPU busy with other processes (and "alone on the GPU" where measured)."""
    loads = sorted(r["background_cpu_pct"] for r in others if r["background_cpu_pct"] is not None)
    if not loads:
        return "did not measure their load"
    text = (
        f"with {loads[0]:.0f}%" if round(loads[0]) == round(loads[-1]) else f"with {loads[0]:.0f}% to {loads[-1]:.0f}%"
    )
    if any(r["background_gpu_processes"] is not None for r in others):
        text += ", the GPU to themselves"
    return text


# -- the comparison as a table (the CLI, the dashboard and the HTML report render it) ------------


def time_text(time_to_target: dict) -> str:
    """ "12.3 s", or "≥ 40.1 s" when fewer than half the runs reached the target."""
    if time_to_target.get("median_s") is not None:
        return f"{time_to_target['median_s']:.3g} s"
    if time_to_target.get("at_least_s") is not None:
        bound = time_to_target["at_least_s"]
        return "not reached" if math.isinf(bound) else f"≥ {bound:.3g} s"
    return DASH


def speedup_text(group: dict) -> str:
    """The speedup's table cell, as :func:`largestep.plan.verdict.speedup_verdict` words it."""
    verdict = group.get("verdict")
    if verdict:
        return verdict["cell"]
    return DASH if group.get("speedup") is None else f"{group['speedup']:.2f}×"


def comparison_table(result: dict) -> list[dict]:
    """One row per group of :func:`compare_groups`, in the units people read; the baseline first."""
    quality = (result.get("quality") or {}).get("name") or "metric"
    rows = []
    for index, g in enumerate(result["groups"]):
        baseline = index == 0
        q = g.get("quality") or {}
        interval = q.get("interval")
        rows.append(
            {
                "group": g["name"],
                "role": g.get("role") or "",
                "batch": g.get("batch_size"),
                "lr": f"{g['lr']:.3g}" if g.get("lr") is not None else DASH,
                "reached": f"{g['reached']} of {g['n']}",
                "time to target (median)": time_text(g["time_to_target"]),
                "speedup": "baseline" if baseline else speedup_text(g),
                "final val loss": mean_std(g["final_val_loss"], 4),
                f"final {result.get('metric') or 'metric'}": mean_std(g["metric"], 4),
                f"Δ {quality}": ""
                if baseline
                else (
                    DASH
                    if q.get("difference") is None
                    else f"{q['difference']:+.4f}"
                    + (f" ({interval[0]:+.4f} to {interval[1]:+.4f})" if interval else "")
                ),
                "quality": ""
                if baseline
                else q.get("verdict", DASH) + (f" ({failed_text(q['failed'])})" if q.get("failed") else ""),
                "p (Welch)": "" if baseline else (f"{q['p_value']:.3g}" if q.get("p_value") is not None else DASH),
                "background CPU": format_pct(g.get("background_cpu_pct"))
                + (" (differed)" if any(r.get("conditions_differ") for r in g.get("runs") or []) else ""),
            }
        )
    return rows


def comparison_runs(result: dict) -> list[dict]:
    """One row per training run of the comparison."""

    def rounded(value, digits=2):
        return None if value is None else round(float(value), digits)

    return [
        {
            "group": g["name"],
            "run": run["id"],
            "seed": run.get("seed"),
            "state": run.get("state"),
            "time to target (s)": rounded(run.get("time_to_target_s")),
            "censored at (s)": rounded(run.get("censored_at_s")),
            "training time (s)": rounded(run.get("train_time_s")),
            "final val loss": rounded(run.get("final_val_loss"), 4),
            "final metric": rounded(run.get("metric"), 4),
            "background CPU": format_pct(run.get("background_cpu_pct")),
            "conditions": "differed" if run.get("conditions_differ") else "",
        }
        for g in result.get("groups") or []
        for run in g.get("runs") or []
    ]
