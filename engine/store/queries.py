"""Every query the CLI, the dashboard and the report make: plain dicts and DataFrames out.

A query that answers in dicts reads its rows straight from the cursor (:func:`records`), so a command that
needs nothing else never imports pandas (about 0.35 s); DataFrames (the listings, the charts' data) come
from DuckDB's ``.df()``, which imports it when first asked.
"""

from __future__ import annotations

import datetime
import decimal
import json
from typing import TYPE_CHECKING, Any

from ..errors import StoreError, UsageError

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "list_profiles",
    "resolve_profile_id",
    "load_profile",
    "recommendation_inputs",
    "profile_points",
    "profile_telemetry",
    "list_jobs",
    "get_job",
    "load_noise",
    "load_noise_curve",
    "load_stability",
    "list_noise_estimates",
    "load_recommendation",
    "list_recommendations",
    "list_runs",
    "get_run",
    "runs_in",
    "run_evaluations",
    "run_metrics",
    "load_autopilot",
    "list_devices",
    "frame_records",
    "records",
    "RUN_CURVE_AXES",
    "RUN_CURVE_BUCKETS",
    "run_metric_names",
    "run_curves",
    "batch_changes",
    "recommendation_runs",
    "autopilot_for_recommendation",
    "runs_by_id",
    "read_recommendation",
    "comparison_tolerances",
    "step_time_biases",
    "list_verifications",
    "verification_points",
    "load_verification",
]


def list_profiles(con) -> pd.DataFrame:
    return con.execute(
        "SELECT p.id, p.workload, p.device_name, p.device_kind, p.dtype, p.started_at, p.ended_at, p.stop_reason, "
        "p.saturation_batch, p.inconsistency, j.state, "
        "(SELECT count(*) FROM profile_points pp WHERE pp.profile_id = p.id AND pp.status = 'ok') AS ok_points, "
        "(SELECT max(batch_size) FROM profile_points pp WHERE pp.profile_id = p.id AND pp.status = 'ok') AS max_ok_batch "
        "FROM profiles p LEFT JOIN jobs j ON j.id = p.job_id ORDER BY p.started_at DESC"
    ).df()


def resolve_profile_id(con, profile_id: str | None) -> str | None:
    """An explicit id if it exists; ``latest`` or None: the newest profile with measured points."""
    if profile_id and profile_id != "latest":
        row = con.execute("SELECT id FROM profiles WHERE id = ?", [profile_id]).fetchone()
        return row[0] if row else None
    row = con.execute(
        "SELECT p.id FROM profiles p WHERE EXISTS (SELECT 1 FROM profile_points pp WHERE pp.profile_id = p.id "
        "AND pp.status = 'ok') ORDER BY p.started_at DESC LIMIT 1"
    ).fetchone()
    return row[0] if row else None


def load_profile(con, profile_id: str | None = "latest") -> dict | None:
    """One profile with its points (as dicts, increasing batch), or None."""
    resolved = resolve_profile_id(con, profile_id)
    if resolved is None:
        return None
    [profile] = records(
        con.execute(
            "SELECT p.*, j.state, d.total_memory_bytes AS device_total_memory_bytes FROM profiles p "
            "LEFT JOIN jobs j ON j.id = p.job_id LEFT JOIN devices d ON d.id = p.device_id WHERE p.id = ?",
            [resolved],
        )
    )
    for key in ("config", "versions", "options", "math_settings"):
        if isinstance(profile.get(key), str):
            profile[key] = json.loads(profile[key])
    profile["points"] = records(con.execute(_PROFILE_POINTS, [resolved]))
    return profile


