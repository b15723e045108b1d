"""Most-popular items by training-event count: the floor every learned system has to clear."""

from __future__ import annotations

import numpy as np

from e2erec.data.types import Interactions, Split
from e2erec.eval.protocol import FitContext, keep_only, mask_history, target_chunks, top_k, training_targets


class Popularity:
    """Recommends the most frequent training items the user has not interacted with; no calibrated head."""

    name = "popularity"
    allow_repeats = False  # the protocol's eval.allow_repeats, read in fit

    def __init__(self) -> None:
        self.counts: np.ndarray | None = None

    def fit(self, inter: Interactions, split: Split, ctx: FitContext | None = None) -> None:
        rows = training_targets(inter, split, min_history=0)  # every training event
        self.allow_repeats = ctx is not None and ctx.protocol.allow_repeats
        self.counts = np.bincount(inter.item[rows], minlength=inter.n_items).astype(np.float64)

    def recommend(self, inter: Interactions, targets: np.ndarray, k: int,
                  among: np.ndarray | None = None) -> np.ndarray:
        if self.counts is None:
            raise RuntimeError("Popularity.recommend called before fit")
        out = [top_k(keep_only(mask_history(np.tile(self.counts, (len(t), 1)), inter, t, self.allow_repeats), among), k)  # a chunk at a time
               for t in target_chunks(np.asarray(targets), inter.n_items)]
        return np.concatenate(out) if out else np.zeros((0, k), dtype=np.int64)

    def predict_proba(self, inter: Interactions, targets: np.ndarray, items: np.ndarray) -> None:
        return None
