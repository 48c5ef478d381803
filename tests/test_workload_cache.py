"""The workload cache: a workload built once per spec, options and source, read back by later loads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import torch
from helpers import ROOT, run_cli, wait_finished

from largestep.errors import WorkloadError
from largestep.workloads import load_workload
from largestep.workloads.cache import MANIFEST, PAYLOAD, cache_of

# A file workload that counts its builds in a file beside it, with a lambda model factory and a
# locally defined metric (neither importable by name: they must be stored by value).
COUNTING = textwrap.dedent("""
    from pathlib import Path

    import torch

    from largestep import Workload

    def make(samples: int = 64, scale: float = 1.0):
        counter = Path(__file__).with_name("builds.txt")
        counter.write_text(counter.read_text() + "x" if counter.exists() else "x")
        g = torch.Generator().manual_seed(0)
        x = scale * torch.randn(samples + 16, 4, generator=g)
        y = (x.sum(1) > 0).long()

        def accuracy(output, target):
            return float((output.argmax(1) == target).float().mean())

        return Workload(name="counting", model=lambda: torch.nn.Linear(4, 2), train=(x[:samples], y[:samples]),
                        val=(x[samples:], y[samples:]), loss=torch.nn.functional.cross_entropy,
                        baseline_batch_size=8, baseline_lr=1e-2, metrics={"accuracy": accuracy})