def recommendation_inputs(
    con, profile_id: str | None, noise_id: str | None = None, stored_noise: bool = True
) -> tuple[dict, dict | None]:
    """The profile and the noise estimate a recommendation is made from. ``noise_id`` None and
    ``stored_noise``: the newest reliable estimate for the profile's workload. UsageError when missing."""
    profile = load_profile(con, profile_id or "latest")
    if profile is None:
        if profile_id and profile_id != "latest":
            raise UsageError(f"no profile {profile_id!r}; see `largestep profiles`")
        raise UsageError("no profile yet: run `largestep profile --workload W` first")
    noise = None
    if noise_id is not None:
        noise = load_noise(con, noise_id)
        if noise is None:
            raise UsageError(f"no noise estimate {noise_id!r}")
    elif stored_noise:
        noise = load_noise(con, None, workload=profile["workload"])
    return profile, noise


_PROFILE_POINTS = "SELECT * FROM profile_points WHERE profile_id = ? ORDER BY batch_size"


def profile_points(con, profile_id: str) -> pd.DataFrame:
    return con.execute(_PROFILE_POINTS, [profile_id]).df()


def profile_telemetry(con, profile_id: str) -> pd.DataFrame:
    return con.execute(
        "SELECT t.* FROM telemetry t JOIN profiles p ON p.job_id = t.job_id WHERE p.id = ? ORDER BY t.t",
        [profile_id],
    ).df()


def list_jobs(con, kind: str | None = None, states: list[str] | None = None) -> pd.DataFrame:
    return con.execute(
        "SELECT id, kind, state, workload, device, created_at, started_at, ended_at, phase, progress, error "
        "FROM jobs WHERE (? IS NULL OR kind = ?) AND (? IS NULL OR list_contains(?, state)) ORDER BY created_at DESC",
        [kind, kind, states, states],
    ).df()


def get_job(con, job_id: str) -> dict | None:
    found = records(con.execute("SELECT * FROM jobs WHERE id = ?", [job_id]))
    return found[0] if found else None


def load_noise(con, noise_id: str | None = None, workload: str | None = None) -> dict | None:
    """One noise estimate by id, or the newest reliable one (for ``workload`` if given)."""
    if noise_id and noise_id != "latest":
        cursor = con.execute("SELECT * FROM noise_estimates WHERE id = ?", [noise_id])
    else:
        cursor = con.execute(
            "SELECT * FROM noise_estimates WHERE b_simple IS NOT NULL AND (? IS NULL OR workload = ?) "
            "ORDER BY created_at DESC LIMIT 1",
            [workload, workload],
        )
    found = records(cursor)
    return found[0] if found else None


def load_noise_curve(con, curve_id: str | None = None, workload: str | None = None) -> list[dict]:
    """A noise curve's points by fraction, by its id, or the newest curve (for ``workload`` if given);
    [] when there is none."""
    if not curve_id or curve_id == "latest":
        row = con.execute(
            "SELECT curve_id FROM noise_curve_points WHERE (? IS NULL OR workload = ?) "
            "ORDER BY created_at DESC LIMIT 1",
            [workload, workload],
        ).fetchone()
        if row is None:
            return []
        curve_id = row[0]
    return records(con.execute("SELECT * FROM noise_curve_points WHERE curve_id = ? ORDER BY fraction", [curve_id]))


def load_stability(con, check_id: str) -> dict | None:
    found = records(con.execute("SELECT * FROM stability_checks WHERE id = ?", [check_id]))
    if not found:
        return None
    check = found[0]
    check["losses"] = [None if x is None or x != x else x for x in check["losses"]]
    return check


def list_noise_estimates(con) -> pd.DataFrame:
    return con.execute("SELECT * FROM noise_estimates ORDER BY created_at DESC").df()


def load_recommendation(con, rec_id: str | None = "latest") -> dict | None:
    if rec_id and rec_id != "latest":
        row = con.execute("SELECT document FROM recommendations WHERE id = ?", [rec_id]).fetchone()
    else:
        row = con.execute(
            "SELECT document FROM recommendations ORDER BY created_at DESC, rowid DESC LIMIT 1"
        ).fetchone()
    return json.loads(row[0]) if row else None


