"""Workloads: the built-ins, the average-precision metric, the table reader and the loader's specs and errors."""

from __future__ import annotations

import math
import pickle
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from largestep.errors import WorkloadError
from largestep.workloads import BUILTINS, Workload, list_workloads, load_workload
from largestep.workloads.fraud import average_precision

SMALL_FRAUD = {"samples": 400, "val_samples": 100, "seq_len": 8}


def load_error(spec: str, options: dict | None = None) -> str:
    """The message of the WorkloadError that loading raises, checked to be one line."""
    with pytest.raises(WorkloadError) as info:
        load_workload(spec, options)
    message = str(info.value)
    assert "\n" not in message and message.strip() == message
    return message


def train_steps(workload: Workload, model: torch.nn.Module, epochs: int, batch_size: int) -> None:
    optimizer = workload.make_optimizer(model, workload.baseline_lr)
    generator = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        order = torch.randperm(workload.n_train, generator=generator)
        for start in range(0, workload.n_train, batch_size):
            *inputs, target = (t[order[start : start + batch_size]] for t in workload.train)
            loss = workload.loss(model(*inputs), target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()


def validation_metrics(workload: Workload, model: torch.nn.Module) -> dict[str, float]:
    *inputs, target = workload.val
    with torch.no_grad():
        return workload.evaluate_metrics(model(*inputs), target)


# -- built-ins -------------------------------------------------------------------------------


@pytest.fixture
def csv_table(tmp_path) -> Path:
    """200 rows: a number with gaps, a text column, a boolean, and a yes/no label."""
    rng = np.random.default_rng(0)
    n = 200
    amount = rng.normal(size=n)
    frame = pd.DataFrame(
        {
            "amount": amount,
            "colour": rng.choice(["red", "green", "blue"], n),
            "online": rng.random(n) > 0.5,
            "label": np.where(amount > 0, "yes", "no"),
        }
    )
    frame.loc[::10, "amount"] = np.nan
    path = tmp_path / "cards.csv"
    frame.to_csv(path, index=False)
    return path


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_each_builtin_loads_and_its_model_trains_one_step(name, csv_table):
    options = {"path": str(csv_table), "label": "label"} if name == "table" else SMALL_FRAUD
    workload = load_workload(name, options)
    workload.validate()
    model = workload.model()
    assert model is not workload.model()  # a fresh model per call
    *inputs, target = (t[:16] for t in workload.train)
    loss = workload.loss(model(*inputs), target)
    loss.backward()
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    metrics = validation_metrics(workload, model)
    assert workload.main_metric in metrics and math.isfinite(metrics[workload.main_metric])
    # jobs and the dashboard may ship a workload's parts to another process
    pickle.dumps((workload.model, workload.loss, dict(workload.metrics)))
    assert any(row["name"] == name and row["source"] == "builtin" and row["description"] for row in list_workloads())


@pytest.mark.parametrize(
    "name, sums",
    [
        ("fraud-gru", (4799.999565, 9.0, 999.4315, 2.0, 33850.791246, 6690.114394)),
        ("fraud-mlp", (-0.000293, 9.0, 15.450028, 2.0, 4384.226615, 854.144948)),
    ],
)
def test_fraud_data_stays_what_it_was_for_a_seed(name, sums):
    """Sums of every tensor as the generator made them before it was made faster: a seed's data never changes."""
    threads = torch.get_num_threads()
    w = load_workload(name, {"samples": 300, "val_samples": 60, "seed": 3})
    assert torch.get_num_threads() == threads, "the generator gives back torch's thread setting"
    found = [float(t.double().sum()) for t in w.train + w.val] + [
        float(t.double().abs().sum()) for t in (w.train[0], w.val[0])
    ]
    assert found == pytest.approx(sums, rel=1e-5, abs=1e-3)


@pytest.mark.parametrize("name", ["fraud-gru", "fraud-mlp"])
def test_fraud_data_is_deterministic_given_the_seed(name):
    first = load_workload(name, {**SMALL_FRAUD, "seed": 3})
    again = load_workload(name, {**SMALL_FRAUD, "seed": 3})
    other = load_workload(name, {**SMALL_FRAUD, "seed": 4})
    for split in ("train", "val"):
        for a, b in zip(getattr(first, split), getattr(again, split)):
            assert torch.equal(a, b)
    assert not torch.equal(first.train[0], other.train[0])
    assert not torch.equal(first.train[0], first.val[0][: first.n_train])


def test_fraud_rate_is_the_requested_rate():
    workload = load_workload("fraud-mlp", {"samples": 2000, "val_samples": 1000, "fraud_rate": 0.1})
    assert abs(float(workload.train[-1].mean()) - 0.1) < 0.005
    assert abs(float(workload.val[-1].mean()) - 0.1) < 0.005
    assert set(workload.train[-1].unique().tolist()) == {0.0, 1.0}


def test_fraud_gru_sequences_have_the_requested_shape():
    workload = load_workload("fraud-gru", {"samples": 100, "val_samples": 30, "seq_len": 5})
    x, y = workload.train
    assert x.shape[:2] == (100, 5) and y.shape == (100,)
    assert workload.model()(x[:7]).shape == (7,)


def test_fraud_mlp_learns_well_above_the_base_rate():
    workload = load_workload("fraud-mlp", {"samples": 4000, "val_samples": 2000, "fraud_rate": 0.05})
    base_rate = float(workload.val[-1].mean())
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = workload.model()
    before = validation_metrics(workload, model)["average_precision"]
    train_steps(workload, model, epochs=4, batch_size=64)
    after = validation_metrics(workload, model)["average_precision"]
    assert after > 5 * base_rate and after > before + 0.1, (before, after, base_rate)


def test_fraud_options_are_checked():
    assert "fraud_rate" in load_error("fraud-gru", {**SMALL_FRAUD, "fraud_rate": 0})
    assert "samples" in load_error("fraud-mlp", {"samples": 3})


# -- average precision -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "scores, labels, expected",
    [
        ([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0], (1 / 1 + 2 / 3) / 2),  # positives at ranks 1 and 3
        ([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1], (1 / 1 + 2 / 3) / 2),  # same ranking, unsorted input
        ([3.0, 2.0, 1.0], [1, 1, 0], 1.0),  # perfect ranking
        ([1.0, 2.0, 3.0], [1, 0, 0], 1 / 3),  # the only positive last
        ([0.5, 0.5, 0.5, 0.5], [1, 0, 0, 1], 0.5),  # all tied: one threshold
        ([0.9, 0.5, 0.5, 0.1], [0, 1, 0, 1], 0.5 * 1 / 3 + 0.5 * 2 / 4),  # a tie in the middle
    ],
)
def test_average_precision_on_hand_computed_examples(scores, labels, expected):
    assert average_precision(torch.tensor(scores), torch.tensor(labels, dtype=torch.float)) == pytest.approx(expected)


