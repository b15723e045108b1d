"""Post-hoc Platt scaling of the calibration head."""

from __future__ import annotations

import pytest
import torch

from e2erec.eval.metrics import log_loss
from e2erec.train.calibrate import fit_platt


def test_fit_platt_recovers_the_planted_scale_and_shift():
    """Labels drawn from sigmoid(0.4 x - 0.7): an over-confident head (scale 1) is shrunk back to the truth."""
    g = torch.Generator().manual_seed(0)
    x = 3.0 * torch.randn(50_000, generator=g)
    y = torch.bernoulli(torch.sigmoid(0.4 * x - 0.7), generator=g)
    a, b = fit_platt(x, y)
    assert a == pytest.approx(0.4, abs=0.02) and b == pytest.approx(-0.7, abs=0.04)
    assert log_loss(torch.sigmoid(a * x + b).numpy(), y.numpy()) < log_loss(torch.sigmoid(x).numpy(), y.numpy()) - 0.1


@pytest.mark.parametrize("labels", [torch.ones(100), torch.zeros(100), torch.tensor([0.0, 1.0] * 5)])
def test_fit_platt_keeps_the_identity_when_there_is_nothing_to_fit(labels):
    """One class (the optimum is at infinity) or fewer than MIN_TARGETS labels."""
    assert fit_platt(torch.randn(len(labels)), labels) == (1.0, 0.0)


def test_fit_platt_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="differ in length"):
        fit_platt(torch.zeros(30), torch.zeros(31))