def read_recommendation(home, rec_id: str = "latest") -> dict:
    """One recommendation for a process that must not hold the database (a run tracked from the
    user's code): one short read under the store's lock. UsageError when there is none."""
    from .connection import connect

    if not home.database.exists():
        raise UsageError(f"no recommendations in {home.root} yet: run `largestep recommend` (or set LARGESTEP_HOME)")
    with connect(home) as con:
        rec = load_recommendation(con, rec_id)
    if rec is None:
        raise UsageError(
            f"no recommendation {rec_id!r} in {home.root}; see `largestep recommend` or the Recommend page"
        )
    return rec


def list_recommendations(con) -> pd.DataFrame:
    return con.execute(
        "SELECT id, created_at, workload, profile_id, noise_id, batch_size, learning_rate, warmup_steps, rule, "
        "baseline_batch_size, baseline_lr, speedup_throughput, speedup_time_to_target, accepted_load FROM recommendations "
        "ORDER BY created_at DESC"
    ).df()


# A run that has not started yet (PENDING) has no row in runs: what it will run comes from its job's
# request (spec.json, ingested as jobs.spec), so lists show its batch, rate, seed and group, not dashes.
# TRY_CAST: a request whose number the columns cannot hold (a job set aside for it) lists a dash there,
# never fails the listing of every run.
_PLANNED = "j.spec->'$.params.config'"
_RUN_GROUP = f"coalesce(r.group_id, {_PLANNED}->>'$.group')"
_RUN_COLUMNS = (
    "coalesce(r.id, j.id) AS id, "
    f"{_RUN_GROUP} AS group_id, coalesce(r.role, j.spec->>'$.params.role') AS role, "
    "j.state, coalesce(r.workload, j.workload) AS workload, r.device_name, "
    f"coalesce(r.batch_size, TRY_CAST({_PLANNED}->>'$.batch_size' AS INTEGER)) AS batch_size, "
    "r.micro_batch_size, "
    f"coalesce(r.accumulate, TRY_CAST({_PLANNED}->>'$.accumulate' AS INTEGER)) AS accumulate, "
    f"coalesce(r.lr, TRY_CAST({_PLANNED}->>'$.lr' AS DOUBLE)) AS lr, "
    f"coalesce(r.seed, TRY_CAST({_PLANNED}->>'$.seed' AS INTEGER)) AS seed, "
    "r.epochs, r.tags, r.started_at, coalesce(r.ended_at, j.ended_at) AS ended_at, r.steps, r.wall_time_s, "
    "r.train_time_s, r.final_val_loss, r.best_val_loss, r.final_primary_metric, r.primary_metric, "
    "r.primary_metric_mode, r.reached_target, r.time_to_target_s, r.peak_memory_bytes, r.stop_reason, "
    "r.recommendation_id, j.error, coalesce(j.set_aside, false) AS set_aside, j.progress, j.phase, "
    "j.created_at, r.background_cpu_pct, "
    "r.background_cpu_p90_pct, r.background_gpu_processes, r.background_gpu_mem_bytes"
)


def list_runs(
    con, states: list[str] | None = None, group: str | None = None, workload: str | None = None
) -> pd.DataFrame:
    """Training runs with their job state, newest first. Jobs not yet started appear with their spec."""
    return con.execute(
        f"SELECT {_RUN_COLUMNS} FROM jobs j LEFT JOIN runs r ON r.id = j.id WHERE j.kind = 'train' "
        f"AND (? IS NULL OR list_contains(?, j.state)) AND (? IS NULL OR {_RUN_GROUP} = ? OR j.id = ?) "
        "AND (? IS NULL OR r.workload = ?) ORDER BY j.created_at DESC",
        [states, states, group, group, group, workload, workload],
    ).df()


