"""The framework adapters for real, offline: a Lightning Trainer.fit and a Hugging Face Trainer.train end as
FINISHED largestep runs, with their metrics in DuckDB, on the Runs page, and comparable to a launched run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import TINY
from helpers import open_page, wait_finished
from tiny_workload import make as make_tiny

import largestep
from largestep import store
from largestep.jobs import start as starts
from largestep.measure.train import TrainConfig

pytestmark = [pytest.mark.slow, pytest.mark.integration]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def stored_run(home, run_id: str) -> tuple[dict, dict[str, int]]:
    """The run as the store has it, and how many rows each of its metrics has."""
    store.ingest(home)
    with store.connect(home) as con:
        run = store.get_run(con, run_id)
        counts = store.run_metrics(con, [run_id]).groupby("name").size().to_dict()
    return run, counts


# -- Lightning -------------------------------------------------------------------------------------


def fit_lightning(home, tmp_path, epochs: int = 3):
    """Trainer.fit on the tiny workload's data (a small MLP), with LargestepLogger; returns the logger."""
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader, TensorDataset

    from largestep.integrations.lightning import LargestepLogger

    class TinyModule(pl.LightningModule):
        def __init__(self, lr: float = 1e-2, hidden: int = 32):
            super().__init__()
            self.save_hyperparameters()
            self.net = torch.nn.Sequential(torch.nn.Linear(16, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 2))

        def training_step(self, batch, _index):
            x, y = batch
            loss = torch.nn.functional.cross_entropy(self.net(x), y)
            self.log("train_loss", loss)
            return loss

        def validation_step(self, batch, _index):
            x, y = batch
            out = self.net(x)
            self.log("val_loss", torch.nn.functional.cross_entropy(out, y))
            self.log("val_acc", (out.argmax(1) == y).float().mean())

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)

    tiny = make_tiny()
    torch.manual_seed(0)
    train = DataLoader(TensorDataset(*tiny.train), batch_size=32, shuffle=True)
    val = DataLoader(TensorDataset(*tiny.val), batch_size=256)
    logger = LargestepLogger("tiny-mlp", home=str(home.root), tags=["lightning"], seed=0, primary_metric="acc")
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=logger,
        accumulate_grad_batches=2,
        log_every_n_steps=4,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(tmp_path),
    )
    trainer.fit(TinyModule(), train, val)
    return logger


def test_a_lightning_fit_is_a_finished_run_with_its_batch_metrics_and_hyperparameters(home, tmp_path, monkeypatch):
    logger = fit_lightning(home, tmp_path)
    run, counts = stored_run(home, logger.run.id)
    assert run["state"] == "FINISHED" and logger.version == run["id"]
    assert run["batch_size"] == 64 and run["accumulate"] == 2 and run["micro_batch_size"] == 32  # 32 x 2 x 1
    assert run["lr"] == pytest.approx(1e-2) and run["role"] == "external" and list(run["tags"]) == ["lightning"]
    assert run["config"]["hyperparameters"] == {"lr": 0.01, "hidden": 32}
    assert counts["val_loss"] == 3 and counts["val_acc"] == 3  # one validation an epoch
    with store.connect(home) as con:  # the epoch is the training done, as track() and launched runs have it
        evals = store.run_metrics(con, [run["id"]], ["val_loss"]).sort_values("step")
    assert list(evals["epoch"]) == pytest.approx([1.0, 2.0, 3.0])
    assert counts["train_loss"] >= 4 and counts["lr"] == counts["train_loss"]
    assert (
        run["final_primary_metric"] == pytest.approx(run["final_metrics"]["acc"]) and run["final_metrics"]["acc"] > 0.6
    )
    assert run["steps"] == 3 * 2048 // 64
    # ... and on the Runs page, as any run
    at = open_page(monkeypatch, home, "runs")
    table = at.dataframe[0].value
    assert list(table["id"]) == [run["id"]] and list(table["state"]) == ["FINISHED"]
    assert list(table["role"]) == ["external"]


