"""The loop from Python (largestep.profile, noise, recommend, autopilot) as a notebook user meets it: bad input is
the CLI's one-line error and writes nothing; a Workload built in Python reaches its jobs through the workload
cache; the results read as sentences and turn into tables."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import tiny_workload
from helpers import TINY

import largestep
from largestep.errors import LargestepError
from largestep.workloads.cache import cache_of

# (function, arguments, what the error says); TINY is the tiny workload's file spec
BAD_INPUTS = [
    ("profile", {"workload": "no-such-workload"}, "unknown workload"),
    ("profile", {"workload": TINY, "batch_sizes": [32, 0]}, "positive integer"),
    ("profile", {"workload": TINY, "batch_sizes": "32,1.5"}, "positive integer"),
    ("profile", {"workload": TINY, "batch_sizes": [32], "min_batch": 8}, "not both"),
    ("profile", {"workload": TINY, "dtype": "fp8"}, "fp8"),
    ("profile", {"workload": TINY, "device": "tpu"}, "device"),
    ("profile", {"workload": TINY, "memory_budget": "12XB"}, "bad size"),
    ("profile", {"workload": TINY, "rounds": 0}, "--rounds"),
    ("profile", {"workload": TINY, "min_steps": "ten"}, "min steps"),
    ("profile", {"workload": TINY, "options": {"no_such_option": 3}}, "no_such_option"),
    ("profile", {"workload": TINY, "options": ["samples=4"]}, "options must be a dict"),
    ("profile", {"workload": "missing_file.py:make"}, "missing_file.py"),
    ("profile", {"workload": 3}, "must be a spec"),
    ("profile", {"workload": TINY, "launcher": "slurm"}, "--launcher"),
    ("noise", {"workload": TINY, "at": [0, 0.5], "warm_steps": 5}, "do not go together"),
    ("noise", {"workload": TINY, "at": [0, 2]}, "between 0 and 1"),
    ("noise", {"workload": TINY, "batches": 0}, "--batches"),
    ("recommend", {"rule": "cubic"}, "--rule"),
    ("recommend", {"memory_headroom": 2}, "--memory-headroom"),
    ("recommend", {"noise_scale": 100, "estimate_noise": True}, "only one of"),
    ("recommend", {"profile": 7}, "Profile or its id"),
    ("recommend", {}, "no profile yet"),
    ("autopilot", {"workload": TINY, "repeats": 0}, "--repeats"),
    ("autopilot", {"workload": TINY, "until_decisive": True, "repeats": 5, "max_repeats": 3}, "below --repeats"),
    ("autopilot", {"workload": TINY, "arms": ["baseline"]}, "--arms"),
    ("autopilot", {"workload": TINY, "min_secs": 0.1}, "unknown autopilot option"),
]


@pytest.mark.parametrize(
    "function, arguments, says", BAD_INPUTS, ids=[f"{f}-{'-'.join(map(str, a.items()))}" for f, a, _ in BAD_INPUTS]
)
def test_bad_input_raises_the_clis_one_line_error_and_writes_nothing(home, function, arguments, says):
    with pytest.raises(LargestepError) as caught:
        getattr(largestep, function)(**arguments, quiet=True)
    message = str(caught.value)
    assert says.lower() in message.lower() and "\n" not in message, message
    assert not home.root.exists()  # nothing written


def _in_python(**changes) -> largestep.Workload:
    """The tiny workload as a notebook would hold it: an object, not a spec."""
    return dataclasses.replace(tiny_workload.make(samples=256), **changes)


class _Items(torch.utils.data.Dataset):
    def __len__(self):
        return 64

    def __getitem__(self, index):
        return torch.ones(4), torch.tensor(index % 2)


WORKLOAD_REFUSALS = [
    ({"options": {"samples": 64}}, "built in Python already"),
    ({"launcher": "ray"}, "Ray task cannot read"),
    ({"batch_sizes": [100_000]}, "larger than the 256 training samples"),  # refused after it was stored
]


@pytest.mark.parametrize("arguments, says", WORKLOAD_REFUSALS, ids=[s for _, s in WORKLOAD_REFUSALS])
def test_a_workload_built_in_python_that_is_refused_leaves_nothing_in_the_home(home, arguments, says):
    with pytest.raises(LargestepError, match=says):
        largestep.profile(_in_python(), **arguments, quiet=True)
    assert not home.root.exists()


def test_a_dataset_workload_built_in_python_is_refused_with_a_file_spec_to_use(home):
    workload = _in_python(train=_Items(), val=_Items(), name="items")
    with pytest.raises(LargestepError, match=r"reads Datasets.*path/to/file.py:make"):
        largestep.profile(workload, quiet=True)
    assert not home.root.exists()


def test_a_stored_workload_loads_from_its_spec_and_says_when_it_is_gone(home):
    from largestep.workloads.loader import load_workload

    cache = cache_of(home)
    workload = _in_python()
    key, _undo = cache.put(workload)
    assert cache.put(workload)[0] == key  # the same workload stored twice is one entry
    loaded = load_workload(f"cached:{key}", {}, cache, check=True)
    assert loaded.name == "tiny-mlp" and torch.equal(loaded.train[0], workload.train[0])
    with pytest.raises(LargestepError, match="takes no options"):
        load_workload(f"cached:{key}", {"samples": "8"}, cache)
    with pytest.raises(LargestepError, match="lives in a home's workload cache"):
        load_workload(f"cached:{key}", {}, None)
    cache.clear()
    with pytest.raises(LargestepError, match="no longer in the workload cache"):
        load_workload(f"cached:{key}", {}, cache)


def test_a_profile_result_reads_as_a_sentence_and_its_points_as_a_table():
    from largestep.store import profile_summary

    point = {"status": "ok", "p25_s": 0.010, "p75_s": 0.012, "n": 10, "peak_memory_bytes": 2**20}
    stored = {
        "id": "prof-1a2b3c4d",
        "workload": "fraud-mlp",
        "device_name": "CPU",
        "dtype": "fp32",
        "state": "FINISHED",
        "saturation_batch": 256,
        "stop_reason": "plateau",
        "points": [
            {**point, "batch_size": 128, "median_s": 0.011, "samples_per_s": 11_636.4},
            {**point, "batch_size": 256, "median_s": 0.012, "samples_per_s": 21_333.3},
            {"batch_size": 512, "status": "oom", "error": "out of memory"},
        ],
    }
    result = largestep.Profile.of(profile_summary(stored))
    assert repr(result).splitlines()[0] == (
        "Profile prof-1a2b3c4d: fraud-mlp on CPU, 2 batch sizes measured (128 to 256), saturation batch 256, FINISHED"
    )
    frame = result.to_pandas()
    assert list(frame["batch_size"]) == [128, 256, 512] and list(frame["status"]) == ["ok", "ok", "oom"]
    assert frame["step_time_s"].tolist()[:2] == [0.011, 0.012] and frame["timed_steps"].tolist()[:2] == [10, 10]
    assert "<table" in result._repr_html_()
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.saturation_batch = 512


@pytest.mark.slow
@pytest.mark.e2e
def test_a_workload_built_in_python_is_profiled_by_a_job_and_recommended_from(home):
    # its model names a class of a module the job can import only from the folders this process imports from
    base = tiny_workload.make(samples=512)
    workload = dataclasses.replace(
        base, name="built-here", model=lambda: tiny_workload._OomAbove(base.model(), limit=10**6)
    )
    profile = largestep.profile(
        workload, batch_sizes=[32, 128], min_steps=3, min_seconds=0, warmup_steps=1, rounds=1, quiet=True
    )
    assert profile.workload == "built-here" and profile.state == "FINISHED"
    assert [p["status"] for p in profile.points] == ["ok", "ok"]
    assert profile.to_pandas()["step_time_s"].gt(0).all()

    rec = largestep.recommend(profile, quiet=True, accept_load=True)  # measured for real, on a shared machine
    assert rec.profile_id == profile.id and rec.batch_size in (32, 128)
    candidates = rec.to_pandas()
    assert sorted(candidates["batch_size"]) == [32, 128]
    assert candidates.loc[candidates["chosen"], "batch_size"].tolist() == [rec.batch_size]
    assert rec.document["workload_spec"].startswith("cached:")  # a later run of it loads the same entry
    assert f"batch {rec.batch_size}" in repr(rec)

    # the same object again: the stored entry is reused, not written twice
    largestep.profile(workload, batch_sizes=[32], min_steps=3, min_seconds=0, warmup_steps=1, rounds=1, quiet=True)
    assert cache_of(home).usage().entries == 1