def test_average_precision_accepts_class_logits_and_flags_undefined_cases():
    logits = torch.tensor([[0.0, 2.0], [0.0, 1.0], [1.0, 0.0]])
    assert average_precision(logits, torch.tensor([1, 0, 1])) == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision(torch.tensor([[0.3], [0.1]]), torch.tensor([[1.0], [0.0]])) == 1.0
    assert math.isnan(average_precision(torch.tensor([0.3, 0.1]), torch.tensor([0.0, 0.0])))
    assert math.isnan(average_precision(torch.tensor([float("nan"), 0.1]), torch.tensor([1.0, 0.0])))


# -- table -----------------------------------------------------------------------------------


def test_table_csv_classification_encodes_each_column_kind(csv_table):
    workload = load_workload("table", {"path": str(csv_table), "label": "label", "val_fraction": "0.25"})
    x, y = workload.train
    # amount + its "was missing" flag, three colours, two booleans
    assert x.shape == (150, 1 + 1 + 3 + 2) and workload.n_val == 50
    assert y.dtype == torch.long and set(y.tolist()) == {0, 1}
    assert workload.loss is torch.nn.functional.cross_entropy
    assert workload.primary_metric == "accuracy" and workload.primary_metric_mode == "max"
    assert workload.model()(x[:4]).shape == (4, 2)
    one_hot = x[:, 2:]
    assert torch.equal(one_hot.sum(1), torch.full((150,), 2.0))  # one colour and one boolean per row
    assert torch.isfinite(x).all()
    assert abs(float(x[:, 0].mean())) < 0.2  # standardised with train statistics


