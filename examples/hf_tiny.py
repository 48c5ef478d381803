"""Hugging Face models as largestep workloads: a tiny BERT classifier and a tiny GPT-2 language model,
built from config objects with random weights (nothing is downloaded), on synthetic tokens served
as a Dataset of dicts, the shape a Hugging Face training script feeds its model.

    largestep profile  --workload examples/hf_tiny.py:bert
    largestep noise    --workload examples/hf_tiny.py:bert
    largestep train    --workload examples/hf_tiny.py:gpt2 --batch-size 32 --lr 1e-3
    largestep autopilot --workload examples/hf_tiny.py:bert

Set HF_HUB_OFFLINE=1 to be sure nothing reaches the network. The models compute their own loss
from the batch's ``labels`` (``loss=None``); the accuracy metric reads ``out.logits``.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from largestep import Workload

VOCAB = 512  # token ids 0..VOCAB-1; 0 is padding
SEQUENCE = 32  # tokens per sample
MARKER = 7  # the planted signal: a sequence is positive when it holds this token


class MarkedTokens(Dataset):
    """Random token sequences; about half carry the MARKER token somewhere, and that is the label.

    Items are dicts ``{"input_ids", "attention_mask", "labels"}``, built on the fly from the seed so
    the Dataset holds nothing but its length.
    """

    def __init__(self, samples: int, seed: int):
        self.samples, self.seed = samples, seed

    def __len__(self) -> int:
        return self.samples

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        ids = torch.randint(MARKER + 1, VOCAB, (SEQUENCE,), generator=generator)
        label = int(torch.rand((), generator=generator) < 0.5)
        if label:
            ids[int(torch.randint(0, SEQUENCE, (), generator=generator))] = MARKER
        return {
            "input_ids": ids,
            "attention_mask": torch.ones(SEQUENCE, dtype=torch.long),
            "labels": torch.tensor(label),
        }


class NextTokens(MarkedTokens):
    """The same sequences for causal language modelling: the labels are the inputs (the model shifts them)."""

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        item = super().__getitem__(index)
        return {"input_ids": item["input_ids"], "labels": item["input_ids"].clone()}


def no_decay_for_norms_and_biases(model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    """AdamW as Hugging Face's Trainer builds it: weight decay on the weights, none on biases and LayerNorms.
    Both groups run at ``lr``; largestep scales them together when the batch changes."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        (no_decay if name.endswith("bias") or "LayerNorm" in name or ".ln_" in name else decay).append(parameter)
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}], lr=lr
    )


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(dim=-1) == labels).float().mean())


def bert(samples: int = 4096, hidden: int = 64, layers: int = 2) -> Workload:
    """A tiny BERT (BertForSequenceClassification from a BertConfig) finding a planted token."""
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=SEQUENCE,
        num_labels=2,
    )
    return Workload(
        name="hf-tiny-bert",
        model=lambda: BertForSequenceClassification(config),
        train=MarkedTokens(samples, seed=0),
        val=MarkedTokens(samples // 8, seed=1),
        loss=None,  # the model computes it from the batch's labels
        metrics={"accuracy": accuracy},  # scored on out.logits against batch["labels"]
        baseline_batch_size=32,
        baseline_lr=1e-3,
        optimizer=no_decay_for_norms_and_biases,
        max_grad_norm=1.0,
        schedule="linear",
        epochs=3,
        description="tiny BERT from a config, random weights, synthetic tokens",
    )


def gpt2(samples: int = 4096, hidden: int = 64, layers: int = 2) -> Workload:
    """A tiny GPT-2 (GPT2LMHeadModel from a GPT2Config) modelling synthetic token sequences."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=VOCAB, n_positions=SEQUENCE, n_embd=hidden, n_layer=layers, n_head=2)
    return Workload(
        name="hf-tiny-gpt2",
        model=lambda: GPT2LMHeadModel(config),
        train=NextTokens(samples, seed=0),
        val=NextTokens(samples // 8, seed=1),
        loss=None,
        baseline_batch_size=32,
        baseline_lr=1e-3,
        optimizer=no_decay_for_norms_and_biases,
        max_grad_norm=1.0,
        schedule="wsd",
        epochs=2,
        description="tiny GPT-2 from a config, random weights, synthetic tokens",
    )