def test_a_lightning_run_compares_against_a_largestep_launched_run(home, tmp_path):
    [launched] = starts.start_train(home, TINY, {}, "cpu", TrainConfig(batch_size=128, lr=4e-2, epochs=3))
    logger = fit_lightning(home, tmp_path)
    wait_finished(home, launched, timeout_s=180)
    store.ingest(home)
    result = subprocess.run(
        [sys.executable, "-m", "largestep.cli", "compare", logger.run.id, launched, "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=dict(os.environ, LARGESTEP_HOME=str(home.root)),
    )
    assert result.returncode == 0, result.stderr
    comparison = json.loads(result.stdout)
    baseline, other = comparison["groups"]
    assert (baseline["name"], other["name"]) == (logger.run.id, launched)
    assert (baseline["batch_size"], other["batch_size"]) == (64, 128)
    assert baseline["reached"] == 1 and baseline["time_to_target_s"]["mean"] > 0


def test_a_failing_fit_ends_the_run_failed_with_the_error(home, tmp_path, monkeypatch):
    import lightning.pytorch as pl

    def explode(self, *args, **kwargs):
        raise RuntimeError("disk full while writing a checkpoint")

    monkeypatch.setattr(pl.LightningModule, "on_train_epoch_end", explode)
    with pytest.raises(RuntimeError, match="disk full"):
        fit_lightning(home, tmp_path, epochs=2)
    store.ingest(home)
    with store.connect(home) as con:
        [run_id] = list(store.list_runs(con)["id"])
        run = store.get_run(con, run_id)
    assert run["state"] == "FAILED" and run["error"] == "RuntimeError: disk full while writing a checkpoint"


def test_a_datamodule_fit_takes_its_batch_from_the_datamodule_or_says_how_to_give_it(home, tmp_path):
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader, TensorDataset

    from largestep.integrations.lightning import LargestepLogger

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Linear(16, 2)

        def training_step(self, batch, _index):
            loss = torch.nn.functional.cross_entropy(self.net(batch[0]), batch[1])
            self.log("train_loss", loss)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    class Data(pl.LightningDataModule):
        def __init__(self, batch_size):
            super().__init__()
            if batch_size is not None:
                self.batch_size = batch_size

        def train_dataloader(self):
            return DataLoader(TensorDataset(*make_tiny().train), batch_size=getattr(self, "batch_size", 8))

    def fit(data):
        logger = LargestepLogger("dm", home=str(home.root))
        pl.Trainer(
            max_steps=3,
            accelerator="cpu",
            devices=1,
            logger=logger,
            log_every_n_steps=1,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=str(tmp_path),
        ).fit(Module(), datamodule=data)
        return logger

    logger = fit(Data(batch_size=48))
    run, counts = stored_run(home, logger.run.id)
    assert run["state"] == "FINISHED" and run["batch_size"] == 48 and run["lr"] == pytest.approx(0.1)
    assert counts["train_loss"] == 3
    with pytest.raises(largestep.errors.UsageError, match=r"pass LargestepLogger\(batch_size=GLOBAL_BATCH\)"):
        fit(Data(batch_size=None))
    assert len(list(home.jobs.iterdir())) == 1  # the refused fit wrote no run


# -- Hugging Face ----------------------------------------------------------------------------------


def test_a_hugging_face_train_is_a_finished_run_with_its_effective_batch_and_metrics(home, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    import numpy as np
    from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

    from largestep.integrations.transformers import LargestepCallback

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        num_labels=2,
    )
    model = BertForSequenceClassification(config)  # random weights: nothing is downloaded
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 64, (384, 12), generator=g)
    labels = (ids[:, 0] > 32).long()  # a rule the model can learn from the first token
    rows = [{"input_ids": i, "attention_mask": torch.ones_like(i), "labels": y} for i, y in zip(ids, labels)]

    def accuracy(prediction):
        return {"accuracy": float((np.argmax(prediction.predictions, axis=1) == prediction.label_ids).mean())}

    args = TrainingArguments(
        output_dir=str(tmp_path / "hf"),
        per_device_train_batch_size=16,
        gradient_accumulation_steps=2,
        num_train_epochs=2,
        learning_rate=2e-3,
        logging_steps=2,
        eval_strategy="epoch",
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    callback = LargestepCallback("tiny-bert", home=str(home.root), tags=["hf"], primary_metric="accuracy")
    Trainer(
        model=model,
        args=args,
        train_dataset=rows[:320],
        eval_dataset=rows[320:],
        compute_metrics=accuracy,
        callbacks=[callback],
    ).train()
    run, counts = stored_run(home, callback.run.id)
    assert run["state"] == "FINISHED" and run["workload"] == "tiny-bert"
    assert run["batch_size"] == 32 and run["accumulate"] == 2 and run["micro_batch_size"] == 16  # 16 x 2 x 1
    assert run["lr"] == pytest.approx(2e-3) and run["seed"] == 0 and run["steps"] == 20  # 320 / 32 x 2 epochs
    assert run["config"]["hyperparameters"]["per_device_train_batch_size"] == 16
    assert counts["val_loss"] == 2 and counts["val_accuracy"] == 2 and counts["train_loss"] >= 5
    assert counts["lr"] == counts["train_loss"]
    assert "accuracy" in run["final_metrics"] and run["final_primary_metric"] == run["final_metrics"]["accuracy"]
    at = open_page(monkeypatch, home, "runs")
    assert list(at.dataframe[0].value["id"]) == [run["id"]]


# -- neither library is a dependency ---------------------------------------------------------------


@pytest.mark.parametrize(
    "module, library, extra",
    [
        ("largestep.integrations.lightning", "lightning", "largestep[lightning]"),
        ("largestep.integrations.transformers", "transformers", "largestep[hf]"),
    ],
)
def test_without_the_library_largestep_imports_and_the_adapter_names_the_extra(module, library, extra):
    # A fresh interpreter in which the library cannot be imported, as where it is not installed.
    code = (
        f"import sys; sys.modules[{library!r}] = None\n"
        "import largestep; largestep.track; print('largestep ok')\n"
        f"import {module}\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.stdout.strip() == "largestep ok"
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError:") and f"pip install '{extra}'" in last
