"""Golden losses: a tiny model's first optimisation steps on a fixed batch, against a committed file.

Catches silent numeric changes anywhere in the stack (token layout, blocks, heads, kernels' torch path). After an
intended change, regenerate with ``E2EREC_UPDATE_GOLDEN=1 pytest tests/model/test_golden.py`` and say why in the commit.
"""

import json
import os
from pathlib import Path

import pytest
import torch

from e2erec.model import GenerativeRecommender, ModelConfig, build_model_batch
from e2erec.utils.io import atomic_write_text

from .helpers import random_codes, random_events

GOLDEN = Path(__file__).with_name("golden_losses.json")


def _losses(backbone: str) -> list[dict[str, float]]:
    torch.manual_seed(0)
    sizes = [8, 8, 4]
    cfg = ModelConfig(backbone=backbone, d_model=32, n_layers=2, n_heads=2, calibration_hidden=16)
    model = GenerativeRecommender(cfg, sizes).train()
    batch = build_model_batch(random_events([9, 3, 14, 1, 6], n_items=60, seed=5), random_codes(60, sizes),
                              num_candidates=2)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    out = []
    for _ in range(6):
        losses = model(batch)
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
        out.append({k: round(losses[k].item(), 6) for k in ("loss", "gen_loss", "calib_loss")})
    return out


@pytest.mark.parametrize("backbone", ["transformer", "hstu"])
def test_losses_match_the_committed_golden_file(backbone):
    losses = _losses(backbone)
    golden = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
    if os.environ.get("E2EREC_UPDATE_GOLDEN") == "1":
        golden[backbone] = losses
        atomic_write_text(GOLDEN, json.dumps(golden, indent=1) + "\n")
    assert backbone in golden, f"{GOLDEN} has no {backbone} entry; regenerate with E2EREC_UPDATE_GOLDEN=1"
    for step, (got, want) in enumerate(zip(losses, golden[backbone], strict=True)):
        for key in want:
            assert got[key] == pytest.approx(want[key], rel=1e-4, abs=1e-5), (step, key, got[key], want[key])
