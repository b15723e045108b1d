"""SASRec: a causal self-attention model over item IDs (Kang & McAuley 2018, "Self-Attentive Sequential
Recommendation"), trained with a full softmax over all items at every position.

The paper trains with one sampled negative and binary cross-entropy; the full softmax (cross-entropy over the whole
catalogue, as in Klenitskiy & Vasilev 2023, "Turning Dross Into Gold Loss: is BERT4Rec really better than SASRec?")
is the stronger and now usual baseline. Architecture as in the paper: 2 blocks, 1 head, learned positions,
shared input/output item embeddings, dropout 0.2. No calibrated head: `predict_proba` returns None.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from e2erec.baselines.common import (
    baseline_rule,
    count_params,
    fit_early_stopping,
    seed_everything,
    select_score,
    split_valid_targets,
    step_flops,
    train_epoch_over,
)
from e2erec.data.jagged import newest_first_windows
from e2erec.data.types import Interactions, Split
from e2erec.eval.protocol import FitContext, keep_only, mask_history, padded_histories, target_chunks, top_k


class SASRecNet(nn.Module):
    def __init__(self, n_items: int, dim: int, max_len: int, n_layers: int = 2, n_heads: int = 1, dropout: float = 0.2):
        super().__init__()
        self.n_items, self.max_len = n_items, max_len
        self.item = nn.Embedding(n_items + 1, dim, padding_idx=n_items)
        nn.init.normal_(self.item.weight, std=dim**-0.5)
        self.pos = nn.Embedding(max_len, dim)
        self.drop = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(dim, n_heads, dim * 2, dropout, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.register_buffer("causal", nn.Transformer.generate_square_subsequent_mask(max_len), persistent=False)

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        """items: int64 (B, L) right-aligned, -1 = padding -> hidden states (B, L, dim).

        As in the reference implementation, padding positions are zeroed ("timeline mask") and only the causal
        mask is applied, so no query row is ever fully masked.
        """
        length = items.shape[1]
        keep = (items >= 0).unsqueeze(-1)  # (B, L, 1)
        x = self.item(torch.where(items < 0, self.n_items, items)) * self.item.embedding_dim**0.5
        x = self.drop(x + self.pos.weight[self.max_len - length :]) * keep
        h = self.blocks(x, mask=self.causal[:length, :length], is_causal=True)
        return self.norm(h) * keep

    def scores(self, items: torch.Tensor) -> torch.Tensor:
        """Next-item logits over the catalogue from the last position: (B, n_items)."""
        return self.forward(items)[:, -1] @ self.item.weight[: self.n_items].T


def training_windows(inter: Interactions, split: Split, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Cut every user's training events into windows of `max_len` next-item steps, newest first.

    Returns (inputs, targets), int64 [n_windows, max_len] right-aligned with -1 padding; targets[:, t] is the item
    following inputs[:, t]. Consecutive windows share one event, so every training event after a user's first
    is a target exactly once.
    """
    starts = inter.offsets[:-1]
    n_u = split.train_end - starts
    # end: the exclusive end row of each window's targets
    user, end = newest_first_windows(np.where(n_u >= 2, n_u - 1, 0), split.train_end, max_len)
    first = np.maximum(starts[user] + 1, end - max_len)  # first target row
    length = end - first
    col = np.arange(max_len)[None, :] - (max_len - length[:, None])  # (n_windows, max_len)
    valid = col >= 0
    rows = np.where(valid, first[:, None] + col, 1)
    targets = np.where(valid, inter.item[rows], -1)
    inputs = np.where(valid, inter.item[rows - 1], -1)
    return inputs, targets


class SASRec:
    name = "sasrec"
    allow_repeats = False  # the protocol's eval.allow_repeats, read in fit

    def __init__(self) -> None:
        self.net: SASRecNet | None = None
        self.fit_log = None

    def fit(self, inter: Interactions, split: Split, ctx: FitContext) -> None:
        p, hp = ctx.protocol, ctx.baseline
        rng = seed_everything(p.seed, hp.threads)
        self.allow_repeats = p.allow_repeats
        inputs, targets = training_windows(inter, split, hp.max_len)
        self.net = SASRecNet(inter.n_items, hp.sasrec_dim, hp.max_len, n_layers=hp.sasrec_layers,
                             dropout=hp.sasrec_dropout)
        opt = torch.optim.Adam(self.net.parameters(), lr=hp.lr)
        valid = split_valid_targets(split)
        cut = p.select_k

        def batch_loss(idx: np.ndarray) -> tuple[torch.Tensor, int]:
            x, y = torch.from_numpy(inputs[idx]), torch.from_numpy(targets[idx])
            h = self.net(x)[y >= 0]  # (n_positions, dim)
            y = y[y >= 0]
            table = self.net.item.weight[: inter.n_items]
            if 0 < hp.sasrec_negatives < inter.n_items:
                # Sampled softmax over the target and shared uniform negatives; a uniform proposal's logQ
                # correction is a constant, so it drops out. A negative that is the target is masked.
                neg = torch.from_numpy(rng.integers(0, inter.n_items, hp.sasrec_negatives))
                negatives = (h @ table[neg].T).masked_fill(neg[None, :] == y[:, None], float("-inf"))
                logits = torch.cat([(h * table[y]).sum(-1, keepdim=True), negatives], dim=1)
                return nn.functional.cross_entropy(logits, torch.zeros_like(y)), len(h)
            return nn.functional.cross_entropy(h @ table.T, y), len(h)  # (n_positions, n_items) logits

        def train_epoch(epoch: int) -> float:
            return train_epoch_over(opt, len(inputs), hp.batch_size, rng, f"sasrec epoch {epoch}",
                                    batch_loss)

        def validate() -> float:
            recs = self.recommend(inter, valid, cut)
            return select_score(recs, inter.item[valid], p.select_metric)

        self.fit_log = fit_early_stopping(self.net, train_epoch, validate, baseline_rule(p, p.baseline_budget_s),
                                          p.select_metric, name=self.name)
        first = np.arange(min(hp.batch_size, len(inputs)))
        self.fit_log.describe(count_params(self.net), step_flops(self.net, batch_loss, first),
                              int((targets >= 0).sum()), "next-item target (one window position)")

    @torch.no_grad()
    def recommend(self, inter: Interactions, targets: np.ndarray, k: int,
                  among: np.ndarray | None = None) -> np.ndarray:
        if self.net is None:
            raise RuntimeError("SASRec.recommend called before fit")
        self.net.eval()
        out = []
        for t in target_chunks(np.asarray(targets), inter.n_items, cap=1024):
            hist, _, _ = padded_histories(inter, t, self.net.max_len)
            scores = self.net.scores(torch.from_numpy(hist)).numpy().astype(np.float64)
            out.append(top_k(keep_only(mask_history(scores, inter, t, self.allow_repeats), among), k))
        return np.concatenate(out) if out else np.zeros((0, k), dtype=np.int64)

    def predict_proba(self, inter: Interactions, targets: np.ndarray, items: np.ndarray) -> None:
        return None