def get_run(con, run_id: str) -> dict | None:
    found = records(
        con.execute(
            f"SELECT {_RUN_COLUMNS}, r.config, r.versions, r.final_metrics, r.options, r.workload_spec, "
            "r.warmup_samples, r.schedule, r.dtype, r.target_val_loss, r.n_params, r.samples, r.math_settings "
            "FROM runs r JOIN jobs j ON j.id = r.id WHERE r.id = ?",
            [run_id],
        )
    )
    if not found:
        return None
    run = found[0]
    for key in ("config", "versions", "final_metrics", "options", "math_settings"):
        if isinstance(run.get(key), str):
            run[key] = json.loads(run[key])
    return run


def runs_in(con, run_or_group: str) -> list[str]:
    """The run ids an argument names: one run, or every run of a group."""
    rows = con.execute(
        "SELECT id FROM runs WHERE id = ? OR group_id = ? ORDER BY seed, id", [run_or_group, run_or_group]
    ).fetchall()
    return [r[0] for r in rows]


def run_evaluations(con, run_ids: list[str]) -> pd.DataFrame:
    """Validation loss at each evaluation, with the training and wall time it was reached at."""
    return con.execute(
        "SELECT run_id, step, epoch, samples, wall_time_s, train_time_s, value AS val_loss FROM metrics "
        "WHERE list_contains(?, run_id) AND name = 'val_loss' ORDER BY run_id, step",
        [run_ids],
    ).df()


def run_metrics(con, run_ids: list[str], names: list[str] | None = None) -> pd.DataFrame:
    return con.execute(
        "SELECT * FROM metrics WHERE list_contains(?, run_id) AND (? IS NULL OR list_contains(?, name)) "
        "ORDER BY run_id, name, step",
        [run_ids, names, names],
    ).df()


def load_autopilot(con, autopilot_id: str | None = "latest") -> dict | None:
    """One autopilot with its job state, or the newest."""
    sql = (
        "SELECT a.*, j.state, j.progress, j.error, j.created_at FROM autopilots a JOIN jobs j ON j.id = a.id "
        "WHERE (? IS NULL OR a.id = ?) ORDER BY j.created_at DESC LIMIT 1"
    )
    wanted = None if autopilot_id in (None, "latest") else autopilot_id
    found = records(con.execute(sql, [wanted, wanted]))
    if not found:
        return None
    record = found[0]
    for key in ("headline", "comparison"):
        if isinstance(record.get(key), str):
            record[key] = json.loads(record[key])
    return record


def list_devices(con) -> pd.DataFrame:
    return con.execute("SELECT * FROM devices ORDER BY last_seen DESC").df()


def records(cursor) -> list[dict[str, Any]]:
    """A query's rows as plain dicts, as :func:`frame_records` gives a DataFrame's, without pandas: NaN -> None,
    timestamps -> ISO 8601 text, decimals -> floats."""
    names = [column[0] for column in cursor.description]
    return [{name: _plain(value) for name, value in zip(names, row)} for row in cursor.fetchall()]


def _plain(value: Any) -> Any:
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, (datetime.datetime, datetime.date)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    return value


def frame_records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """DataFrame rows as plain dicts: NaN/NaT -> None, numpy scalars and arrays -> Python values."""
    import pandas as pd

    out = []
    for row in frame.to_dict(orient="records"):
        clean = {}
        for key, value in row.items():
            if hasattr(value, "tolist"):
                value = value.tolist()
            elif isinstance(value, pd.Timestamp):
                value = value.isoformat()
            elif value is pd.NaT:
                value = None
            if isinstance(value, float) and value != value:
                value = None
            clean[key] = value
        out.append(clean)
    return out


# -- run curves (the Runs page) ---------------------------------------------------------------------

RUN_CURVE_AXES = ("step", "epoch", "samples", "wall_time_s", "train_time_s")  # metrics columns usable as x
RUN_CURVE_BUCKETS = 1000  # at most this many points per run and metric reach the browser


