"""Benchmark (not a test): the Runs page's server-side cost of charting 10 runs out of 50.

A home is filled with 50 finished runs (5 workload configs x 10 seeds, in groups of repeats),
each with 20,000 logged steps of train_loss, lr and samples_per_s (60,000 metric rows a run,
3 million in all) and a validation loss every 500 steps, bulk-inserted as DataFrames. Then,
for 10 selected runs (two groups of five seeds), it times what the page does on each refresh:

  curves      downsample train_loss in DuckDB (<= 1,000 buckets a run), build the plotly figure
              with EMA smoothing
  comparison  load the groups (all their seeds) and evaluations, compare_groups, build the
              mean ± std figure

both on one short-lived connection (largestep.ui.runs.selection_view), as the page's refresh does.
Target: under 300 ms (median of the repeats).

    python bench/bench_dashboard_query.py [--runs 50] [--points 20000] [--repeats 7] [--keep DIR]

``--keep DIR`` leaves the filled home in DIR (for bench_runs_page_browser.py).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from largestep import store  # noqa: E402
from largestep.home import Home  # noqa: E402
from largestep.ui import runs as runviews  # noqa: E402

SELECTED = 10  # runs charted at once
TARGET_MS = 300.0
EVAL_EVERY = 500  # steps between validation losses
SEEDS = 10  # runs per group


def fill(home: Home, n_runs: int, points: int) -> list[str]:
    """50 finished runs in groups of ``SEEDS``, with their metrics; returns the run ids."""
    rng = np.random.default_rng(0)
    now = pd.Timestamp.now(tz="UTC")
    run_rows, job_rows, ids = [], [], []
    with store.connect(home) as con:
        for r in range(n_runs):
            run_id, group = f"trai-{r:05d}", f"grp-{r // SEEDS:03d}"
            batch = 32 * 2 ** (r // SEEDS)
            step = np.arange(points)
            step_s = 0.004 * (1 + 0.1 * (r // SEEDS))
            loss = 2.0 * np.exp(-step * batch / 2e6) + 0.05 + 0.02 * rng.standard_normal(points) ** 2
            loss[rng.integers(points)] += 5.0  # one spike a run, as a real run has now and then
            base = {
                "run_id": run_id,
                "step": step,
                "epoch": step * batch / 50_000,
                "samples": step * batch,
                "wall_time_s": step * step_s * 1.1,
                "train_time_s": step * step_s,
            }
            frame = pd.concat(
                [
                    pd.DataFrame({**base, "name": "train_loss", "value": loss}),
                    pd.DataFrame({**base, "name": "lr", "value": np.full(points, 1e-3 * batch / 32)}),
                    pd.DataFrame(
                        {
                            **base,
                            "name": "samples_per_s",
                            "value": batch / step_s * (1 + 0.05 * rng.standard_normal(points)),
                        }
                    ),
                ]
            )
            evals = step[EVAL_EVERY - 1 :: EVAL_EVERY]
            val = pd.DataFrame({k: (v[evals] if isinstance(v, np.ndarray) else v) for k, v in base.items()})
            val["name"], val["value"] = "val_loss", loss[evals] * 1.05
            con.register("incoming", pd.concat([frame, val], ignore_index=True))
            con.execute("INSERT INTO metrics BY NAME SELECT * FROM incoming")
            con.unregister("incoming")
            wall = float(points * step_s * 1.1)
            job_rows.append(
                {
                    "id": run_id,
                    "kind": "train",
                    "state": "FINISHED",
                    "workload": "fraud-gru",
                    "device": "cpu",
                    "created_at": now - pd.Timedelta(seconds=n_runs - r),
                    "spool_offset": 0,
                }
            )
            run_rows.append(
                {
                    "id": run_id,
                    "group_id": group,
                    "role": "baseline" if r < SEEDS else None,
                    "workload": "fraud-gru",
                    "batch_size": batch,
                    "lr": 1e-3 * batch / 32,
                    "seed": r % SEEDS,
                    "epochs": float(points * batch / 50_000),
                    "started_at": now,
                    "ended_at": now,
                    "steps": points,
                    "wall_time_s": wall,
                    "train_time_s": points * step_s,
                    "final_val_loss": float(val["value"].iloc[-1]),
                    "best_val_loss": float(val["value"].min()),
                    "primary_metric": "accuracy",
                    "primary_metric_mode": "max",
                    "final_primary_metric": float(0.9 + 0.01 * rng.standard_normal()),
                }
            )
            ids.append(run_id)
        for table, rows in (("jobs", job_rows), ("runs", run_rows)):
            con.register("incoming", pd.DataFrame(rows))
            con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM incoming")
            con.unregister("incoming")
        con.execute("CHECKPOINT")
    return ids


def timed(fn, repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--points", type=int, default=20_000, help="logged steps per run")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--keep", type=Path, help="fill this home and keep it")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        home = Home(args.keep if args.keep else Path(tmp) / "home")
        start = time.perf_counter()
        ids = fill(home, args.runs, args.points)
        print(
            f"filled {args.runs} runs x {args.points:,} steps in {time.perf_counter() - start:.1f} s; "
            f"database {home.database.stat().st_size / 2**20:.1f} MiB ({home.database})"
        )
        with store.connect(home) as con:
            rows = con.execute("SELECT count(*) FROM metrics").fetchone()[0]
            runs = store.list_runs(con)
        print(f"metrics rows: {rows:,}")

        # two groups of five seeds, the first group the baseline
        selected = ids[: SELECTED // 2] + ids[SEEDS : SEEDS + SELECTED // 2]
        labels = runviews.run_labels(runs, selected)
        units = runviews.comparison_units(runs, selected)

        def page_refresh():
            return runviews.selection_view(
                home, selected, labels, "train_loss", "train_time_s", smoothing=0.6, units=units, baseline=units[0]
            )

        def query_only():
            with store.connect(home) as con:
                return store.run_curves(con, selected, "train_loss", "train_time_s")

        view, compared = page_refresh()  # warm: imports, DuckDB's first open
        assert view.points <= SELECTED * store.RUN_CURVE_BUCKETS, view.points
        assert compared.error is None, compared.error

        q_ms, _ = timed(query_only, args.repeats)
        c_ms, _ = timed(
            lambda: runviews.curves_view(home, selected, labels, "train_loss", "train_time_s", smoothing=0.6),
            args.repeats,
        )
        k_ms, _ = timed(lambda: runviews.comparison_view(home, units, units[0]), args.repeats)
        total, all_ms = timed(page_refresh, args.repeats)
        print(
            f"selected {SELECTED} runs ({len(units)} groups of repeats, all seeds of each compared): "
            f"{view.points:,} buckets drawn from {SELECTED * args.points:,} train_loss points"
        )
        print(f"  downsampling query alone (connect + SQL)            median {q_ms:7.1f} ms")
        print(f"  curves view alone (connect + query + figure)        median {c_ms:7.1f} ms")
        print(f"  comparison view alone (connect + compare + figure)  median {k_ms:7.1f} ms")
        print(
            f"  page refresh: both on one connection                median {total:7.1f} ms   "
            f"[{', '.join(f'{t:.0f}' for t in all_ms)}]"
        )
        print(
            f"  target < {TARGET_MS:.0f} ms: {'OK' if total < TARGET_MS else 'OVER'} (ratio {total / TARGET_MS:.2f}); "
            f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
        )


if __name__ == "__main__":
    main()
