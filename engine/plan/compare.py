"""Compare training runs honestly: time to the baseline's validation loss, and the final metric.

The first argument is the baseline (a run or a group of repeats). The target is the baseline's
best validation loss (the median over its repeats), loosened by a tolerance. A run's time to
target is the training time (evaluation excluded) at its first evaluation at or below the
target; its wall time there is reported too. With repeats, means and standard deviations, and
Welch's t-test on the final validation metric (scipy), since the groups' variances may differ.
"""

from __future__ import annotations

import math
import statistics

import pandas as pd
from scipy import stats

from engine.errors import UsageError
from engine.format import DASH, mean_std
from engine.units import check_number

__all__ = ["check_tolerance", "compare_groups", "time_to_target", "welch_p_value", "summarize", "comparison_table",
           "comparison_runs"]


def time_to_target(evals: pd.DataFrame, target: float) -> tuple[float | None, float | None]:
    """(training time, wall time) of the first evaluation at or below ``target``; None if never."""
    reached = evals[evals["val_loss"] <= target].sort_values("step")
    if reached.empty:
        return None, None
    first = reached.iloc[0]
    return float(first["train_time_s"]), float(first["wall_time_s"])


def summarize(values: list[float | None]) -> dict:
    """{"mean", "std", "n"} of the finite values (std None with fewer than two)."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else None,
            "n": len(values)}


MAX_TOLERANCE = 10.0    # a target ten times the baseline's loss away is no target


def check_tolerance(tolerance: object) -> float:
    """The share by which the baseline's best validation loss is loosened: finite, 0 to 10."""
    return check_number(tolerance, "--tolerance", low=0, high=MAX_TOLERANCE, low_inclusive=True)


def compare_groups(groups: list[tuple[str, list[dict]]], evals: pd.DataFrame, tolerance: float = 0.01) -> dict:
    """``groups``: (name, runs) pairs, the baseline first; ``evals``: :func:`engine.store.run_evaluations`.

    UsageError when the baseline has no validation loss yet (there is no target to time against).
    """
    check_tolerance(tolerance)
    baseline_name, baseline_runs = groups[0]
    bests = [r["best_val_loss"] for r in baseline_runs if r.get("best_val_loss") is not None]
    if not bests:
        raise UsageError(f"the baseline {baseline_name} has no validation loss yet")
    best = statistics.median(bests)
    target = best + tolerance * abs(best)
    metric = next((r.get("primary_metric") for r in baseline_runs if r.get("primary_metric")), None)
    mode = next((r.get("primary_metric_mode") for r in baseline_runs if r.get("primary_metric_mode")), "max")
    baseline_values = [r.get("final_primary_metric") for r in baseline_runs]

    out_groups = []
    baseline_time = None
    for index, (name, runs) in enumerate(groups):
        rows = []
        for run in runs:
            run_evals = evals[evals["run_id"] == run["id"]]
            train_t, wall_t = time_to_target(run_evals, target)
            rows.append({"id": run["id"], "seed": run.get("seed"), "state": run.get("state"),
                         "time_to_target_s": train_t, "wall_time_to_target_s": wall_t,
                         "final_val_loss": run.get("final_val_loss"), "metric": run.get("final_primary_metric"),
                         "train_time_s": run.get("train_time_s")})
        times = summarize([r["time_to_target_s"] for r in rows])
        values = [r["metric"] for r in rows]
        group = {
            "name": name, "runs": rows, "n": len(rows), "reached": times["n"],
            "batch_size": runs[0].get("batch_size"), "lr": runs[0].get("lr"), "role": runs[0].get("role"),
            "time_to_target_s": times,
            "wall_time_to_target_s": summarize([r["wall_time_to_target_s"] for r in rows]),
            "final_val_loss": summarize([r["final_val_loss"] for r in rows]),
            "metric": summarize(values),
            "speedup": None, "metric_difference": None, "p_value": None,
        }
        if index == 0:
            baseline_time = times["mean"]
        if baseline_time and times["mean"]:
            group["speedup"] = baseline_time / times["mean"]
        base_metric = summarize(baseline_values)["mean"]
        if index > 0 and group["metric"]["mean"] is not None and base_metric is not None:
            group["metric_difference"] = group["metric"]["mean"] - base_metric
            group["p_value"] = welch_p_value(values, baseline_values)
        out_groups.append(group)
    return {"baseline": baseline_name, "target_val_loss": target, "baseline_best_val_loss": best,
            "tolerance": tolerance, "time_basis": "training time, evaluation excluded",
            "metric": metric, "metric_mode": mode, "groups": out_groups}


def welch_p_value(a: list[float | None], b: list[float | None]) -> float | None:
    """Two-sided Welch's t-test p-value; None with fewer than two finite values on either side."""
    a = [v for v in a if v is not None and math.isfinite(v)]
    b = [v for v in b if v is not None and math.isfinite(v)]
    if len(a) < 2 or len(b) < 2:
        return None
    result = stats.ttest_ind(a, b, equal_var=False)
    p = float(result.pvalue)
    return p if math.isfinite(p) else (1.0 if statistics.fmean(a) == statistics.fmean(b) else None)


# -- the comparison as a table (the CLI, the dashboard and the HTML report render it) ------------


def comparison_table(result: dict) -> list[dict]:
    """One row per group of :func:`compare_groups`, in the units people read; the baseline first."""
    metric = result.get("metric") or "metric"
    rows = []
    for index, g in enumerate(result["groups"]):
        baseline = index == 0
        rows.append({
            "group": g["name"], "role": g.get("role") or "", "batch": g.get("batch_size"),
            "lr": f"{g['lr']:.3g}" if g.get("lr") is not None else DASH,
            "reached": f"{g['reached']} of {g['n']}",
            "time to target (s)": mean_std(g["time_to_target_s"]),
            "speedup": "baseline" if baseline else (f"{g['speedup']:.2f}×" if g.get("speedup") is not None else DASH),
            "final val loss": mean_std(g["final_val_loss"], 4),
            f"final {metric}": mean_std(g["metric"], 4),
            "difference": "" if baseline else (f"{g['metric_difference']:+.4f}"
                                               if g.get("metric_difference") is not None else DASH),
            "p (Welch)": "" if baseline else (f"{g['p_value']:.3g}" if g.get("p_value") is not None else DASH),
        })
    return rows


def comparison_runs(result: dict) -> list[dict]:
    """One row per training run of the comparison."""
    def rounded(value, digits=2):
        return None if value is None else round(float(value), digits)

    return [{"group": g["name"], "run": run["id"], "seed": run.get("seed"), "state": run.get("state"),
             "time to target (s)": rounded(run.get("time_to_target_s")),
             "training time (s)": rounded(run.get("train_time_s")),
             "final val loss": rounded(run.get("final_val_loss"), 4), "final metric": rounded(run.get("metric"), 4)}
            for g in result.get("groups") or [] for run in g.get("runs") or []]
