"""Rows into tables: a dict's values bound as parameters, JSON columns serialised, unix seconds stored as
TIMESTAMPTZ. Beneath both the ingest and the migrations (a migration backfilling a table writes its rows the
way the ingest does), so it imports neither."""

from __future__ import annotations

import json

__all__ = ["insert_row", "update_row", "insert_verification", "VERIFICATION_COLUMNS", "JSON_COLUMNS", "TIME_COLUMNS"]

JSON_COLUMNS = frozenset({"options", "config", "versions", "final_metrics", "headline", "comparison", "math_settings"})
TIME_COLUMNS = frozenset({"started_at", "ended_at", "created_at"})  # unix seconds in a row, TIMESTAMPTZ stored


def _values(row: dict) -> tuple[list[str], list[str], list]:
    names = list(row)
    marks = ["to_timestamp(?)" if name in TIME_COLUMNS else "?" for name in names]
    values = [
        json.dumps(value, default=str) if name in JSON_COLUMNS and value is not None else value
        for name, value in row.items()
    ]
    return names, marks, values


def insert_row(con, table: str, row: dict, replace: bool = False) -> None:
    names, marks, values = _values(row)
    verb = "INSERT OR REPLACE" if replace else "INSERT"
    con.execute(f"{verb} INTO {table} ({', '.join(names)}) VALUES ({', '.join(marks)})", values)


def update_row(con, table: str, row: dict, key: str, key_value: str) -> None:
    names, marks, values = _values(row)
    assignments = ", ".join(f"{name} = {mark}" for name, mark in zip(names, marks))
    con.execute(f"UPDATE {table} SET {assignments} WHERE {key} = ?", [*values, key_value])


#: The ``verifications`` table's columns (largestep.plan.calibration.verification_point's keys).
VERIFICATION_COLUMNS = [
    "id",
    "source",
    "autopilot_id",
    "attempt",
    "recommendation_id",
    "workload",
    "device_id",
    "device_name",
    "created_at",
    "baseline_batch",
    "batch_size",
    "rule",
    "learning_rate",
    "predicted_speedup",
    "predicted_low",
    "predicted_high",
    "raw_speedup",
    "raw_low",
    "raw_high",
    "predicted_steps",
    "predicted_steps_low",
    "predicted_steps_high",
    "raw_steps",
    "predicted_step_time",
    "step_time_bias",
    "predicted_step_time_low",
    "predicted_step_time_high",
    "measured_speedup",
    "measured_low",
    "measured_high",
    "measured_bound",
    "measured_steps",
    "measured_steps_low",
    "measured_steps_high",
    "steps_bound",
    "measured_step_time",
    "measured_step_time_low",
    "measured_step_time_high",
    "verdict",
    "quality",
    "verified",
    "failed_why",
    "noise_model",
    "b_simple",
    "implied_b_crit",
    "b_crit_low",
    "b_crit_high",
    "ratio",
    "ratio_low",
    "ratio_high",
    "learned",
    "baseline_runs",
    "recommended_runs",
    "comparison",
]


def insert_verification(con, row: dict) -> None:
    """One verification (a calibration point) in the table; the same id again replaces it."""
    insert_row(con, "verifications", {name: row.get(name) for name in VERIFICATION_COLUMNS}, replace=True)
