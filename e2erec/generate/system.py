"""The end-to-end model behind the evaluation protocol (`e2erec.eval.protocol.Recommender`).

One model does retrieval and ranking: trie-constrained, steerable beam search over semantic IDs retrieves the top-K
items of each history, and the calibration head scores them — `P(positive feedback | history, item)` — both to
order the list and to answer `predict_proba` for the calibration metrics. Three orders (`rank_by`):

- ``beam``: the generation log-probability, log P_gen(item | history) (+ steering bonuses): which item comes next;
- ``joint``: log P_gen(item | history) + w · log P_calib(positive | history, item), the cascade's own rule (the
  item comes next *and* is liked); w is chosen on the validation targets in `fit` (w = 1 is the cascade's product);
- ``calibration``: P_calib alone (which retrieved item the user will like); `e2erec generate` shows it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from e2erec.data.jagged import gather_histories
from e2erec.data.types import Interactions, Split
from e2erec.data.window import window_starts
from e2erec.eval.protocol import FitContext, history_events, target_users
from e2erec.generate.beam import ItemInfo, constrained_beam_search
from e2erec.generate.explore import interleave, take_slots
from e2erec.utils.shards import sharded_rows

RankBy = Literal["beam", "joint", "calibration"]
# The report's row names, each naming its ordering rule.
ROW_NAMES = {"beam": "e2erec (generation order)", "joint": "e2erec (generation × calibration)",
             "calibration": "e2erec (calibration order)"}
# Weights w of log P_calib in the joint order, chosen on validation; 0 is the generation order itself.
JOINT_WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)
# Log-prob bonuses of history items, chosen on validation under eval.allow_repeats: -inf is the hard exclude-seen
# rule, 0 the model's own repeat probability.
REPEAT_BONUSES = (-np.inf, -4.0, -2.0, -1.0, 0.0, 1.0, 2.0)


class GenerativeSystem:
    """A trained `GenerativeRecommender` + its semantic IDs, evaluated like any baseline (orders: module docstring).
    The report shows the generation and the joint order side by side, so the cost of either is visible."""

    def __init__(self, model, semantic_ids, cfg, *, rank_by: RankBy = "beam", name: str | None = None,
                 batch_size: int = 128):
        self.model = model.eval()
        self.sids = semantic_ids
        self.codes = semantic_ids.codes
        device = next(model.parameters()).device
        try:
            self.trie = semantic_ids.trie.to(device)
        except torch.OutOfMemoryError:
            from e2erec.errors import E2ERecError

            size = semantic_ids.trie.nbytes() / 2**30
            raise E2ERecError(f"the semantic-ID trie ({semantic_ids.trie.leaf_item.numel():,} items, {size:.2f} GiB) "
                              f"does not fit on {device}; run generation with --device cpu") from None
        if cfg.eval.allow_repeats and cfg.generate.steering.exclude_seen:  # the protocol lets every system repeat
            steering = dataclasses.replace(cfg.generate.steering, exclude_seen=False)
            cfg = dataclasses.replace(cfg, generate=dataclasses.replace(cfg.generate, steering=steering))
        self.cfg = cfg
        self.rank_by = rank_by
        if rank_by not in ROW_NAMES:
            raise ValueError(f"rank_by must be one of {sorted(ROW_NAMES)}, got {rank_by!r}")
        self.name = name or ROW_NAMES[rank_by]
        self.batch_size = batch_size
        self.calib_weight = 1.0  # w of the joint order until `fit` chooses it on validation
        self.repeat_bonus = 0.0  # history items' bonus without exclude_seen until `fit` chooses it
        self._item_info: tuple | None = None  # (item table, its ItemInfo): built once per catalogue
        self.fit_log: dict | None = None

    @classmethod
    def from_export(cls, export_dir: str | Path, inter: Interactions | None = None, settings=None,
                    device: str = "auto", **kwargs) -> tuple[GenerativeSystem, Interactions]:
        """Load an `e2erec train` export (no DeepSpeed) and the semantic-ID artifact it was trained with; the
        dataset is the export's own (`cfg.data`) unless `inter` is given. `settings` (the evaluating command's run
        config) replaces the export's `eval` and `generate` sections, so its protocol, beam size and steering apply,
        not the training run's.
        `device`: where the model, the trie and the search run ("auto": the GPU when there is one). Returns
        (system, dataset)."""
        from e2erec.data import load_dataset
        from e2erec.model.export import export_meta, load_exported, semantic_ids_dir
        from e2erec.tokenizer import SemanticIDs

        model, cfg = load_exported(export_dir, resolve_device(device))
        if settings is not None:
            cfg = dataclasses.replace(cfg, eval=settings.eval, generate=settings.generate)
        inter = inter if inter is not None else load_dataset(cfg.data)
        meta = export_meta(export_dir)
        system = cls(model, SemanticIDs.load(semantic_ids_dir(export_dir), inter), cfg, **kwargs)
        # Which weights these are and how training stopped, for the report's training section.
        system.fit_log = {**meta.get("fit_log", {}), "export": str(Path(export_dir).resolve()),
                          "selected_step": meta["step"],
                          "trained_steps": meta.get("trained_steps", meta["step"]), "select": cfg.train.select,
                          "metric": cfg.train.select_metric}
        return system, inter

    @classmethod
    def both_orders(cls, export_dir: str | Path, inter: Interactions | None = None, settings=None,
                    device: str = "auto") -> tuple[list[GenerativeSystem], Interactions]:
        """The export in generation order and in the joint order (what reports show side by side), sharing one
        loaded model and semantic-ID artifact. Returns ([generation, joint], dataset); call `fit` on the joint one
        to choose its weight on validation."""
        beam, inter = cls.from_export(export_dir, inter, settings, device, rank_by="beam")
        joint = cls(beam.model, beam.sids, beam.cfg, rank_by="joint")
        joint.fit_log = dict(beam.fit_log)
        return [beam, joint], inter

    def fit(self, inter: Interactions, split: Split, ctx: FitContext | None = None) -> None:
        """The model is trained by `e2erec train` (DeepSpeed), not here. Chosen here, on the validation targets:
        under `eval.allow_repeats`, the repeat bonus (`choose_repeat_bonus`); for the joint order, its weight w: one
        beam search and one calibration pass, then every w of `JOINT_WEIGHTS` re-orders the same lists and the best
        `eval.select_metric` wins (ties: the smaller w). The protocol is `ctx.protocol`, else the export's own
        `eval` section."""
        from e2erec.baselines.common import select_score, split_valid_targets

        protocol = ctx.protocol if ctx is not None else self.cfg.eval
        if protocol.allow_repeats and self.cfg.generate.steering.repeat_bonus is None:
            self.choose_repeat_bonus(inter, split, protocol)
        if self.rank_by != "joint":
            return
        valid = split_valid_targets(split)
        metric = protocol.select_metric
        k = protocol.select_k
        items, log_gen, probs = self._search(inter, target_users(inter, valid), valid, max(k, protocol.top_k))
        scores = {}
        for w in JOINT_WEIGHTS:
            ranked = self._order(items, log_gen, probs, w)[0][:, :k].numpy()
            scores[w] = select_score(ranked, np.asarray(inter.item)[valid], metric)
        self.calib_weight = max(JOINT_WEIGHTS, key=lambda w: (scores[w], -w))
        self.fit_log = {**(self.fit_log or {}), "joint_weight": self.calib_weight, "joint_metric": metric,
                        "joint_valid": {str(w): v for w, v in scores.items()}}

    def choose_repeat_bonus(self, inter: Interactions, split: Split, protocol=None) -> float:
        """The log-prob bonus of history items that serves the validation targets best, among `REPEAT_BONUSES`
        (-inf: the hard exclude-seen rule; 0: the model's own repeats), by `eval.select_metric` in this system's
        order (ties: the smaller bonus, the one nearer the rule). One beam search per bonus."""
        from e2erec.baselines.common import select_score, split_valid_targets

        protocol = protocol or self.cfg.eval
        valid = split_valid_targets(split)
        users, truth = target_users(inter, valid), np.asarray(inter.item)[valid]
        base = self.cfg.generate.steering
        scores = {}
        for bonus in REPEAT_BONUSES:
            steering = dataclasses.replace(base, exclude_seen=bonus == -np.inf,
                                           repeat_bonus=None if bonus == -np.inf else bonus)
            ranked, _ = self.generate_for(inter, users, valid, protocol.select_k, steering)
            scores[bonus] = select_score(ranked, truth, protocol.select_metric)
        self.repeat_bonus = max(REPEAT_BONUSES, key=lambda b: (scores[b], -b))
        self.fit_log = {**(self.fit_log or {}), "repeat_bonus": self.repeat_bonus,
                        "repeat_valid": {str(b): v for b, v in scores.items()}}
        return self.repeat_bonus

    @torch.no_grad()
    def generate(self, inter: Interactions, targets: np.ndarray, k: int, steering=None,
                 among: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k items [n, k] (-1 pads) and their scores for each target event's history (see `generate_for`)."""
        targets = np.asarray(targets, dtype=np.int64)
        return self.generate_for(inter, target_users(inter, targets), targets, k, steering, among)

    @torch.no_grad()
    def generate_for(self, inter: Interactions, users: np.ndarray, ends: np.ndarray, k: int,
                     steering=None, among: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k items [n, k] (-1 pads) and scores for the histories rows `offsets[u]:ends[u]`, steering applied
        inside the search (`among`, bool [n_items]: only those items). Scores: generation log-probabilities
        (+ steering bonuses) for `rank_by="beam"`, those + w · log P_calib for "joint", calibrated probabilities for
        "calibration". `ends = offsets[u + 1]` generates after a user's whole history. With exploration, an order
        other than the generation's re-orders the main and the long-tail list each on its own, then interleaves them
        (`e2erec.generate.explore`), so the reserved slots stay where the steering put them."""
        steering = steering if steering is not None else self.cfg.generate.steering
        if self.rank_by != "beam" and 0 < steering.explore_share < 1:
            (main_items, main_scores), (tail_items, tail_scores) = [
                map(torch.from_numpy, self.generate_for(inter, users, ends, k,
                                                        dataclasses.replace(steering, explore_share=share), among))
                for share in (0.0, 1.0)]
            col, _ = interleave(main_items, tail_items, k, steering.explore_share)
            return (take_slots(col, main_items, tail_items, -1).numpy(),
                    take_slots(col, main_scores, tail_scores, -np.inf).numpy())
        items, log_gen, probs = self._search(inter, users, ends, k, steering, among)
        items, scores = self._order(items, log_gen, probs, self.objective_weight)
        return items.numpy(), scores.float().numpy()

    @property
    def objective_weight(self) -> float:
        """w of the joint order: `generate.objective_weight` where the request sets it, else the validation choice."""
        w = self.cfg.generate.objective_weight
        return self.calib_weight if w is None else float(w)

    def candidates(self, inter: Interactions, users: np.ndarray, ends: np.ndarray, k: int, steering=None):
        """The retrieved lists before ordering, for re-ordering them under other objective weights (`joint_order`):
        (items [n, k], log P_gen, P_calib), torch tensors on the CPU. Needs a calibrated order (not `beam`)."""
        if self.rank_by == "beam":
            raise ValueError("candidates() returns calibrated probabilities: use a joint or calibration system")
        return self._search(inter, users, ends, k, steering)

    @staticmethod
    def joint_order(items: torch.Tensor, log_gen: torch.Tensor, probs: torch.Tensor,
                    weight: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(items, scores) by log P_gen + weight · log P_calib, best first; -1 pads stay last."""
        return _by_score(items, log_gen.double() + weight * torch.log(probs.double().clamp_min(1e-12)))

    def _order(self, items: torch.Tensor, log_gen: torch.Tensor, probs: torch.Tensor | None,
               weight: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(items, scores) re-ordered by this system's rule; -1 pads stay last."""
        if self.rank_by == "beam":
            return items, log_gen
        if self.rank_by == "joint":
            return self.joint_order(items, log_gen, probs, weight)
        return _by_score(items, probs.double())

    @torch.no_grad()
    def _search(self, inter: Interactions, users: np.ndarray, ends: np.ndarray, k: int, steering=None,
                among: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Beam search for each history: (items [n, k] in generation order, their generation scores, and — unless
        `rank_by="beam"` — their calibrated probabilities), returned on the CPU; the search runs on the model's
        device."""
        steering = steering if steering is not None else self.cfg.generate.steering
        if not steering.exclude_seen and steering.repeat_bonus is None:
            steering = dataclasses.replace(steering, repeat_bonus=self.repeat_bonus)
        info = self.item_info(inter)
        beam = max(self.cfg.generate.beam_size, k)
        users, ends = np.asarray(users, dtype=np.int64), np.asarray(ends, dtype=np.int64)
        among = None if among is None else torch.as_tensor(np.asarray(among, bool), device=self.trie.device)
        # A history window changes what the model reads; exclude-seen still covers the whole history.
        starts = (window_starts(inter, users, ends, steering.history_days, steering.history_events)
                  if steering.windowed else None)

        def block(lo: int, hi: int):  # this rank's rows (all of them without a process group)
            n = hi - lo
            out_items = torch.full((n, k), -1, dtype=torch.int64)
            out_scores = torch.full((n, k), -np.inf, dtype=torch.float32)
            out_probs = None if self.rank_by == "beam" else torch.zeros((n, k), dtype=torch.float32)
            for start in range(lo, hi, self.batch_size):
                u, e = users[start:min(start + self.batch_size, hi)], ends[start:min(start + self.batch_size, hi)]
                histories = gather_histories(inter, u, e, self.cfg.data.max_seq_len,
                                             None if starts is None else starts[start:start + len(u)])
                step, _ = self.model.make_step_fn(histories, self.codes)
                seen_offsets, seen_items = _history_items(inter, u, e)
                items, scores = constrained_beam_search(
                    # The model recomputes each step from the code prefix, so the beam reordering needs no cache
                    # update.
                    lambda level, prefix, beam_state, step=step: step(level, prefix, pairs=beam_state.pairs),
                    self.trie, len(u), beam, k, steering=steering, item_info=info, seen=(seen_offsets, seen_items),
                    among=among)
                rows = slice(start - lo, start - lo + len(u))
                out_items[rows], out_scores[rows] = items.cpu(), scores.float().cpu()
                if out_probs is not None:
                    out_probs[rows] = self.model.score_candidates(histories, items.clamp_min(0).cpu(),
                                                                  self.codes).float().cpu()
            return out_items, out_scores, out_probs

        return sharded_rows(block, len(users))

    def item_info(self, inter: Interactions) -> ItemInfo:
        """The catalogue's side information steering reads (categories, years, long tail), built once per table."""
        if self._item_info is None or self._item_info[0] is not inter.items:
            self._item_info = (inter.items, ItemInfo.from_table(inter.items, self.cfg.eval.long_tail_share))
        return self._item_info[1]

    def recommend(self, inter: Interactions, targets: np.ndarray, k: int,
                  among: np.ndarray | None = None) -> np.ndarray:
        return self.generate(inter, targets, k, among=among)[0]

    @torch.no_grad()
    def p_positive(self, inter: Interactions, users: np.ndarray, ends: np.ndarray, items: np.ndarray) -> np.ndarray:
        """The calibration head's P(positive) float64 [n, k] of items int64 [n, k] (-1: 0) after the histories
        `offsets[u]:ends`: a target's history (`predict_proba`), or a request after a user's whole history."""
        users, ends, items = np.asarray(users, np.int64), np.asarray(ends, np.int64), np.asarray(items, np.int64)
        out = np.zeros(items.shape, np.float64)
        for lo in range(0, len(users), self.batch_size):
            sl = slice(lo, lo + self.batch_size)
            histories = gather_histories(inter, users[sl], ends[sl], self.cfg.data.max_seq_len)
            probs = self.model.score_candidates(histories, torch.from_numpy(items[sl].clip(0)), self.codes)
            out[sl] = np.where(items[sl] >= 0, probs.cpu().double().numpy(), 0.0)
        return out

    @torch.no_grad()
    def predict_proba(self, inter: Interactions, targets: np.ndarray, items: np.ndarray) -> np.ndarray:
        targets = np.asarray(targets, dtype=np.int64)
        items = np.asarray(items, dtype=np.int64)

        def block(lo: int, hi: int) -> np.ndarray:
            t = targets[lo:hi]
            return self.p_positive(inter, target_users(inter, t), t, items[lo:hi].reshape(len(t), -1)).reshape(
                items[lo:hi].shape)

        return sharded_rows(block, len(targets))

def _by_score(items: torch.Tensor, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(items, scores) sorted by score, best first (stable); -1 pads get -inf and stay last."""
    scores = torch.where(items >= 0, scores, torch.full_like(scores, -np.inf))
    order = scores.argsort(dim=1, descending=True, stable=True)
    return items.gather(1, order), scores.gather(1, order)


def _history_items(inter: Interactions, users: np.ndarray, ends: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Jagged (offsets [n + 1], items) of the events offsets[u]:end of each (user, end): what exclude-seen reads."""
    rows, items = history_events(inter, users, ends)
    offsets = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=len(users)))]).astype(np.int64)
    return torch.from_numpy(offsets), torch.from_numpy(items.astype(np.int64))


def resolve_device(device: str) -> torch.device:
    """"auto" = the GPU when there is one, else the CPU; "cuda" without a GPU is a clear error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        from e2erec.errors import E2ERecError

        raise E2ERecError(f"--device {device}: no CUDA device is visible on this machine")
    return torch.device(device)