def test_table_is_deterministic_given_the_seed(csv_table):
    options = {"path": str(csv_table), "label": "label"}
    first, again = load_workload("table", options), load_workload("table", options)
    other = load_workload("table", {**options, "seed": 1})
    assert torch.equal(first.train[0], again.train[0]) and torch.equal(first.val[1], again.val[1])
    assert not torch.equal(first.train[0], other.train[0])


def test_table_parquet_regression_learns(tmp_path):
    rng = np.random.default_rng(1)
    n = 600
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    frame = pd.DataFrame({"x1": x1, "x2": x2, "price": 100 + 30 * x1 - 20 * x2 + rng.normal(size=n)})
    path = tmp_path / "prices.parquet"
    frame.to_parquet(path)
    workload = load_workload("table", {"path": str(path), "label": "price"})
    assert workload.primary_metric == "mae" and workload.primary_metric_mode == "min"
    assert workload.train[1].dtype == torch.float32 and workload.model()(workload.train[0][:3]).shape == (3,)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = workload.model()
    before = validation_metrics(workload, model)["mae"]
    train_steps(workload, model, epochs=20, batch_size=32)
    after = validation_metrics(workload, model)["mae"]
    assert after < 5 < before  # in the label's units: the label's spread is about 36


def test_table_label_type_picks_the_task(tmp_path):
    rng = np.random.default_rng(2)
    n = 300
    frame = pd.DataFrame({"x": rng.normal(size=n), "grade": rng.integers(1, 6, n), "count": rng.integers(0, 1000, n)})
    path = tmp_path / "grades.parquet"
    frame.to_parquet(path)
    grades = load_workload("table", {"path": str(path), "label": "grade"})
    counts = load_workload("table", {"path": str(path), "label": "count"})
    assert grades.primary_metric == "accuracy" and grades.model()(grades.train[0][:2]).shape == (2, 5)
    assert counts.primary_metric == "mae"


def test_table_caps_categories_at_the_most_frequent(tmp_path):
    n = 400
    frame = pd.DataFrame({"city": [f"city{i % 80}" for i in range(n)], "y": [i % 2 for i in range(n)]})
    path = tmp_path / "cities.csv"
    frame.to_csv(path, index=False)
    workload = load_workload("table", {"path": str(path), "label": "y"})
    assert workload.train[0].shape[1] == 50 + 1  # the 50 most frequent, then "other"


@pytest.mark.parametrize(
    "case, expected",
    [
        ("no path", "set path"),
        ("no label", "set label"),
        ("missing file", "no such file"),
        ("unknown format", ".csv or .parquet"),
        ("corrupt parquet", "cannot read"),
        ("unknown label", "one of: amount, colour, online, label"),
        ("too few rows", "at least 10"),
        ("only the label", "no column besides the label"),
        ("single class", "at least two classes"),
    ],
)
def test_table_errors_say_how_to_fix(case, expected, csv_table, tmp_path):
    tiny = tmp_path / "tiny.csv"
    pd.DataFrame({"x": range(5), "y": range(5)}).to_csv(tiny, index=False)
    label_only = tmp_path / "label_only.csv"
    pd.DataFrame({"y": range(20)}).to_csv(label_only, index=False)
    single = tmp_path / "single.csv"
    pd.DataFrame({"x": range(20), "y": ["a"] * 20}).to_csv(single, index=False)
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"this is not parquet")
    sheet = tmp_path / "data.xlsx"
    sheet.write_bytes(b"PK")
    options = {
        "no path": {"label": "label"},
        "no label": {"path": str(csv_table)},
        "missing file": {"path": str(tmp_path / "nope.csv"), "label": "y"},
        "unknown format": {"path": str(sheet), "label": "y"},
        "corrupt parquet": {"path": str(corrupt), "label": "y"},
        "unknown label": {"path": str(csv_table), "label": "nope"},
        "too few rows": {"path": str(tiny), "label": "y"},
        "only the label": {"path": str(label_only), "label": "y"},
        "single class": {"path": str(single), "label": "y"},
    }[case]
    assert expected in load_error("table", options)


