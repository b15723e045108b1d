"""The end-to-end model behind the evaluation protocol (`e2erec.eval.protocol.Recommender`).

One model does retrieval and ranking: trie-constrained, steerable beam search over semantic IDs retrieves the top-K
items of each history, and the calibration head scores them — `P(positive feedback | history, item)` — both to
order the list (`rank_by="calibration"`) and to answer `predict_proba` for the calibration metrics.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from e2erec.data.jagged import gather_histories
from e2erec.data.types import Interactions, Split
from e2erec.eval.protocol import target_users
from e2erec.generate.beam import ItemInfo, constrained_beam_search


class GenerativeSystem:
    """A trained `GenerativeRecommender` + its semantic IDs, evaluated like any baseline.

    `rank_by="beam"` orders the retrieved items by their generation log-probability (which item comes next);
    `rank_by="calibration"` re-orders the same top-K by the calibration head (which item the user will like) — the
    "one model replaces the cascade" arrangement. The report shows both, so the cost of either order is visible.
    """

    def __init__(self, model, semantic_ids, cfg, *, rank_by: Literal["beam", "calibration"] = "beam",
                 name: str | None = None, batch_size: int = 128):
        self.model = model.eval()
        self.sids = semantic_ids
        self.codes = semantic_ids.codes
        self.trie = semantic_ids.trie.to(next(model.parameters()).device)
        self.cfg = cfg
        self.rank_by = rank_by
        self.name = name or ("e2erec" if rank_by == "beam" else "e2erec_calibrated")
        self.batch_size = batch_size
        self.fit_log: dict | None = None

    @classmethod
    def from_export(cls, export_dir: str | Path, inter: Interactions | None = None, eval_cfg=None,
                    **kwargs) -> tuple[GenerativeSystem, Interactions]:
        """Load an `e2erec train` export (no DeepSpeed) and the semantic-ID artifact it was trained with; the
        dataset is the export's own (`cfg.data`) unless `inter` is given. `eval_cfg` (an `EvalConfig`) replaces the
        export's `eval` section, so the evaluating command's beam size and steering apply, not the training run's.
        Returns (system, dataset)."""
        from e2erec.data import load_dataset
        from e2erec.tokenizer import SemanticIDs
        from e2erec.train.export import export_meta, load_exported

        model, cfg = load_exported(export_dir)
        if eval_cfg is not None:
            cfg = dataclasses.replace(cfg, eval=eval_cfg)
        inter = inter if inter is not None else load_dataset(cfg.data)
        meta = export_meta(export_dir)
        system = cls(model, SemanticIDs.load(meta["semantic_ids"]["path"], inter), cfg, **kwargs)
        # Which weights these are, for the report's training section (the baselines report their best epoch).
        system.fit_log = {"selected_step": meta["step"], "trained_steps": meta.get("trained_steps", meta["step"]),
                          "select": cfg.train.select, "metric": cfg.train.select_metric}
        return system, inter

    @classmethod
    def both_orders(cls, export_dir: str | Path, inter: Interactions | None = None,
                    eval_cfg=None) -> tuple[list[GenerativeSystem], Interactions]:
        """The export in beam order and in calibration order (what reports show side by side), sharing one loaded
        model and semantic-ID artifact. Returns ([beam, calibrated], dataset)."""
        beam, inter = cls.from_export(export_dir, inter, eval_cfg, rank_by="beam")
        calibrated = cls(beam.model, beam.sids, beam.cfg, rank_by="calibration")
        calibrated.fit_log = beam.fit_log
        return [beam, calibrated], inter

    def fit(self, inter: Interactions, split: Split, cfg) -> None:
        """Nothing to do: the model is trained by `e2erec train` (DeepSpeed), not inside the evaluation."""

    def _histories(self, inter: Interactions, targets: np.ndarray):
        return gather_histories(inter, target_users(inter, targets), targets, self.cfg.data.max_seq_len)

    @torch.no_grad()
    def generate(self, inter: Interactions, targets: np.ndarray, k: int, steering=None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k items [n, k] (-1 pads) and their scores for each target event's history (see `generate_for`)."""
        targets = np.asarray(targets, dtype=np.int64)
        return self.generate_for(inter, target_users(inter, targets), targets, k, steering)

    @torch.no_grad()
    def generate_for(self, inter: Interactions, users: np.ndarray, ends: np.ndarray, k: int,
                     steering=None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k items [n, k] (-1 pads) and scores for the histories rows `offsets[u]:ends[u]`, steering applied
        inside the search. Scores are generation log-probabilities (+ steering bonuses), or calibrated
        probabilities when `rank_by="calibration"`. `ends = offsets[u + 1]` generates after a user's whole history.
        """
        steering = steering if steering is not None else self.cfg.eval.steering
        info = ItemInfo.from_table(inter.items, self.cfg.eval.long_tail_share)
        beam = max(self.cfg.eval.beam_size, k)
        users, ends = np.asarray(users, dtype=np.int64), np.asarray(ends, dtype=np.int64)
        out_items = np.full((len(users), k), -1, dtype=np.int64)
        out_scores = np.full((len(users), k), -np.inf, dtype=np.float32)
        for start in range(0, len(users), self.batch_size):
            u, e = users[start : start + self.batch_size], ends[start : start + self.batch_size]
            histories = gather_histories(inter, u, e, self.cfg.data.max_seq_len)
            step, _ = self.model.make_step_fn(histories, self.codes)
            begin = inter.offsets[u]
            seen_offsets = torch.from_numpy(np.concatenate([[0], np.cumsum(e - begin)]).astype(np.int64))
            seen_items = torch.from_numpy(np.concatenate([inter.item[b:x] for b, x in zip(begin, e)]).astype(np.int64))
            items, scores = constrained_beam_search(
                # The model recomputes each step from the code prefix, so the beam reordering needs no cache update.
                lambda level, prefix, beam_state, step=step: step(level, prefix),
                self.trie, len(u), beam, k, steering=steering, item_info=info, seen=(seen_offsets, seen_items),
            )
            if self.rank_by == "calibration":
                probs = self.model.score_candidates(histories, items.clamp_min(0), self.codes)
                scores = torch.where(items >= 0, probs.to(scores.device), torch.full_like(scores, -np.inf))
                order = scores.argsort(dim=1, descending=True, stable=True)
                items, scores = items.gather(1, order), scores.gather(1, order)
            out_items[start : start + len(u)] = items.cpu().numpy()
            out_scores[start : start + len(u)] = scores.float().cpu().numpy()
        return out_items, out_scores

    def recommend(self, inter: Interactions, targets: np.ndarray, k: int) -> np.ndarray:
        return self.generate(inter, targets, k)[0]

    @torch.no_grad()
    def predict_proba(self, inter: Interactions, targets: np.ndarray, items: np.ndarray) -> np.ndarray:
        targets = np.asarray(targets, dtype=np.int64)
        items = np.asarray(items, dtype=np.int64)
        out = np.empty(items.shape, dtype=np.float64)
        for start in range(0, len(targets), self.batch_size):
            sl = slice(start, start + self.batch_size)
            cand = torch.from_numpy(items[sl].reshape(len(targets[sl]), -1))
            probs = self.model.score_candidates(self._histories(inter, targets[sl]), cand, self.codes)
            out[sl] = probs.cpu().double().numpy().reshape(items[sl].shape)
        return out
