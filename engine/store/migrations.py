"""The schema's whole history: one function per migration, applied in order, each recorded in
``_migrations`` in the same transaction (the manner of simonw/llm's migrations). A migration is
never edited once released; a change to the schema is a new function at the end.
"""

from __future__ import annotations

from typing import Callable

import duckdb

__all__ = ["MIGRATIONS", "migrate", "applied_migrations"]

Migration = Callable[[duckdb.DuckDBPyConnection], None]
MIGRATIONS: list[tuple[str, Migration]] = []


def migration(fn: Migration) -> Migration:
    """Register ``fn`` as the next migration; its name (without the leading ``m``) is recorded."""
    MIGRATIONS.append((fn.__name__.removeprefix("m"), fn))
    return fn


@migration
def m001_devices_and_jobs(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("""
        CREATE TABLE devices (
            id VARCHAR PRIMARY KEY,          -- "cpu", "cuda:<uuid>", "mps"
            kind VARCHAR NOT NULL,           -- cpu | cuda | mps
            name VARCHAR,
            total_memory_bytes BIGINT,
            compute_capability VARCHAR,
            uuid VARCHAR,
            cores INTEGER,
            host VARCHAR,
            first_seen TIMESTAMPTZ,
            last_seen TIMESTAMPTZ
        );
        CREATE TABLE jobs (
            id VARCHAR PRIMARY KEY,
            kind VARCHAR NOT NULL,           -- profile | train | noise | autopilot ...
            state VARCHAR NOT NULL,          -- PENDING RUNNING FINISHED FAILED KILLED DIVERGED CRASHED
            workload VARCHAR,
            device VARCHAR,
            created_at TIMESTAMPTZ,
            started_at TIMESTAMPTZ,
            ended_at TIMESTAMPTZ,
            heartbeat_at TIMESTAMPTZ,
            pid INTEGER,
            phase VARCHAR,
            progress DOUBLE,
            error VARCHAR,
            spec JSON,
            spool_offset BIGINT NOT NULL DEFAULT 0   -- bytes of events.jsonl already ingested
        );

    """)


@migration
def m002_profiles(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("""
        CREATE TABLE profiles (
            id VARCHAR PRIMARY KEY,          -- the job id of the profiling job
            job_id VARCHAR NOT NULL,
            workload VARCHAR NOT NULL,
            workload_spec VARCHAR,
            options JSON,
            device_id VARCHAR,
            device_name VARCHAR,
            device_kind VARCHAR,
            dtype VARCHAR,
            started_at TIMESTAMPTZ,
            ended_at TIMESTAMPTZ,
            stop_reason VARCHAR,             -- max | list | dataset | oom | over_budget | plateau | error
            saturation_batch INTEGER,        -- smallest batch reaching 90% of the best throughput
            memory_fit_intercept_bytes DOUBLE,
            memory_fit_slope_bytes DOUBLE,   -- peak memory ~ intercept + slope * batch
            memory_budget_bytes BIGINT,
            baseline_batch_size INTEGER,
            baseline_lr DOUBLE,
            optimizer VARCHAR,
            epochs INTEGER,
            n_train BIGINT,
            telemetry_source VARCHAR,        -- nvml | psutil
            telemetry_reason VARCHAR,        -- why not nvml
            config JSON,
            versions JSON
        );
        CREATE TABLE profile_points (
            profile_id VARCHAR NOT NULL,
            batch_size INTEGER NOT NULL,
            status VARCHAR NOT NULL,         -- ok | oom | over_budget | error
            step_times_s DOUBLE[],           -- raw timed steps
            median_s DOUBLE,
            p25_s DOUBLE,
            p75_s DOUBLE,
            n INTEGER,
            noisy BOOLEAN,
            samples_per_s DOUBLE,
            peak_memory_bytes BIGINT,
            memory_is_estimate BOOLEAN,      -- CPU: parameters + grads + optimizer state + activations
            predicted_memory_bytes BIGINT,
            flops_per_step DOUBLE,
            flops_per_s DOUBLE,
            mean_power_w DOUBLE,
            energy_per_sample_j DOUBLE,
            started_at TIMESTAMPTZ,
            ended_at TIMESTAMPTZ,
            error VARCHAR,
            PRIMARY KEY (profile_id, batch_size)
        );
        CREATE TABLE telemetry (
            job_id VARCHAR NOT NULL,
            t TIMESTAMPTZ NOT NULL,
            batch_size INTEGER,              -- the batch being timed when sampled, if any
            source VARCHAR,                  -- nvml | psutil
            gpu_util_pct DOUBLE,
            mem_used_bytes BIGINT,
            power_w DOUBLE,
            sm_clock_mhz DOUBLE,
            temp_c DOUBLE,
            cpu_util_pct DOUBLE,
            rss_bytes BIGINT
        );
        CREATE INDEX telemetry_job ON telemetry (job_id);

    """)


@migration
def m003_noise_and_recommendations(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("""
        ALTER TABLE profiles ADD COLUMN warmup_samples BIGINT;
        ALTER TABLE profiles ADD COLUMN weight_decay DOUBLE;
        CREATE TABLE noise_estimates (
            id VARCHAR PRIMARY KEY,          -- the job id of the estimating job
            workload VARCHAR,
            workload_spec VARCHAR,
            options JSON,
            device_id VARCHAR,
            created_at TIMESTAMPTZ,
            b_simple DOUBLE,                 -- tr(Sigma) / |G|^2; NULL when unreliable
            ci_low DOUBLE,
            ci_high DOUBLE,
            g2 DOUBLE,                       -- the |G|^2 estimate
            trace_sigma DOUBLE,              -- the tr(Sigma) estimate
            g_small_sq DOUBLE,
            g_big_sq DOUBLE,
            batch_small INTEGER,
            batch_big INTEGER,
            batches INTEGER,
            warm_steps INTEGER,
            unreliable BOOLEAN,
            reason VARCHAR,
            elapsed_s DOUBLE,
            step_equivalents DOUBLE
        );
        CREATE TABLE stability_checks (
            id VARCHAR PRIMARY KEY,          -- the job id
            batch_size INTEGER,
            recommended_lr DOUBLE,
            diverged_at_lr DOUBLE,
            max_stable_lr DOUBLE,
            stable BOOLEAN,
            lrs DOUBLE[],
            losses DOUBLE[]
        );
        CREATE TABLE recommendations (
            id VARCHAR PRIMARY KEY,
            created_at TIMESTAMPTZ,
            profile_id VARCHAR,
            noise_id VARCHAR,
            stability_id VARCHAR,
            workload VARCHAR,
            device_id VARCHAR,
            batch_size INTEGER,
            learning_rate DOUBLE,
            warmup_steps INTEGER,
            rule VARCHAR,                    -- linear | sqrt
            baseline_batch_size INTEGER,
            baseline_lr DOUBLE,
            noise_scale DOUBLE,
            speedup_throughput DOUBLE,       -- predicted, from throughput alone
            speedup_time_to_target DOUBLE,   -- predicted, with the noise scale (or perfect scaling)
            experiments_per_day_baseline DOUBLE,
            experiments_per_day_recommended DOUBLE,
            document JSON                    -- the whole recommendation, as exported
        );
        CREATE TABLE recommendation_candidates (
            recommendation_id VARCHAR NOT NULL,
            batch_size INTEGER NOT NULL,
            learning_rate DOUBLE,
            step_time_s DOUBLE,
            samples_per_s DOUBLE,
            peak_memory_bytes BIGINT,
            time_ratio DOUBLE,               -- predicted T(B) / T(baseline)
            speedup_time_to_target DOUBLE,
            speedup_throughput DOUBLE,
            run_time_s DOUBLE,
            eligible BOOLEAN,
            excluded VARCHAR,
            rank INTEGER,
            PRIMARY KEY (recommendation_id, batch_size)
        );

    """)


@migration
def m004_runs(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("""
        CREATE TABLE runs (
            id VARCHAR PRIMARY KEY,          -- the job id of the training job; its state is jobs.state
            group_id VARCHAR,                -- repeats of one config (other seeds) share a group
            role VARCHAR,                    -- baseline | recommended | NULL
            recommendation_id VARCHAR,
            workload VARCHAR,
            workload_spec VARCHAR,
            options JSON,
            device_id VARCHAR,
            device_name VARCHAR,
            batch_size INTEGER,              -- global batch: micro_batch_size x accumulate
            micro_batch_size INTEGER,
            accumulate INTEGER,
            lr DOUBLE,
            warmup_samples BIGINT,
            epochs DOUBLE,
            schedule VARCHAR,
            dtype VARCHAR,
            seed INTEGER,
            target_val_loss DOUBLE,
            tags VARCHAR[],
            primary_metric VARCHAR,          -- the validation metric compared between runs
            primary_metric_mode VARCHAR,     -- max | min
            n_params BIGINT,
            total_steps BIGINT,
            started_at TIMESTAMPTZ,
            ended_at TIMESTAMPTZ,
            steps BIGINT,
            samples BIGINT,
            wall_time_s DOUBLE,              -- evaluation included
            train_time_s DOUBLE,             -- evaluation excluded
            final_val_loss DOUBLE,
            best_val_loss DOUBLE,
            final_metrics JSON,
            final_primary_metric DOUBLE,
            reached_target BOOLEAN,
            time_to_target_s DOUBLE,
            peak_memory_bytes BIGINT,
            stop_reason VARCHAR,
            config JSON,
            versions JSON
        );
        CREATE TABLE metrics (
            run_id VARCHAR NOT NULL,
            step BIGINT NOT NULL,
            epoch DOUBLE,
            samples BIGINT,
            wall_time_s DOUBLE,
            train_time_s DOUBLE,
            name VARCHAR NOT NULL,           -- train_loss, lr, samples_per_s, val_loss, val_<metric>
            value DOUBLE
        );
        CREATE INDEX metrics_run ON metrics (run_id);

    """)


@migration
def m005_autopilots(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("""
        CREATE TABLE autopilots (
            id VARCHAR PRIMARY KEY,          -- the job id of the orchestrating job
            workload VARCHAR,
            phase VARCHAR,                   -- profile, noise scale, recommendation, baseline runs, ...
            profile_id VARCHAR,
            noise_id VARCHAR,
            recommendation_id VARCHAR,
            baseline_runs VARCHAR[],
            recommended_runs VARCHAR[],
            headline JSON,                   -- measured and predicted speedup, metric difference, p-value
            comparison JSON,
            updated_at TIMESTAMPTZ
        );

    """)


@migration
def m006_jobs_set_aside(con: duckdb.DuckDBPyConnection) -> None:
    # A job whose spool cannot be ingested is set aside (FAILED, "spool unreadable: ...") and never
    # read again, so one bad job cannot fail every later command; `largestep doctor` lists them.
    con.execute("ALTER TABLE jobs ADD COLUMN set_aside BOOLEAN DEFAULT false")


@migration
def m007_point_loader_and_compile(con: duckdb.DuckDBPyConnection) -> None:
    # Dataset workloads are timed with their loader and without it: the compute alone, and whether the
    # loader limits throughput at that batch size (a larger batch will not help there)
    con.execute("ALTER TABLE profile_points ADD COLUMN compute_median_s DOUBLE")  # seconds; NULL: tensor data
    con.execute("ALTER TABLE profile_points ADD COLUMN input_bound BOOLEAN DEFAULT false")
    # --compile: the first step at a batch size compiles; its time is kept apart from the timed steps
    con.execute("ALTER TABLE profile_points ADD COLUMN compile_s DOUBLE")
    # the workload's training recipe, which a recommendation and its exports carry on
    con.execute("ALTER TABLE profiles ADD COLUMN schedule VARCHAR")  # constant | cosine | linear | wsd
    con.execute("ALTER TABLE profiles ADD COLUMN decay_samples BIGINT")  # wsd: the final decay's length
    con.execute("ALTER TABLE profiles ADD COLUMN max_grad_norm DOUBLE")  # gradient clipping; NULL: none


@migration
def m008_background_load(con: duckdb.DuckDBPyConnection) -> None:
    # The background load: what processes outside a job's own process tree did while it ran, so that a
    # comparison can flag runs (and a profile the points) measured under different conditions
    for table in ("runs", "profile_points"):
        con.execute(f"ALTER TABLE {table} ADD COLUMN background_cpu_pct DOUBLE")  # mean other-process CPU %
        con.execute(f"ALTER TABLE {table} ADD COLUMN background_cpu_p90_pct DOUBLE")  # its 90th percentile
        con.execute(f"ALTER TABLE {table} ADD COLUMN background_gpu_processes INTEGER")  # most seen on the GPU
        con.execute(f"ALTER TABLE {table} ADD COLUMN background_gpu_mem_bytes BIGINT")  # their device memory
    con.execute("ALTER TABLE telemetry ADD COLUMN other_cpu_pct DOUBLE")  # whole-machine busy % not ours
    con.execute("ALTER TABLE telemetry ADD COLUMN other_gpu_processes INTEGER")  # other compute processes on the GPU
    con.execute("ALTER TABLE telemetry ADD COLUMN other_gpu_mem_bytes BIGINT")  # their device memory


@migration
def m009_profile_consistency(con: duckdb.DuckDBPyConnection) -> None:
    # Profiles are measured in interleaved rounds and checked against physics (step time cannot fall as
    # the batch grows; a point cannot sit far above its neighbours' trend); what stays inconsistent after
    # re-measuring is flagged, with the reason
    con.execute("ALTER TABLE profiles ADD COLUMN inconsistency VARCHAR")  # NULL: consistent
    con.execute("ALTER TABLE profile_points ADD COLUMN visits INTEGER DEFAULT 1")  # interleaved visits timed
    con.execute("ALTER TABLE profile_points ADD COLUMN remeasured INTEGER DEFAULT 0")  # sent back by the check
    con.execute("ALTER TABLE profile_points ADD COLUMN inconsistent BOOLEAN DEFAULT false")


@migration
def m010_noise_curves(con: duckdb.DuckDBPyConnection) -> None:
    # The noise scale grows as the loss falls: estimates at several points of one baseline run, from
    # which a batch schedule is planned. One row a point; the columns after `step` are noise_estimates'.
    con.execute("""
        CREATE TABLE noise_curve_points (
            curve_id VARCHAR NOT NULL,       -- the job id of the estimating job
            fraction DOUBLE NOT NULL,        -- of the baseline's training steps done before estimating
            step BIGINT,                     -- baseline steps trained before estimating
            workload VARCHAR,
            workload_spec VARCHAR,
            options JSON,
            device_id VARCHAR,
            created_at TIMESTAMPTZ,
            b_simple DOUBLE,                 -- tr(Sigma) / |G|^2; NULL when unreliable
            ci_low DOUBLE,
            ci_high DOUBLE,
            g2 DOUBLE,
            trace_sigma DOUBLE,
            g_small_sq DOUBLE,
            g_big_sq DOUBLE,
            batch_small INTEGER,
            batch_big INTEGER,
            batches INTEGER,
            warm_steps INTEGER,
            unreliable BOOLEAN,
            reason VARCHAR,
            elapsed_s DOUBLE,
            step_equivalents DOUBLE,
            PRIMARY KEY (curve_id, fraction)
        )
    """)


@migration
def m011_contended_visits(con: duckdb.DuckDBPyConnection) -> None:
    # A visit during which other processes took the cores the steps needed is set aside and the size
    # visited again; a size that found too few uncontended visits keeps them all, flagged
    con.execute("ALTER TABLE profile_points ADD COLUMN others_busy_cores DOUBLE")  # over the steps kept
    con.execute("ALTER TABLE profile_points ADD COLUMN loaded_visits INTEGER DEFAULT 0")  # visits set aside
    con.execute("ALTER TABLE profile_points ADD COLUMN under_load BOOLEAN DEFAULT false")


@migration
def m012_noise_compile_time(con: duckdb.DuckDBPyConnection) -> None:
    # --compile on a noise estimate: compiling, before the clock, is recorded apart from its elapsed time
    con.execute("ALTER TABLE noise_estimates ADD COLUMN compile_s DOUBLE")
    con.execute("ALTER TABLE noise_curve_points ADD COLUMN compile_s DOUBLE")


@migration
def m013_point_warmup_steps(con: duckdb.DuckDBPyConnection) -> None:
    # warm-up ends at the steady state: the untimed steps a size's first visit took (NULL: profiled before)
    con.execute("ALTER TABLE profile_points ADD COLUMN warmup_steps INTEGER")


@migration
def m014_math_settings(con: duckdb.DuckDBPyConnection) -> None:
    # TF32 and cuDNN as a profile measured and a run trained (largestep.measure.devices.math_settings):
    # {matmul_allow_tf32, cudnn_allow_tf32, cudnn_benchmark, float32_matmul_precision}; NULL: recorded before
    con.execute("ALTER TABLE profiles ADD COLUMN math_settings JSON")
    con.execute("ALTER TABLE runs ADD COLUMN math_settings JSON")


@migration
def m015_trusted_profiles(con: duckdb.DuckDBPyConnection) -> None:
    # A point's step time is a robust estimate of its raw steps (interference only adds time), the median
    # kept beside it; the profile records which estimator it used (NULL: profiled before, the median)
    con.execute("ALTER TABLE profile_points ADD COLUMN estimate_s DOUBLE")
    con.execute("ALTER TABLE profiles ADD COLUMN estimator VARCHAR")  # median | p25 | p10 | min | ...
    # torch's intra-op threads the steps ran on (--threads, else torch's default) and the machine's cores:
    # threads and other processes' busy cores beyond the cores make a step wait for a descheduled thread
    con.execute("ALTER TABLE profiles ADD COLUMN threads INTEGER")
    con.execute("ALTER TABLE profiles ADD COLUMN cores INTEGER")
    # a re-profile of another profile's loaded sizes carries its other points over (NULL: a profile of its own)
    con.execute("ALTER TABLE profiles ADD COLUMN carried_from VARCHAR")
    # a recommendation made from a profile that could not be trusted, because the user accepted it
    # (--accept-load): why the profile was refused; NULL when it was trusted
    con.execute("ALTER TABLE recommendations ADD COLUMN accepted_load VARCHAR")
    # an autopilot that stopped because its profile could not be trusted and the machine never quietened: the line
    con.execute("ALTER TABLE autopilots ADD COLUMN untrusted VARCHAR")


@migration
def m016_verifications(con: duckdb.DuckDBPyConnection) -> None:
    # Every verification is a calibration point (largestep.plan.calibration.verification_point): the predicted
    # speedup and its two factors beside what the runs measured, each with its interval, and the critical batch
    # the measured steps imply. An autopilot spools one per comparison; `largestep compare` of a recommendation's
    # baseline and recommended runs saves one. Factors are "baseline over recommended" for steps and speedup,
    # "recommended over baseline" for the time per step; *_low/*_high: 90% intervals (NULL: open or not measured).
    con.execute("""
        CREATE TABLE verifications (
            id VARCHAR PRIMARY KEY,          -- ver-<hash of the runs compared>: the same runs, the same verification
            source VARCHAR NOT NULL,         -- autopilot | compare
            autopilot_id VARCHAR,
            attempt INTEGER,                 -- --until-verified: which attempt (1 otherwise)
            recommendation_id VARCHAR,
            workload VARCHAR,
            device_id VARCHAR,
            device_name VARCHAR,
            created_at TIMESTAMPTZ,
            baseline_batch INTEGER,
            batch_size INTEGER,
            rule VARCHAR,
            learning_rate DOUBLE,
            predicted_speedup DOUBLE,        -- on the model the recommendation ranked on (corrected, if it was)
            predicted_low DOUBLE,
            predicted_high DOUBLE,
            raw_speedup DOUBLE,              -- on the raw noise model
            raw_low DOUBLE,
            raw_high DOUBLE,
            predicted_steps DOUBLE,          -- S(B0)/S(B) predicted
            predicted_steps_low DOUBLE,
            predicted_steps_high DOUBLE,
            raw_steps DOUBLE,
            predicted_step_time DOUBLE,      -- t(B)/t(B0) predicted: the profile's, times step_time_bias
            step_time_bias DOUBLE,           -- earlier runs' time per step over their profile's (median; 1: none)
            predicted_step_time_low DOUBLE,
            predicted_step_time_high DOUBLE,
            measured_speedup DOUBLE,         -- the ratio of Kaplan-Meier medians, or the bound
            measured_low DOUBLE,
            measured_high DOUBLE,
            measured_bound VARCHAR,          -- at least | at most | NULL (a point)
            measured_steps DOUBLE,
            measured_steps_low DOUBLE,
            measured_steps_high DOUBLE,
            steps_bound VARCHAR,
            measured_step_time DOUBLE,
            measured_step_time_low DOUBLE,
            measured_step_time_high DOUBLE,
            verdict VARCHAR,                 -- faster | slower | no measurable difference | ... (largestep.plan.verdict)
            quality VARCHAR,                 -- equivalent | worse | better | inconclusive | seeds failed | ...
            verified BOOLEAN,                -- faster with a quality equivalent or better
            failed_why VARCHAR,
            noise_model VARCHAR,             -- estimate | curve | perfect scaling
            b_simple DOUBLE,                 -- the single noise estimate the prediction used
            implied_b_crit DOUBLE,           -- the critical batch the measured steps factor implies (inf: unbounded)
            b_crit_low DOUBLE,
            b_crit_high DOUBLE,
            ratio DOUBLE,                    -- the correction: B_crit / B_simple (a curve: the factor that scales it)
            ratio_low DOUBLE,
            ratio_high DOUBLE,
            learned VARCHAR,                 -- in words, or why nothing was learned
            baseline_runs VARCHAR[],
            recommended_runs VARCHAR[],
            comparison JSON
        )
    """)
    # the autopilots compared before: their calibration points, from their stored recommendation and comparison
    import json

    from ..plan.calibration import verification_point
    from .rows import insert_verification

    rows = con.execute(
        "SELECT a.id, epoch(a.updated_at), a.comparison, r.document, r.device_id FROM autopilots a "
        "JOIN recommendations r ON r.id = a.recommendation_id WHERE a.comparison IS NOT NULL"
    ).fetchall()
    for autopilot_id, updated, comparison, document, _device in rows:
        try:
            comparison, rec = json.loads(comparison), json.loads(document)
            if len(comparison.get("groups") or []) < 2:
                continue
            point = verification_point(
                rec, comparison, source="autopilot", created_at=updated, autopilot_id=autopilot_id
            )
        except (ValueError, KeyError, TypeError, ZeroDivisionError):  # a document too old to read: no point
            continue
        insert_verification(con, point)


def migrate(con: duckdb.DuckDBPyConnection, migrations: list[tuple[str, Migration]] | None = None) -> list[str]:
    """Apply the migrations not yet recorded, in order, each in its own transaction."""
    con.execute("CREATE TABLE IF NOT EXISTS _migrations (name VARCHAR PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL)")
    done = set(applied_migrations(con))
    applied = []
    for name, apply in migrations if migrations is not None else MIGRATIONS:
        if name in done:
            continue
        con.execute("BEGIN TRANSACTION")
        try:
            apply(con)
            con.execute("INSERT INTO _migrations VALUES (?, now())", [name])
            con.execute("COMMIT")
        except Exception:
            con.execute("ROLLBACK")
            raise
        applied.append(name)
    return applied


def applied_migrations(con: duckdb.DuckDBPyConnection) -> list[str]:
    return [row[0] for row in con.execute("SELECT name FROM _migrations ORDER BY name").fetchall()]