# -- loader: specs ---------------------------------------------------------------------------

USER_MODULE = '''
import torch
from largestep import Workload
{sibling_import}

def make(n: int = 32, scale: float = 1.0, shuffle: bool = False, tag=None):
    """A tiny two-class problem."""
    x = torch.randn(n, 3, generator=torch.Generator().manual_seed(0)) * scale
    y = (x.sum(1) > 0).long()
    if shuffle:
        x, y = x.flip(0), y.flip(0)
    return Workload(name=tag or "tiny", model=lambda: torch.nn.Linear(3, 2), train=(x, y), val=(x[:8], y[:8]),
                    loss=torch.nn.functional.cross_entropy, baseline_batch_size=8, baseline_lr=0.01)

def raises():
    raise TypeError("bad thing happened\\non a second line")

def wrong_type():
    return 42

def mismatched():
    x = torch.zeros(10, 3)
    return Workload(name="bad", model=lambda: torch.nn.Linear(3, 2), train=(x, torch.zeros(9)), val=(x, torch.zeros(10)),
                    loss=torch.nn.functional.cross_entropy, baseline_batch_size=8, baseline_lr=0.01)

def needs(path, label):
    return make()

NOT_A_FUNCTION = 3
'''


def write_module(folder: Path, name: str, sibling: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    sibling_import = ""
    if sibling:
        (folder / f"{sibling}.py").write_text("SIZE = 12\n")
        sibling_import = f"from {sibling} import SIZE"
    path = folder / f"{name}.py"
    path.write_text(textwrap.dedent(USER_MODULE).format(sibling_import=sibling_import))
    return path


@pytest.fixture
def user_module(tmp_path, monkeypatch) -> str:
    """The name of an importable module holding USER_MODULE; forgotten again after the test."""
    name = f"largestep_user_{tmp_path.name.replace('-', '_')}"
    write_module(tmp_path / "modules", name)
    monkeypatch.syspath_prepend(str(tmp_path / "modules"))
    yield name
    sys.modules.pop(name, None)


@pytest.fixture
def entry_points(tmp_path, monkeypatch, user_module) -> None:
    """A fake installed distribution declaring two entry points in group largestep.workloads."""
    dist_info = tmp_path / "dists" / "fake_largestep_plugin-1.0.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-largestep-plugin\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text(
        f"[largestep.workloads]\nplugin-tiny = {user_module}:make\nplugin-broken = no_such_module_xyz:make\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path / "dists"))


def test_module_function_spec_with_converted_options(user_module):
    workload = load_workload(f"{user_module}:make", {"n": "20", "scale": "0.5", "shuffle": "yes", "tag": "t"})
    assert workload.name == "t" and workload.n_train == 20
    assert float(workload.train[0].abs().max()) < 2.5  # scale 0.5 applied as a float


def test_file_spec_relative_absolute_and_with_sibling_import(tmp_path, monkeypatch):
    path = write_module(tmp_path / "project" / "models", "wl", sibling="wl_sibling_constants")
    monkeypatch.chdir(tmp_path / "project")
    assert load_workload("models/wl.py:make").n_train == 32
    assert load_workload(f"{path}:make", {"n": 2048}).n_train == 2048
    monkeypatch.chdir(tmp_path / "project" / "models")
    assert load_workload("wl.py:make", {"n": "2e3"}).n_train == 2000
    assert str(tmp_path / "project" / "models") not in sys.path  # put back after the import
    sys.modules.pop("wl_sibling_constants", None)


def test_two_files_with_the_same_name_do_not_collide(tmp_path):
    first = write_module(tmp_path / "a", "workload")
    second = write_module(tmp_path / "b", "workload")
    second.write_text(second.read_text().replace('"tiny"', '"second"'))
    assert load_workload(f"{first}:make").name == "tiny"
    assert load_workload(f"{second}:make").name == "second"


def test_entry_point_loads_and_is_listed(entry_points):
    assert load_workload("plugin-tiny", {"n": 40}).n_train == 40
    rows = {row["name"]: row for row in list_workloads()}
    assert rows["plugin-tiny"]["source"] == "entry point"
    assert rows["fraud-gru"]["source"] == "builtin"
    assert "failed to load" in load_error("plugin-broken") and "ModuleNotFoundError" in load_error("plugin-broken")


# -- loader: errors --------------------------------------------------------------------------


def test_unknown_name_lists_the_built_ins_and_spec_forms():
    message = load_error("no-such-workload")
    assert "unknown workload 'no-such-workload'" in message
    assert all(name in message for name in BUILTINS)
    assert "package.module:function" in message and "file.py:function" in message
    assert "did you mean 'fraud-gru'" in load_error("fraud_gru")


def test_missing_file(tmp_path):
    message = load_error(f"{tmp_path / 'nowhere' / 'model.py'}:make")
    assert "does not exist" in message and "model.py" in message
    assert "write wl.py:function" in load_error("wl.py")


def test_no_such_function(user_module, tmp_path):
    assert "has no function 'nope'" in load_error(f"{user_module}:nope")
    message = load_error(f"{write_module(tmp_path / 'f', 'wl')}:nope")
    assert "has no function 'nope'" in message and "make" in message
    assert "not a function" in load_error(f"{user_module}:NOT_A_FUNCTION")


def test_module_not_found_and_module_import_errors(tmp_path, monkeypatch):
    assert "no module named 'no_such_module_xyz'" in load_error("no_such_module_xyz:make")
    (tmp_path / "needs_missing_dep.py").write_text("import not_installed_dependency_xyz\n")
    (tmp_path / "broken_syntax.py").write_text("def make(:\n")
    (tmp_path / "raises_on_import.py").write_text("raise RuntimeError('no GPU\\nhere')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    message = load_error("needs_missing_dep:make")
    assert "ModuleNotFoundError" in message and "not_installed_dependency_xyz" in message
    assert "SyntaxError" in load_error("broken_syntax:make")
    assert "SyntaxError" in load_error(f"{tmp_path / 'broken_syntax.py'}:make")
    message = load_error(f"{tmp_path / 'raises_on_import.py'}:make")
    assert "importing" in message and "RuntimeError: no GPU here" in message


def test_function_that_raises(user_module):
    message = load_error(f"{user_module}:raises")
    assert "raised TypeError: bad thing happened on a second line" in message


def test_function_that_returns_the_wrong_type(user_module):
    message = load_error(f"{user_module}:wrong_type")
    assert "returned int (42)" in message and "not a Workload" in message


def test_mismatched_tensor_lengths(user_module):
    assert "mismatched lengths" in load_error(f"{user_module}:mismatched")


def test_missing_required_arguments(user_module):
    message = load_error(f"{user_module}:needs")
    assert "needs path, label" in message and "--set path=" in message


def test_unknown_option_names_the_accepted_ones(user_module):
    message = load_error(f"{user_module}:make", {"size": 3})
    assert "no option 'size'" in message and "n, scale, shuffle, tag" in message
    assert "samples" in load_error("fraud-gru", {"sampels": 10})


@pytest.mark.parametrize(
    "options, expected",
    [
        ({"n": "many"}, "n='many' of workload"),
        ({"n": "1.5"}, "an integer"),
        ({"scale": "big"}, "a number"),
        ({"shuffle": "maybe"}, "true or false"),
    ],
)
def test_option_with_a_bad_type(user_module, options, expected):
    assert expected in load_error(f"{user_module}:make", options)


def test_builtin_options_arrive_as_strings_from_the_cli():
    workload = load_workload("fraud-mlp", {"samples": "300", "val_samples": "60", "fraud_rate": "0.1", "seed": "2"})
    assert workload.n_train == 300 and float(workload.train[-1].mean()) == pytest.approx(0.1)
    assert "an integer" in load_error("fraud-mlp", {"samples": "lots"})