def run_metric_names(con, run_ids: list[str]) -> list[str]:
    """The metric names recorded for any of ``run_ids``, sorted."""
    if not run_ids:
        return []
    rows = con.execute(
        "SELECT DISTINCT name FROM metrics WHERE run_id IN (SELECT unnest(?)) ORDER BY name", [list(run_ids)]
    ).fetchall()
    return [r[0] for r in rows]


def run_curves(
    con, run_ids: list[str], name: str, x: str = "step", buckets: int = RUN_CURVE_BUCKETS, log_x: bool = False
) -> pd.DataFrame:
    """One metric of several runs, downsampled in DuckDB to at most ``buckets`` points per run.

    Each run's x range is cut into ``buckets`` equal slices (of log10(x) with ``log_x``, for a log
    axis; points at x <= 0 are then left out, a log axis cannot show them). Each slice keeps its
    lowest and highest value and its last point (by step), so a spike survives as a slice's
    ``y_max`` however far the series is thinned. Columns: run_id, bucket, n, x_last, y_min,
    y_max, y_last; ordered by run and x.
    """
    if x not in RUN_CURVE_AXES:
        raise StoreError(f"cannot chart against {x!r}; choose one of {', '.join(RUN_CURVE_AXES)}")
    if not run_ids:
        import pandas as pd

        return pd.DataFrame(columns=["run_id", "bucket", "n", "x_last", "y_min", "y_max", "y_last"])
    position = f"log10({x})" if log_x else x  # x: one of our constant column names, never user text
    return con.execute(
        f"""
        WITH points AS (
            SELECT run_id, step, {x} AS x, {position} AS pos, value AS y FROM metrics
            WHERE run_id IN (SELECT unnest($runs)) AND name = $name AND {x} IS NOT NULL
              AND value IS NOT NULL AND isfinite(value) AND ({"" if log_x else "TRUE OR "}{x} > 0)
        ), bounds AS (
            SELECT run_id, min(pos) AS lo, max(pos) - min(pos) AS span FROM points GROUP BY run_id
        )
        SELECT p.run_id,
               CAST(least(floor(coalesce((p.pos - b.lo) / nullif(b.span, 0), 0) * $buckets), $buckets - 1)
                    AS INTEGER) AS bucket,
               count(*) AS n, arg_max(p.x, p.step) AS x_last, min(p.y) AS y_min, max(p.y) AS y_max,
               arg_max(p.y, p.step) AS y_last
        FROM points p JOIN bounds b USING (run_id)
        GROUP BY p.run_id, bucket ORDER BY p.run_id, bucket
        """,
        {"runs": list(run_ids), "name": name, "buckets": int(buckets)},
    ).df()


def batch_changes(con, run_ids: list[str]) -> pd.DataFrame:
    """Where a batch schedule changed each run's batch (the ``batch_size`` values a run logs at each
    change): run_id, step, epoch, samples, wall_time_s, train_time_s, batch_size; by run and step."""
    return con.execute(
        "SELECT run_id, step, epoch, samples, wall_time_s, train_time_s, TRY_CAST(value AS BIGINT) AS batch_size "
        "FROM metrics WHERE run_id IN (SELECT unnest($runs)) AND name = 'batch_size' ORDER BY run_id, step",
        {"runs": list(run_ids)},
    ).df()


# -- recommendation pages and the HTML report (Recommend, Planner, Export) ----------------------


def recommendation_runs(con, recommendation_id: str) -> pd.DataFrame:
    """The training runs made for a recommendation (role baseline or recommended), oldest first."""
    return con.execute(
        f"SELECT {_RUN_COLUMNS} FROM runs r JOIN jobs j ON j.id = r.id WHERE r.recommendation_id = ? "
        "AND r.role IN ('baseline', 'recommended') ORDER BY j.created_at, r.seed, r.id",
        [recommendation_id],
    ).df()


