"""The model on real MovieLens-100K histories: the token batch keeps the real feedback, and both backbones run."""

import numpy as np
import pytest
import torch

from e2erec.data import gather_histories
from e2erec.model import GenerativeRecommender, ModelConfig, build_model_batch

from .helpers import random_codes

SIZES = [16, 16, 8]  # 2048 code tuples >= 1682 items


@pytest.fixture(scope="module")
def real_batch(ml100k, ml100k_split):
    users = np.arange(0, 943, 15)  # 63 users
    events = gather_histories(ml100k, users, ml100k_split.train_end[users], max_len=200)
    codes = random_codes(ml100k.n_items, SIZES)
    return events, codes, build_model_batch(events, codes, num_candidates=4, num_feedback=6)


def test_targets_carry_real_labels_and_history_carries_real_ratings(real_batch):
    events, _, batch = real_batch
    assert int(batch.num_targets.min()) == 4  # every ML-100K user has >= 20 ratings
    ends = events.offsets[1:]
    target_rows = torch.cat([torch.arange(e - 4, e) for e in ends.tolist()])
    assert torch.equal(batch.calib_label, events.label[target_rows])
    assert torch.equal(batch.calib_label, (events.feedback[target_rows] >= 4).float())  # MovieLens: rating >= 4
    assert 0.3 < float(batch.calib_label.mean()) < 0.8  # positives AND negatives from real feedback
    history = ~batch.is_bos & (batch.feedback_id > 0)
    assert sorted(set((batch.feedback_id[history] - 1).tolist())) == [1, 2, 3, 4, 5]  # the five star ratings
    assert int(history.sum()) == events.item.numel() - 4 * len(ends)


@pytest.mark.parametrize("backbone", ["transformer", "hstu"])
def test_both_backbones_train_a_step_on_real_histories(real_batch, backbone):
    events, codes, batch = real_batch
    torch.manual_seed(0)
    model = GenerativeRecommender(ModelConfig(backbone=backbone, d_model=32, n_layers=1, n_heads=2), SIZES)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(3):
        out = model(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    p = model.score_candidates(events, torch.arange(10).repeat(len(events), 1), codes)
    assert p.shape == (len(events), 10) and bool(((p > 0) & (p < 1)).all())
