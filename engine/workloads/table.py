"""Built-in ``table`` workload: a user's CSV or Parquet file, read through DuckDB, and an MLP.

The label column picks the task: a non-numeric label, or an integer one with few distinct values,
is classification (cross-entropy, accuracy); anything else is regression (MSE on the
standardised target, mean absolute error in the label's own units).

Features: numbers standardised with the training split's mean and std (a missing value becomes
0, the mean, plus a 0/1 "was missing" column); dates and times as numbers; text and booleans
one-hot encoded over their most frequent values in the training split, the rest as "other".
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import WorkloadError
from .base import Workload

if TYPE_CHECKING:  # pandas is imported only when a table is loaded: it is slow to import
    import pandas as pd

__all__ = ["MLP", "table", "read_table", "accuracy"]

MIN_ROWS = 10  # fewer labelled rows than this cannot be split and trained on
MAX_CLASSES_INTEGER = 20  # an integer label with at most this many values is a class label
MAX_CATEGORIES = 50  # one-hot columns per text column; rarer values share "other"
HIDDEN = 64  # width of the MLP's two hidden layers
BASELINE_BATCH_SIZE = 128  # capped at the training split's size
PARQUET_SUFFIXES = (".parquet", ".pq")
CSV_SUFFIXES = (".csv", ".tsv", ".txt", ".csv.gz", ".tsv.gz")


class MLP(nn.Module):
    """Features [B, D] -> [B, out] logits, or [B] when ``out`` is 1: two ReLU hidden layers."""

    def __init__(self, n_features: int, hidden: int, out: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(n_features, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, out),
        )
        self.squeeze = out == 1  # a single output is a score, compared with a [B] target

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.layers(x)
        return y.squeeze(-1) if self.squeeze else y


# -- metrics ---------------------------------------------------------------------------------


def accuracy(output: torch.Tensor, target: torch.Tensor) -> float:
    """Share of samples whose highest logit is the target class."""
    return float((output.argmax(dim=-1) == target).float().mean())


def _mean_absolute_error(output: torch.Tensor, target: torch.Tensor, scale: float) -> float:
    # outputs and targets are standardised; ``scale`` (the label's std) restores the label's units
    return float((output.float() - target.float()).abs().mean()) * scale


def _root_mean_squared_error(output: torch.Tensor, target: torch.Tensor, scale: float) -> float:
    return float(((output.float() - target.float()) ** 2).mean().sqrt()) * scale


def _squared_error(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(output, target)


# -- reading ---------------------------------------------------------------------------------


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def read_table(path: str | Path) -> "pd.DataFrame":
    """The whole file as a DataFrame, read by DuckDB; the format comes from the file name."""
    import duckdb

    file = Path(path).expanduser()
    if not file.exists():
        raise WorkloadError(f"table: no such file {str(path)!r}; set path to an existing .csv or .parquet file")
    if not file.is_file():
        raise WorkloadError(f"table: {str(path)!r} is not a file; set path to a .csv or .parquet file")
    name = file.name.lower()
    connection = duckdb.connect()  # in-memory and private: never the database's file or a shared default
    try:
        # the relation API takes the path as a value, so it is never formatted into SQL
        if name.endswith(PARQUET_SUFFIXES):
            relation = connection.read_parquet(str(file))
        elif name.endswith(CSV_SUFFIXES):
            relation = connection.read_csv(str(file))
        else:
            raise WorkloadError(
                f"table: cannot tell the format of {file.name!r}; use a file ending in .csv or .parquet"
            )
        frame = relation.df()
    except duckdb.Error as exc:
        raise WorkloadError(
            f"table: cannot read {str(path)!r} ({type(exc).__name__}: {_one_line(exc)}); "
            f"check that it is a valid CSV or Parquet file"
        ) from None
    finally:
        connection.close()
    if frame.empty:  # an empty file reads as one made-up column ("column0") and no rows
        raise WorkloadError(f"table: {str(path)!r} has no rows; give a file with a header line and data rows")
    return frame


# -- encoding --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Split:
    train: torch.Tensor  # row indices of the training split
    val: torch.Tensor  # row indices of the validation split


def _split(n_rows: int, val_fraction: float, seed: int) -> _Split:
    order = torch.randperm(n_rows, generator=torch.Generator().manual_seed(seed))
    n_val = min(n_rows - 2, max(1, round(n_rows * val_fraction)))  # at least 2 rows left to train on
    return _Split(train=order[n_val:].sort().values, val=order[:n_val].sort().values)


def _is_categorical(column: "pd.Series") -> bool:
    import pandas as pd

    if pd.api.types.is_bool_dtype(column):
        return True
    return not (
        pd.api.types.is_numeric_dtype(column)
        or pd.api.types.is_datetime64_any_dtype(column)
        or pd.api.types.is_timedelta64_dtype(column)
    )


def _as_float64(column: "pd.Series") -> torch.Tensor:
    import pandas as pd

    if pd.api.types.is_datetime64_any_dtype(column):
        if getattr(column.dt, "tz", None) is not None:
            column = column.dt.tz_convert("UTC").dt.tz_localize(None)
        values = (column - pd.Timestamp(0)).dt.total_seconds()  # seconds since 1970; NaT stays missing
    elif pd.api.types.is_timedelta64_dtype(column):
        values = column.dt.total_seconds()
    else:
        values = pd.to_numeric(column, errors="coerce").astype("float64")
    # float64 until standardised: seconds since 1970 need more digits than float32 keeps
    return torch.tensor(values.to_numpy(dtype="float64", na_value=float("nan")), dtype=torch.float64)


def _numeric_block(column: "pd.Series", split: _Split) -> torch.Tensor:
    """[N, 1] standardised values, or [N, 2] with a "was missing" indicator when any value is."""
    values = _as_float64(column)
    missing = ~torch.isfinite(values)  # NaN, and inf from a text "inf", count as missing
    train_values = values[split.train][~missing[split.train]]
    mean = train_values.mean() if train_values.numel() else torch.tensor(0.0, dtype=torch.float64)
    std = train_values.std() if train_values.numel() > 1 else torch.tensor(1.0, dtype=torch.float64)
    std = std if torch.isfinite(std) and std > 0 else torch.tensor(1.0, dtype=torch.float64)  # constant: all 0
    standardised = torch.where(missing, 0.0, (values - mean) / std).float()
    if missing.any():
        return torch.stack([standardised, missing.float()], dim=1)
    return standardised.unsqueeze(1)


def _category_block(column: "pd.Series", split: _Split) -> torch.Tensor:
    """[N, k] one-hot over the training split's top values, plus an "other" column if any value is not among them."""
    text = column.astype("string").fillna("<missing>").astype(str).to_numpy()
    train_counts: dict[str, int] = {}
    for value in text[split.train.numpy()]:
        train_counts[value] = train_counts.get(value, 0) + 1
    kept = sorted(train_counts, key=lambda v: (-train_counts[v], v))[:MAX_CATEGORIES]
    index = {value: i for i, value in enumerate(kept)}
    codes = torch.tensor([index.get(value, len(kept)) for value in text], dtype=torch.long)
    width = len(kept) + (1 if bool((codes == len(kept)).any()) else 0)
    return F.one_hot(codes, width).float()