def autopilot_for_recommendation(con, recommendation_id: str) -> dict | None:
    """The newest autopilot that made ``recommendation_id``, with its headline; None if none did."""
    row = con.execute(
        "SELECT a.id FROM autopilots a JOIN jobs j ON j.id = a.id WHERE a.recommendation_id = ? "
        "ORDER BY j.created_at DESC LIMIT 1",
        [recommendation_id],
    ).fetchone()
    return load_autopilot(con, row[0]) if row else None


def comparison_tolerances(con, run_ids: list[str]) -> dict | None:
    """The tolerances an autopilot compared any of these runs with (the newest such autopilot):
    {"autopilot", "tolerance", "quality_tolerance"}; None when no autopilot compared them. Every view of
    the same runs judges with the tolerances their comparison was made with."""
    if not run_ids:
        return None
    row = con.execute(
        "SELECT a.id, a.comparison FROM autopilots a JOIN jobs j ON j.id = a.id WHERE a.comparison IS NOT NULL "
        "AND list_has_any(list_concat(coalesce(a.baseline_runs, []), coalesce(a.recommended_runs, [])), ?) "
        "ORDER BY j.created_at DESC LIMIT 1",
        [list(run_ids)],
    ).fetchone()
    if row is None:
        return None
    comparison = json.loads(row[1]) if isinstance(row[1], str) else row[1]
    quality = comparison.get("quality") or {}
    if comparison.get("tolerance") is None or quality.get("tolerance_share") is None:
        return None
    return {
        "autopilot": row[0],
        "tolerance": float(comparison["tolerance"]),
        "quality_tolerance": float(quality["tolerance_share"]),
    }


def step_time_biases(con, workload: str | None, device_id: str | None) -> list[float]:
    """How far the profile's step-time factor was off in earlier verifications of this workload on this device:
    each one's measured time-per-step ratio over its predicted one (1.0: the profile had it right)."""
    from ..plan.calibration import step_time_bias

    return [
        bias for point in verification_points(con, workload, device_id) if (bias := step_time_bias(point)) is not None
    ]


def list_verifications(con, workload: str | None = None, device: str | None = None) -> list[dict]:
    """Every verification (a calibration point), oldest first; ``device``: its id or its name."""
    found = records(
        con.execute(
            "SELECT * FROM verifications WHERE (? IS NULL OR workload = ?) AND (? IS NULL OR device_id = ? "
            "OR device_name = ?) ORDER BY created_at, id",
            [workload, workload, device, device, device],
        )
    )
    for row in found:
        if isinstance(row.get("comparison"), str):
            row["comparison"] = json.loads(row["comparison"])
    return found


def verification_points(con, workload: str | None, device_id: str | None) -> list[dict]:
    """The calibration points a recommendation on ``workload`` and ``device_id`` learns from, oldest first."""
    return records(
        con.execute(
            "SELECT * EXCLUDE (comparison) FROM verifications WHERE workload IS NOT DISTINCT FROM ? "
            "AND device_id IS NOT DISTINCT FROM ? ORDER BY created_at, id",
            [workload, device_id],
        )
    )


def load_verification(con, verification_id: str) -> dict | None:
    found = records(con.execute("SELECT * FROM verifications WHERE id = ?", [verification_id]))
    for row in found:
        if isinstance(row.get("comparison"), str):
            row["comparison"] = json.loads(row["comparison"])
    return found[0] if found else None


def runs_by_id(con, run_ids: list[str]) -> list[dict]:
    """Several started runs (the columns of :func:`list_runs`) in one query, in the order asked."""
    if not run_ids:
        return []
    by_id = {
        r["id"]: r
        for r in records(
            con.execute(
                f"SELECT {_RUN_COLUMNS} FROM runs r JOIN jobs j ON j.id = r.id WHERE r.id IN (SELECT unnest(?))",
                [list(run_ids)],
            )
        )
    }
    return [by_id[i] for i in run_ids if i in by_id]
