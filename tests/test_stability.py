"""The learning-rate stability check on the tiny workload: seeded, so where it diverges is known."""

from __future__ import annotations

import pytest
import tiny_workload
import torch

from largestep.measure.stability import apply_stability, check_stability

pytestmark = pytest.mark.slow  # each trains the tiny model for up to 60 steps

CPU = torch.device("cpu")
BATCH = 128


def _recommendation(lr: float) -> dict:
    return {"batch_size": BATCH, "learning_rate": lr, "reasons": ["the fastest predicted"]}


def test_a_rate_the_model_takes_is_stable_over_the_whole_ramp():
    result = check_stability(tiny_workload.make(), CPU, BATCH, 0.04)
    # 60 steps, rising geometrically from a tenth of the rate to three times it
    assert len(result.lrs) == len(result.losses) == 60
    assert result.lrs[0] == pytest.approx(0.004) and result.lrs[-1] == pytest.approx(0.12)
    assert all(b / a == pytest.approx(result.lrs[1] / result.lrs[0]) for a, b in zip(result.lrs, result.lrs[1:]))
    assert result.stable and result.diverged_at_lr is None and result.max_stable_lr == result.lrs[-1]
    assert result.losses[-1] < result.losses[0]  # it trained
    rec = apply_stability(_recommendation(0.04), result.to_dict())
    assert rec["learning_rate"] == 0.04 and "no divergence up to 0.12" in rec["reasons"][-1]


def test_divergence_above_the_recommended_rate_keeps_it():
    result = check_stability(tiny_workload.make(), CPU, BATCH, 1.0)
    assert 1.0 < result.diverged_at_lr < 3.0 and result.stable
    assert result.max_stable_lr == result.lrs[-2]  # the last rate before the one that diverged
    rec = apply_stability(_recommendation(1.0), result.to_dict())
    assert rec["learning_rate"] == 1.0 and "above the recommendation" in rec["reasons"][-1]


def test_divergence_below_the_recommended_rate_backs_off_to_the_largest_stable_one():
    result = check_stability(tiny_workload.make(), CPU, BATCH, 10.0)
    assert not result.stable and 1.0 < result.diverged_at_lr < 10.0
    assert result.max_stable_lr == result.lrs[-2] < result.diverged_at_lr
    rec = apply_stability(_recommendation(10.0), result.to_dict())
    assert rec["learning_rate"] == result.max_stable_lr
    assert "backed off" in rec["reasons"][-1] and rec["reasons"][0] == "the fastest predicted"
