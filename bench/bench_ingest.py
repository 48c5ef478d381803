"""Benchmark of ingest (not a test): metric rows/s of ``store.ingest`` against DuckDB's own insert of the same rows.

(a) ingest: spools shaped like training runs (one ``metrics`` event a logging interval, an ``eval`` every 100),
    written once through the real Spool, then ingested into a fresh database each round by ``store.ingest``
    (reading and parsing the spools, the rows, the insert, the offsets) against the reference: the very rows
    ingest produced, held as an Arrow table, inserted into the ``metrics`` table of a fresh database by DuckDB
    (``INSERT INTO metrics SELECT * FROM table``, connection and commit included on both sides). The two are
    interleaved in rounds, in shuffled order, so that a shared machine's drift hits both alike; each side's
    figure is the median over rounds. Target: ingest at least TARGET of the reference's rows/s.
(b) ``--candidates``: the ways to hand DuckDB the same long rows held as Python lists (what ingest builds), each
    against the reference: bound lists unnested (ingest's way for a small statement), NumPy arrays through
    DuckDB's NumPy scan (its way for a large one), a pyarrow Table and a pandas DataFrame (the way before
    3b8e78b; both import pandas, which a command following a job must not); at several sizes, beside the import
    of NumPy in a fresh interpreter, which sets where ingest switches (``NUMPY_FROM_VALUES``).

``--floor`` puts the reference on both sides: its disagreement with itself is the margin a quick run needs.
``LARGESTEP_BENCH_SLOW_INGEST=F`` makes every job's ingest F times as slow (a deliberate regression, which the
bench must catch).

    python bench/bench_ingest.py [--runs 20] [--logs 20000] [--rounds 5] [--quick] [--floor] [--candidates]
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from largestep import jobs, store  # noqa: E402
from largestep.home import Home  # noqa: E402
from targets import Target, quick_rounds, report, rounds_word, typical_rate  # noqa: E402

# At least this share of the reference's rows/s. Ingest parses each spool line's JSON and builds the rows in
# Python, which the reference (rows already in columns, in C) does not: the ratio is far below 1 by nature.
# Full run (20 runs, 1.2 M rows): 0.10. Quick run (3 runs, 181,200 rows, where both sides' fixed costs, connection
# and commit, weigh more): 0.20, between the healthy code and the code it must catch (3b8e78b's, or this one
# slowed 3x), with the machine's floor (the reference against itself) inside the gap. bench/README.md has them.
TARGET = Target(at_least=0.10, quick_margin=0.1, quick_at_least=0.12)
SLOW_ENV = "LARGESTEP_BENCH_SLOW_INGEST"
REFERENCE_REPEATS = 3
METRIC_COLUMNS = "run_id, step, epoch, samples, wall_time_s, train_time_s, name, value"


def write_spools(jobs_dir: Path, runs: int, logs_per_run: int) -> int:
    """``runs`` training-shaped runs through the real Spool; returns the events written."""
    events = 0
    for r in range(runs):
        job_id = jobs.new_job_id("train")
        job_dir = jobs_dir / job_id
        job_dir.mkdir(parents=True)
        (job_dir / "spec.json").write_text(
            json.dumps(
                {
                    "id": job_id,
                    "kind": "train",
                    "device": "cpu",
                    "workload": "bench",
                    "params": {},
                    "created_at": time.time(),
                    "home": str(jobs_dir.parent),
                }
            )
        )
        spool = jobs.Spool(job_dir)
        spool.emit(
            "run_start",
            workload="bench",
            config={"batch_size": 128, "lr": 0.01, "seed": r},
            device={"id": "cpu", "kind": "cpu", "name": "bench"},
            total_steps=logs_per_run,
        )
        for step in range(1, logs_per_run + 1):
            row = {
                "step": step,
                "epoch": step / 100,
                "samples": step * 128,
                "wall_time_s": step * 0.01,
                "train_time_s": step * 0.01,
                "train_loss": 1.0 / step,
                "lr": 0.01,
                "samples_per_s": 12800.0,
            }
            spool.emit("metrics", rows=[row])
            if step % 100 == 0:
                spool.emit(
                    "eval",
                    step=step,
                    epoch=step / 100,
                    samples=step * 128,
                    wall_time_s=step * 0.01,
                    train_time_s=step * 0.01,
                    val_loss=1.0 / step,
                    metrics={"average_precision": 0.5},
                )
                events += 1
        spool.emit("exit", state=jobs.FINISHED, error=None)
        spool.close()
        events += logs_per_run + 2
    return events


def fresh_home(root: Path, spools: Path | None = None) -> Home:
    """An empty, migrated database (untimed); its jobs folder the shared spools, when given."""
    root.mkdir(parents=True)
    if spools is not None:
        (root / "jobs").symlink_to(spools, target_is_directory=True)
    home = Home(root)
    with store.connect(home):
        pass
    return home


def slow_ingest_if_asked() -> float:
    """Honour LARGESTEP_BENCH_SLOW_INGEST: every job's ingest then takes that factor of its time (a regression
    planted on purpose). Returns the factor (1 when not asked)."""
    factor = float(os.environ.get(SLOW_ENV) or 1)
    if factor > 1:
        module = importlib.import_module("largestep.store.ingest")
        ingest_job = module._ingest_job

        def slowed(*args, **kwargs):
            start = time.perf_counter()
            result = ingest_job(*args, **kwargs)
            time.sleep((factor - 1) * (time.perf_counter() - start))
            return result

        module._ingest_job = slowed
    return factor


def timed_ingest(spools: Path, root: Path) -> tuple[float, int]:
    home = fresh_home(root, spools)
    start = time.perf_counter()
    result = store.ingest(home)
    return time.perf_counter() - start, result.rows.get("metrics", 0)


def timed_reference(table, root: Path, repeats: int = REFERENCE_REPEATS) -> tuple[float, int]:
    """The fastest of ``repeats`` inserts, each into a fresh database: the reference takes a fifth of ingest's time,
    and the best of several such short measurements is what keeps its own disagreement (--floor) small."""
    best = float("inf")
    for k in range(repeats):
        home = fresh_home(root / str(k))
        start = time.perf_counter()
        with store.connect(home) as con:
            con.register("reference_rows", table)
            con.execute(f"INSERT INTO metrics ({METRIC_COLUMNS}) SELECT {METRIC_COLUMNS} FROM reference_rows")
            con.unregister("reference_rows")
        best = min(best, time.perf_counter() - start)
    return best, table.num_rows


def metric_rows(spools: Path, root: Path):
    """The metric rows ingest makes of the spools, as an Arrow table (the reference inserts these)."""
    home = fresh_home(root, spools)
    store.ingest(home)
    with store.connect(home) as con:
        result = con.sql(f"SELECT {METRIC_COLUMNS} FROM metrics")
        return result.to_arrow_table() if hasattr(result, "to_arrow_table") else result.arrow()


def scratch() -> tempfile.TemporaryDirectory:
    """Where the spools and databases go: a memory file system where there is one (Linux's /dev/shm), so that
    the latency of a disk other machines share (a checkpoint's fsync) enters neither side of a comparison of
    code; the system's temporary folder otherwise."""
    shm = Path("/dev/shm")
    return tempfile.TemporaryDirectory(dir=shm if shm.is_dir() and os.access(shm, os.W_OK) else None)


def ingest_vs_reference(runs: int, logs: int, rounds: int, floor: bool) -> dict:
    with scratch() as tmp:
        tmp = Path(tmp)
        spools = tmp / "spools"
        events = write_spools(spools, runs, logs)
        table = metric_rows(spools, tmp / "rows")
        sides = {
            "ingest": (lambda root: timed_reference(table, root))
            if floor
            else (lambda root: timed_ingest(spools, root)),
            "reference": lambda root: timed_reference(table, root),
        }
        rates: dict[str, list[float]] = {name: [] for name in sides}
        order = random.Random(0)
        for r in range(rounds):
            names = list(sides)
            order.shuffle(names)
            for name in names:
                seconds, rows = sides[name](tmp / f"{name}-{r}")
                shutil.rmtree(tmp / f"{name}-{r}")  # a database a side a round: 50 MB each at full size
                if rows != table.num_rows:
                    raise SystemExit(f"{name} wrote {rows} metric rows, not {table.num_rows}")
                rates[name].append(rows / seconds)
    ours, reference = (typical_rate(rates[name]) for name in ("ingest", "reference"))
    return {
        "runs": runs,
        "events": events,
        "metric_rows": table.num_rows,
        "rounds": rounds,
        "ingest_rows_per_s": ours,
        "reference_rows_per_s": reference,
        "ratio": ours / reference,
        "rates": rates,
    }


# -- (b) the candidates ----------------------------------------------------------------------------------


def _columns(table) -> dict[str, list]:
    return {name: table.column(name).to_pylist() for name in table.column_names}


def _bound_lists(con, columns: dict[str, list]) -> None:
    selects = ", ".join(f"unnest(${k})" for k in range(1, len(columns) + 1))
    con.execute(f"INSERT INTO metrics ({', '.join(columns)}) SELECT {selects}", list(columns.values()))


def _scan(con, data) -> None:
    con.register("incoming", data)
    con.execute(f"INSERT INTO metrics ({METRIC_COLUMNS}) SELECT {METRIC_COLUMNS} FROM incoming")
    con.unregister("incoming")


def _numpy(con, columns: dict[str, list]) -> None:
    _scan(con, importlib.import_module("largestep.store.ingest")._arrays(columns))


def _pyarrow(con, columns: dict[str, list]) -> None:
    import pyarrow as pa

    _scan(con, pa.table(columns))


def _pandas(con, columns: dict[str, list]) -> None:
    import pandas as pd

    _scan(con, pd.DataFrame(columns))


CANDIDATES = {
    "bound lists, unnested": _bound_lists,
    "NumPy arrays, as ingest makes them": _numpy,
    "pyarrow Table (imports pandas)": _pyarrow,
    "pandas DataFrame (imports pandas)": _pandas,
}


def candidates(runs: int, logs: int, rounds: int, sizes: list[int]) -> list[dict]:
    """Each way of inserting the same rows held as Python lists, against the reference, at each size (rows)."""
    rows = []
    with scratch() as tmp:
        tmp = Path(tmp)
        spools = tmp / "spools"
        write_spools(spools, runs, logs)
        whole = metric_rows(spools, tmp / "rows")
        for size in sizes:
            table = whole.slice(0, size)
            columns = _columns(table)
            seconds: dict[str, list[float]] = {name: [] for name in ["reference", *CANDIDATES]}
            for r in range(rounds):
                names = list(seconds)
                random.Random(r).shuffle(names)
                for name in names:
                    home = fresh_home(tmp / f"{size}-{name[:12]}-{r}".replace(" ", "_"))
                    with store.connect(home) as con:
                        start = time.perf_counter()
                        if name == "reference":
                            _scan(con, table)
                        else:
                            CANDIDATES[name](con, columns)
                        seconds[name].append(time.perf_counter() - start)
            reference = statistics.median(seconds["reference"])
            for name, values in seconds.items():
                row = {
                    "rows": size,
                    "values": size * len(columns),
                    "way": name,
                    "rows_per_s": size / statistics.median(values),
                    "ratio": reference / statistics.median(values),
                }
                rows.append(row)
                print(
                    f"{size:>9,} rows ({row['values']:>10,} values): {name:<36} {row['rows_per_s']:>12,.0f} rows/s"
                    f"   {row['ratio']:.3f} of the reference",
                    flush=True,
                )
    return rows


def numpy_import_s(rounds: int = 5) -> float:
    """What importing NumPy adds to a fresh interpreter that has imported DuckDB (median of rounds)."""

    def run(code: str) -> float:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        return time.perf_counter() - start

    without, with_numpy = [], []
    for _ in range(rounds):
        without.append(run("import duckdb"))
        with_numpy.append(run("import duckdb, numpy"))
    return statistics.median(with_numpy) - statistics.median(without)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--logs", type=int, default=20_000, help="logging intervals a run")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="a few seconds: 3 runs of 20,000 logs, 7 rounds")
    parser.add_argument("--floor", action="store_true", help="the reference on both sides")
    parser.add_argument("--candidates", action="store_true", help="(b): the ways to insert, at several sizes")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.logs, args.rounds = 3, 20_000, 7  # runs as long as the full run's: the same way to DuckDB
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average "
        f"{os.getloadavg()[0]:.1f}, Python {platform.python_version()}",
        flush=True,
    )
    if args.candidates:
        rows = candidates(args.runs, args.logs, args.rounds, [1_000, 5_000, 20_000, 100_000])
        cost = numpy_import_s()
        print(f"importing NumPy after DuckDB in a fresh interpreter: {cost * 1e3:.0f} ms", flush=True)
        if args.json:
            print(json.dumps({"candidates": rows, "numpy_import_s": cost}, indent=2))
        return 0
    quick_rounds(args.quick)
    factor = slow_ingest_if_asked()
    result = ingest_vs_reference(args.runs, args.logs, args.rounds, args.floor)
    detail = (
        f"{result['ingest_rows_per_s']:,.0f} vs {result['reference_rows_per_s']:,.0f} metric rows/s, "
        f"{result['metric_rows']:,} rows from {result['events']:,} events of {result['runs']} runs, "
        f"{rounds_word()} {result['rounds']} interleaved rounds"
        + (f"; ingest slowed {factor:g}x" if factor > 1 else "")
    )
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "rates"}, indent=2))
    if args.floor:
        return report("ingest", [TARGET.floor("reference / reference", result["ratio"], detail)])
    return report("ingest", [TARGET.figure("ingest / DuckDB's insert from Arrow", result["ratio"], args.quick, detail)])


if __name__ == "__main__":
    sys.exit(main())