def _encode_features(frame: "pd.DataFrame", split: _Split) -> torch.Tensor:
    blocks = [
        (_category_block if _is_categorical(frame[name]) else _numeric_block)(frame[name], split)
        for name in frame.columns
    ]
    return torch.cat(blocks, dim=1)


@dataclass(frozen=True)
class _Target:
    values: torch.Tensor  # int64 class indices, or float32 standardised values
    classes: tuple[str, ...]  # class names; empty for regression
    scale: float  # the label's std (regression), to report errors in its units


def _is_classification(label: "pd.Series") -> bool:
    import pandas as pd

    if _is_categorical(label):
        return True
    if pd.api.types.is_datetime64_any_dtype(label) or pd.api.types.is_timedelta64_dtype(label):
        return False
    values = pd.to_numeric(label, errors="coerce")
    integral = bool((values == values.round()).all())  # 1.0, 2.0 from a CSV with gaps counts as integer
    return integral and values.nunique() <= MAX_CLASSES_INTEGER


def _encode_target(label: "pd.Series", split: _Split, column: str) -> _Target:
    if _is_classification(label):
        classes = sorted(label.unique().tolist(), key=lambda v: (str(type(v)), v))
        if len(classes) < 2:
            raise WorkloadError(
                f"table: label column {column!r} has a single value ({classes[0]!r}); "
                f"choose a column with at least two classes"
            )
        index = {value: i for i, value in enumerate(classes)}
        codes = torch.tensor([index[value] for value in label.tolist()], dtype=torch.long)
        return _Target(codes, tuple(str(c) for c in classes), scale=1.0)
    values = _as_float64(label)
    mean, std = values[split.train].mean(), values[split.train].std()
    std = std if torch.isfinite(std) and std > 0 else torch.tensor(1.0, dtype=torch.float64)
    return _Target(((values - mean) / std).float(), (), scale=float(std))