""")


@pytest.fixture
def counting(tmp_path):
    """(spec, a function returning how many times the workload was built)."""
    source = tmp_path / "counting.py"
    source.write_text(COUNTING)
    builds = tmp_path / "builds.txt"
    return f"{source}:make", lambda: len(builds.read_text()) if builds.exists() else 0


def test_a_file_workload_is_built_once_and_read_back_whole(home, counting):
    spec, builds = counting
    cache = cache_of(home)
    first = load_workload(spec, {}, cache)
    again = load_workload(spec, {}, cache)
    assert builds() == 1
    assert torch.equal(first.train[0], again.train[0]) and torch.equal(first.val[1], again.val[1])
    # the lambda factory and the local metric came back as working functions
    model = again.model()
    assert isinstance(model, torch.nn.Linear)
    assert 0.0 <= again.metrics["accuracy"](model(again.val[0]), again.val[1]) <= 1.0
    assert cache.usage().entries == 1 and cache.usage().bytes > 0


def test_options_and_an_edited_source_make_new_entries(home, counting, tmp_path):
    spec, builds = counting
    cache = cache_of(home)
    load_workload(spec, {"samples": "32"}, cache)
    load_workload(spec, {"samples": 32}, cache)  # the same value, from --set or from code
    assert builds() == 1
    assert load_workload(spec, {"samples": 48}, cache).n_train == 48
    assert builds() == 2
    source = tmp_path / "counting.py"
    source.write_text(source.read_text().replace("scale * torch.randn", "2 * scale * torch.randn"))
    load_workload(spec, {"samples": 32}, cache)
    assert builds() == 3


def test_a_table_is_keyed_by_the_contents_of_its_file(home, tmp_path):
    data = tmp_path / "data.csv"
    rows = "\n".join(f"{i},{i % 3},{i % 2}" for i in range(60))
    data.write_text("a,b,label\n" + rows + "\n")
    cache = cache_of(home)
    assert load_workload("table", {"path": str(data), "label": "label"}, cache).n_train == 48
    data.write_text("a,b,label\n" + rows + "\n" + "\n".join(f"{i},1,{i % 2}" for i in range(40)) + "\n")
    assert load_workload("table", {"path": str(data), "label": "label"}, cache).n_train == 80


@pytest.mark.parametrize("damage", ["truncate", "flip", "no manifest"])
def test_a_damaged_entry_is_rebuilt_not_trusted(home, counting, damage):
    spec, builds = counting
    cache = cache_of(home)
    expected = load_workload(spec, {}, cache).train[0]
    entry = next(p for p in cache.root.iterdir() if p.is_dir())
    payload = entry / PAYLOAD
    if damage == "truncate":
        payload.write_bytes(payload.read_bytes()[:200])
    elif damage == "flip":
        data = bytearray(payload.read_bytes())
        data[len(data) // 2] ^= 0xFF
        payload.write_bytes(bytes(data))
    else:
        (entry / MANIFEST).unlink()
    rebuilt = load_workload(spec, {}, cache)
    assert builds() == 2 and torch.equal(rebuilt.train[0], expected)
    load_workload(spec, {}, cache)
    assert builds() == 2, "the rebuilt entry is used again"


def test_concurrent_loads_build_once(home):
    cache = cache_of(home)
    template = load_workload("fraud-mlp", {"samples": 60, "val_samples": 20})
    built = []

    def build():
        built.append(1)
        time.sleep(0.3)  # long enough for the other loader to find the entry missing and wait
        return template

    results = []
    threads = [threading.Thread(target=lambda: results.append(cache.load("k", build))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(built) == 1 and len(results) == 2
    assert torch.equal(results[0].train[0], results[1].train[0])
    assert not [p for p in cache.root.iterdir() if p.name.startswith(".tmp-")]


def test_a_dataset_workload_is_not_cached(home, tmp_path):
    source = tmp_path / "ds.py"
    source.write_text(
        textwrap.dedent("""
        import torch
        from largestep import Workload

        class Pairs(torch.utils.data.Dataset):
            def __len__(self):
                return 40
            def __getitem__(self, i):
                return torch.full((3,), float(i)), torch.tensor(i % 2)

        def make():
            return Workload(name="ds", model=lambda: torch.nn.Linear(3, 2), train=Pairs(), val=Pairs(),
                            loss=torch.nn.functional.cross_entropy, baseline_batch_size=4, baseline_lr=1e-2)
    """)
    )
    cache = cache_of(home)
    assert load_workload(f"{source}:make", {}, cache).uses_dataset
    assert cache.usage().entries == 0


def test_a_bad_workload_writes_nothing(home, tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text("def make():\n    raise ValueError('no data here')\n")
    with pytest.raises(WorkloadError, match="no data here"):
        load_workload(f"{broken}:make", {}, cache_of(home))
    assert not home.root.exists()


def test_cache_clear_says_what_it_freed(home, counting, capsys):
    spec, builds = counting
    load_workload(spec, {}, cache_of(home))
    load_workload(spec, {"samples": 32}, cache_of(home))
    (cache_of(home).root / ".tmp-abc-1-ff").mkdir()  # left by a job killed while writing
    code, out, _ = run_cli(capsys, "cache")
    assert code == 0 and "2 workloads" in out
    code, out, err = run_cli(capsys, "cache", "clear")
    assert code == 0 and err == ""
    assert out.startswith("freed ") and "removed 2 cached workloads" in out and len(out.splitlines()) == 1
    assert cache_of(home).usage().entries == 0 and cache_of(home).usage().bytes == 0
    load_workload(spec, {}, cache_of(home))
    assert builds() == 3, "a cleared workload is built again"


def test_hardware_and_doctor_show_the_cache_size(home, counting, capsys):
    spec, _ = counting
    load_workload(spec, {}, cache_of(home))
    code, out, _ = run_cli(capsys, "hardware")
    assert code == 0 and "workload cache" in out and "1 workload" in out
    code, out, _ = run_cli(capsys, "hardware", "--json")
    assert '"workload_cache"' in out
    from largestep import store

    store.ingest(home.ensure())  # a home with a database: doctor checks it
    code, out, _ = run_cli(capsys, "doctor")
    size_line = next(line for line in out.splitlines() if "size:" in line)
    assert "workload cache" in size_line and "0 B" not in size_line.split("workload cache")[1]


@pytest.mark.slow
@pytest.mark.e2e
def test_jobs_read_the_workload_the_submitter_built(home, counting):
    """A profile and a training run, real job processes: the workload is built once, by the command
    that validated the first request, and every job reads it from the cache."""
    from helpers import wait_finished

    from largestep.jobs.start import start_profile, start_train
    from largestep.measure.profiler import ProfileConfig
    from largestep.measure.train import TrainConfig

    spec, builds = counting
    profile_id = start_profile(
        home, spec, {}, "cpu", ProfileConfig(batch_sizes=(8, 16), min_steps=2, min_seconds=0.01, warmup_steps=1)
    )
    [run_id] = start_train(home, spec, {}, "cpu", TrainConfig(batch_size=8, lr=1e-2, max_steps=4))
    for job_id in (profile_id, run_id):
        wait_finished(home, job_id, timeout_s=180)
    assert builds() == 1
    assert cache_of(home).usage().entries == 1


def test_a_workload_that_passed_its_trial_is_not_tried_again(home, counting, monkeypatch):
    from largestep.workloads.base import Workload

    spec, _ = counting
    trials = []
    original = Workload.check_runs
    monkeypatch.setattr(Workload, "check_runs", lambda self: trials.append(1) or original(self))
    load_workload(spec, {}, cache_of(home))  # a job's load: no trial, entry not marked
    load_workload(spec, {}, cache_of(home), check=True)
    load_workload(spec, {}, cache_of(home), check=True)
    assert len(trials) == 1
    load_workload(spec, {"samples": 32}, cache_of(home), check=True)
    load_workload(spec, {"samples": 32}, cache_of(home), check=True)
    assert len(trials) == 2


def test_a_workload_failing_its_trial_is_refused_and_not_stored(home, tmp_path):
    source = tmp_path / "no_loss.py"
    source.write_text(
        textwrap.dedent("""
        import torch
        from largestep import Workload

        def make():
            x = torch.randn(20, 3)
            return Workload(name="no-loss", model=lambda: torch.nn.Linear(3, 2), train=(x, x[:, 0]),
                            val=(x, x[:, 0]), loss=None, baseline_batch_size=4, baseline_lr=1e-2)
    """)
    )
    with pytest.raises(WorkloadError, match="carries no loss"):
        load_workload(f"{source}:make", {}, cache_of(home), check=True)
    assert not home.root.exists()


# -- a request tried before: its facts, read without loading the workload -----------------------------------


def test_a_request_tried_before_is_checked_from_its_facts_until_a_file_it_reads_changes(
    home, counting, tmp_path, monkeypatch
):
    from largestep.workloads.loader import cached_facts

    spec, builds = counting
    cache = cache_of(home)
    assert cached_facts(spec, {"samples": "32"}, cache) is None  # never loaded
    load_workload(spec, {"samples": "32"}, cache)  # a job's load, untried: nothing to recall
    assert cached_facts(spec, {"samples": "32"}, cache) is None
    loaded = load_workload(spec, {"samples": "32"}, cache, check=True)
    facts = cached_facts(spec, {"samples": "32"}, cache)
    assert (facts.name, facts.n_train, facts.n_val, facts.baseline_batch_size, facts.baseline_lr) == (
        loaded.name,
        32,
        loaded.n_val,
        8,
        1e-2,
    )
    # another request, or the same one from another folder (its relative paths name other files), is not it
    assert cached_facts(spec, {"samples": "48"}, cache) is None
    monkeypatch.chdir(tmp_path)
    assert cached_facts(spec, {"samples": "32"}, cache) is None
    monkeypatch.undo()
    # an edited source: only loading it again tells what it builds now
    source = tmp_path / "counting.py"
    source.write_text(source.read_text().replace("scale * torch.randn", "2 * scale * torch.randn"))
    assert cached_facts(spec, {"samples": "32"}, cache) is None
    assert builds() == 1
    cache.clear()
    assert cached_facts(spec, {"samples": "32"}, cache) is None


def test_a_table_request_is_recalled_only_while_its_file_is_unchanged(home, tmp_path):
    from largestep.workloads.loader import cached_facts

    data = tmp_path / "data.csv"
    data.write_text("a,b,label\n" + "\n".join(f"{i},{i % 3},{i % 2}" for i in range(60)) + "\n")
    cache = cache_of(home)
    options = {"path": str(data), "label": "label"}
    load_workload("table", options, cache, check=True)
    assert cached_facts("table", options, cache).n_train == 48
    data.write_text(data.read_text() + "61,1,1\n")
    assert cached_facts("table", options, cache) is None


def test_a_dataset_workload_is_never_recalled(home, tmp_path):
    from largestep.workloads.loader import cached_facts

    spec = f"{ROOT / 'examples' / 'own_dataset.py'}:make"
    load_workload(spec, {}, cache_of(home), check=True)
    assert cached_facts(spec, {}, cache_of(home)) is None


# `largestep ARGV` in a fresh interpreter; its last line of output: the command's exit code and whether it
# imported torch, and pandas
COMMAND_AND_TORCH = """
import json, sys
from largestep.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "torch": "torch" in sys.modules, "pandas": "pandas" in sys.modules}))
"""


@pytest.mark.slow
@pytest.mark.e2e
def test_a_command_submitting_jobs_for_a_tried_workload_imports_no_torch(home, counting):
    """What a user notices: `largestep train` and `largestep profile` answer without spending seconds on importing
    torch once their request was loaded and tried, and `largestep autopilot`'s checks need none either."""
    spec, _ = counting
    env = {**os.environ, "LARGESTEP_HOME": str(home.root)}

    def submit(*argv: str, detach: bool = True) -> tuple[dict, dict]:
        proc = subprocess.run(
            [sys.executable, "-c", COMMAND_AND_TORCH, *argv, *(["--detach"] if detach else []), "--json"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env=env,
            timeout=180,
        )
        lines = proc.stdout.strip().splitlines()
        assert proc.returncode == 0 and len(lines) >= 2, proc.stderr[-2000:]
        output, imported = json.loads("\n".join(lines[:-1])), json.loads(lines[-1])
        return output, {name: imported[name] for name in ("code", "torch")} if detach else imported

    train = ("train", "--workload", spec, "--batch-size", "8", "--lr", "0.01", "--epochs", "1")
    first, imported = submit(*train)
    assert imported == {"code": 0, "torch": True}  # the first check loads the workload and tries it
    again, imported = submit(*train)
    assert imported == {"code": 0, "torch": False}  # the same request again: its facts suffice
    profile_argv = ("profile", "--workload", spec, "--batch-sizes", "8,16", "--min-seconds", "0.05")
    profile, imported = submit(*profile_argv)
    assert imported == {"code": 0, "torch": False}
    # followed to its end, ingested and read back: no pandas either (its import alone is about 0.35 s)
    followed, imported = submit(*profile_argv, detach=False)
    assert imported == {"code": 0, "torch": False, "pandas": False}
    assert [p["batch_size"] for p in followed["points"]] == [8, 16] and followed["state"] == "FINISHED"
    for job_id in [*first["run_ids"], *again["run_ids"], profile["job_id"]]:
        wait_finished(home, job_id, timeout_s=180)
    check = subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from largestep.home import Home
        from largestep.jobs.autopilot import AutopilotConfig
        from largestep.jobs.start import load_checked
        AutopilotConfig().validate()
        print(load_checked(Home(Path({str(home.root)!r})), {spec!r}, {{}}).baseline_batch_size, "torch" in sys.modules)
    """),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    assert check.stdout.split() == ["8", "False"]