# -- the built-in ----------------------------------------------------------------------------


def _check_options(path: str | None, label: str | None, val_fraction: float) -> tuple[str, str]:
    if not path:
        raise WorkloadError("table: set path to a .csv or .parquet file (e.g. --set path=data.parquet)")
    if not label:
        raise WorkloadError("table: set label to the column to predict (e.g. --set label=is_fraud)")
    if not 0.0 < val_fraction < 1.0:
        raise WorkloadError(f"table: val_fraction must be between 0 and 1 (exclusive), not {val_fraction}")
    return str(path), str(label)


def table(path: str | None = None, label: str | None = None, val_fraction: float = 0.2, seed: int = 0) -> Workload:
    """Your own CSV or Parquet file (options: path, label); an MLP classifier or regressor."""
    path, label = _check_options(path, label, val_fraction)
    frame = read_table(path)
    if label not in frame.columns:
        columns = ", ".join(map(str, frame.columns))
        raise WorkloadError(f"table: no column {label!r} in {Path(path).name}; set label to one of: {columns}")
    frame = frame[frame[label].notna()].reset_index(drop=True)  # rows without a label cannot train
    if len(frame) < MIN_ROWS:
        raise WorkloadError(
            f"table: {Path(path).name} has {len(frame)} rows with a {label!r} value; at least {MIN_ROWS} are needed"
        )
    features = frame.drop(columns=[label])
    if features.shape[1] == 0:
        raise WorkloadError(f"table: {Path(path).name} has no column besides the label {label!r}; add feature columns")

    split = _split(len(frame), val_fraction, seed)
    x = _encode_features(features, split)
    target = _encode_target(frame[label], split, label)
    n_classes = len(target.classes)
    if n_classes:
        head, loss, task = n_classes, F.cross_entropy, f"classification into {n_classes} classes"
        metrics = {"accuracy": accuracy}
        primary, mode = "accuracy", "max"
    else:
        head, loss, task = 1, _squared_error, "regression"
        metrics = {
            "mae": functools.partial(_mean_absolute_error, scale=target.scale),
            "rmse": functools.partial(_root_mean_squared_error, scale=target.scale),
        }
        primary, mode = "mae", "min"

    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(path).name.split(".")[0]) or "data"
    return Workload(
        name=f"table-{stem}",
        model=functools.partial(MLP, x.shape[1], HIDDEN, head),
        train=(x[split.train], target.values[split.train]),
        val=(x[split.val], target.values[split.val]),
        loss=loss,
        baseline_batch_size=min(BASELINE_BATCH_SIZE, len(split.train)),
        baseline_lr=1e-3,
        optimizer="adam",
        metrics=metrics,
        primary_metric=primary,
        primary_metric_mode=mode,
        epochs=10,
        description=(
            f"{Path(path).name}: {len(frame)} rows, {x.shape[1]} features from "
            f"{features.shape[1]} columns; {task} of {label!r}"
        ),
    )
