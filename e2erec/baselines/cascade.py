"""The retrieval -> ranking cascade that end-to-end generative recommenders replace, and its LLM-as-plugin variant.

Stage 1, retrieval: a two-tower model (Covington et al. 2016, "Deep Neural Networks for YouTube Recommendations").
The user tower reads the history window (mean item vector, last item, mean of positively rated items -> MLP); the
item tower is the item's ID embedding plus its features. Trained with a sampled softmax over in-batch targets plus
uniformly sampled items (mixed negative sampling, Yang et al. 2020), each logit corrected by -log Q(item), the
item's expected count among the negatives (Yi et al. 2019, "Sampling-bias-corrected neural modeling"):
``Q(j) = B * freq(j) + S / n_items`` for B in-batch and S uniform negatives. It returns the top-N candidates.

Stage 2, ranking: a target-attention model in the style of DIN (Zhou et al. 2018, "Deep Interest Network"):
each history item is weighted by an MLP of [h, t, h - t, h * t] against the candidate t (no softmax, as in DIN),
the weighted sum and the candidate feed an MLP with dense features (the item's and the history's smoothed
positive rates), trained with binary cross-entropy on the feedback label, so it outputs P(positive | consumed).

Final order: ``log P_retrieval(item | history) + log P_rank(positive | history, item)``, i.e. the probability that
the next item is this one *and* is liked; the retrieval probability is the full softmax of the two-tower logits.

Each stage is early-stopped on its own validation score: retrieval on `eval.select_metric` of its top-K over the
validation targets, ranking on validation LogLoss of the validation events.

The plugin cascade (`PluginCascade`) plugs a language model into both stages: the tokenizer's text embedding of
each item (frozen, projected) is added to the item vectors of both towers and of the ranker, and a second retrieval
channel ranks items by cosine similarity between the item and the mean text embedding of the history. The two
channels are merged as a mixture ``P = a P_two_tower + (1 - a) softmax(cos / tau)`` over the union of both
channels' candidates, with (a, tau) chosen on the validation targets.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from e2erec.baselines.common import (
    ItemEncoder,
    baseline_rule,
    category_matrix,
    count_params,
    fit_early_stopping,
    seed_everything,
    select_score,
    split_valid_targets,
    step_flops,
    train_epoch_over,
)
from e2erec.data.types import Interactions, Split
from e2erec.eval.metrics import log_loss
from e2erec.eval.protocol import (
    FitContext,
    item_feedback_counts,
    keep_only,
    mask_history,
    padded_histories,
    target_chunks,
    top_k,
    training_targets,
)
from e2erec.model.model import smoothed_rate_logit

RANKER_BATCH_FACTOR = 16  # the ranker scores single events, so it takes 16x the sequence batch per step


def _mlp(d_in: int, d_hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.ReLU(), nn.Linear(d_hidden, d_out))


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x (B, L, d), mask (B, L) bool -> (B, d); 0 for an empty mask."""
    m = mask.unsqueeze(-1).float()
    return (x * m).sum(1) / m.sum(1).clamp_min(1.0)


class TwoTower(nn.Module):
    def __init__(self, items: ItemEncoder, dim: int):
        super().__init__()
        self.items = items
        self.user = _mlp(3 * dim, 2 * dim, dim)

    def user_vectors(self, hist: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """hist, labels (B, L) right-aligned, -1 padding -> user vectors (B, dim)."""
        h = self.items(hist)  # (B, L, dim)
        valid = hist >= 0
        feats = [_masked_mean(h, valid), h[:, -1], _masked_mean(h, valid & (labels > 0))]
        return self.user(torch.cat(feats, dim=-1))


class DINRanker(nn.Module):
    def __init__(self, items: ItemEncoder, dim: int, att_hidden: int = 36):
        super().__init__()
        self.items = items
        self.feedback = nn.Embedding(2, dim)  # the history event's own label, added to its item vector
        self.att = _mlp(4 * dim, att_hidden, 1)
        self.head = nn.Sequential(_mlp(4 * dim + 2, 2 * dim, dim), nn.ReLU(), nn.Linear(dim, 1))

    def logits(self, hist: torch.Tensor, labels: torch.Tensor, item: torch.Tensor, item_rate: torch.Tensor,
               user_rate: torch.Tensor) -> torch.Tensor:
        """hist, labels (B, L); item (B, m) candidates; item_rate (B, m), user_rate (B,) logits -> (B, m)."""
        d = self.feedback.embedding_dim
        valid = hist >= 0  # (B, L)
        h = self.items(hist) + self.feedback(labels.long().clamp(0, 1)) * valid.unsqueeze(-1)  # (B, L, d)
        t = self.items(item)  # (B, m, d)
        # The attention MLP's first layer on [h, t, h - t, h * t] is W1 h + W2 t + W3 (h - t) + W4 (h * t)
        # = (W1 + W3) h + (W2 - W3) t + W4 (h * t): the same function with the history and candidate terms computed
        # once each instead of per (candidate, history event) pair, a quarter of the (B, m, L) work.
        first, act, last = self.att
        w1, w2, w3, w4 = first.weight.split(d, dim=1)  # each (hidden, d)
        pre = ((h @ (w1 + w3).T).unsqueeze(1) + (t @ (w2 - w3).T + first.bias).unsqueeze(2)
               + torch.einsum("bld,bmd,hd->bmlh", h, t, w4))  # (B, m, L, hidden)
        w = last(act(pre)).squeeze(-1) * valid.unsqueeze(1)  # (B, m, L)
        pooled = torch.einsum("bml,bld->bmd", w, h)  # (B, m, d)
        mean = _masked_mean(h, valid).unsqueeze(1).expand_as(t)  # (B, m, d)
        dense = torch.stack([item_rate, user_rate.unsqueeze(1).expand_as(item_rate)], dim=-1)  # (B, m, 2)
        return self.head(torch.cat([pooled, t, pooled * t, mean, dense], dim=-1)).squeeze(-1)


class Cascade:
    """Two-tower retrieval -> DIN-style ranking with a calibrated head (see the module docstring)."""

    name = "cascade"
    uses_text = False
    allow_repeats = False  # the protocol's eval.allow_repeats, read in fit

    def __init__(self, item_text: np.ndarray | None = None) -> None:
        self.item_text = item_text  # plugin only: [n_items, d] language-model item embeddings
        self.retrieval: TwoTower | None = None
        self.ranker: DINRanker | None = None
        self.fit_log: dict = {}

    # ------------------------------------------------------------------------------------------------------------
    # fit

    def _item_encoder(self, inter: Interactions, dim: int) -> ItemEncoder:
        text = torch.from_numpy(np.asarray(self.item_text, dtype=np.float32)) if self.uses_text else None
        return ItemEncoder(inter.n_items, dim, category_matrix(inter), text)

    def fit(self, inter: Interactions, split: Split, ctx: FitContext) -> None:
        p, hp = ctx.protocol, ctx.baseline
        if self.uses_text and self.item_text is None:
            if ctx.item_texts is None:
                raise TypeError("PluginCascade.fit needs the item texts' embeddings: FitContext.item_texts or item_text=")
            self.item_text = ctx.item_texts(inter)
        rng = seed_everything(p.seed, hp.threads)
        self.allow_repeats = p.allow_repeats
        self.max_len = hp.max_len
        train = training_targets(inter, split, min_history=1)
        valid = split_valid_targets(split)
        self._fit_stats(inter, split)
        # The system's time budget (if any): half to retrieval, the rest (whatever retrieval left) to the ranker.
        t0 = time.perf_counter()
        budget = p.baseline_budget_s
        self._fit_retrieval(inter, train, valid, ctx, rng, budget / 2)
        left = max(budget - (time.perf_counter() - t0), 1.0) if budget > 0 else 0.0
        self._fit_ranker(inter, train, valid, ctx, rng, left)
        self._fit_merge(inter, valid, ctx)

    def _fit_stats(self, inter: Interactions, split: Split) -> None:
        """Positive and total counts per item over all training events, and the global base rate, behind the
        ranker's smoothed positive-rate features (`e2erec.model.model.smoothed_rate_logit`, as the e2erec
        calibration head's)."""
        self.item_pos, self.item_count = item_feedback_counts(inter, split)
        total = self.item_count.sum()
        self.base_rate = float(self.item_pos.sum() / total) if total else 0.5

    def _fit_retrieval(self, inter, train, valid, ctx: FitContext, rng, budget_s: float) -> None:
        p, hp = ctx.protocol, ctx.baseline
        dim, n_items = hp.cascade_dim, inter.n_items
        self.retrieval = TwoTower(self._item_encoder(inter, dim), dim)
        opt = torch.optim.Adam(self.retrieval.parameters(), lr=hp.lr)
        freq = np.bincount(inter.item[train], minlength=n_items) / max(len(train), 1)
        batch = hp.batch_size * RANKER_BATCH_FACTOR // 4
        n_neg = hp.cascade_negatives
        cut = p.select_k

        def batch_loss(idx: np.ndarray) -> tuple[torch.Tensor, int]:
            t = train[idx]
            hist, labels, _ = padded_histories(inter, t, self.max_len)
            u = self.retrieval.user_vectors(torch.from_numpy(hist), torch.from_numpy(labels))  # (B, d)
            pos = inter.item[t]
            cand = np.concatenate([pos, rng.integers(0, n_items, n_neg)])  # (B + S,)
            logits = u @ self.retrieval.items(torch.from_numpy(cand)).T  # (B, B + S)
            log_q = np.log(len(t) * freq[cand] + n_neg / n_items)
            logits = logits - torch.from_numpy(log_q).float()
            hit = torch.from_numpy(cand[None, :] == pos[:, None])  # accidental hits, except the true column
            hit[torch.arange(len(t)), torch.arange(len(t))] = False
            return nn.functional.cross_entropy(logits.masked_fill(hit, -torch.inf), torch.arange(len(t))), len(t)

        def train_epoch(epoch: int) -> float:
            return train_epoch_over(opt, len(train), batch, rng, f"{self.name} retrieval epoch {epoch}", batch_loss)

        def validate() -> float:
            recs = [top_k(mask_history(self._retrieval_log_probs(inter, v), inter, v, p.allow_repeats), cut)
                    for v in target_chunks(valid, inter.n_items, cap=1024)]
            return select_score(np.concatenate(recs), inter.item[valid], p.select_metric)

        fit_log = fit_early_stopping(self.retrieval, train_epoch, validate, baseline_rule(p, budget_s),
                                     p.select_metric, name=f"{self.name} retrieval")
        fit_log.describe(count_params(self.retrieval), step_flops(self.retrieval, batch_loss, np.arange(min(
            batch, len(train)))), len(train), "training event (sampled softmax)")
        self.fit_log["retrieval"] = fit_log.to_dict()

    def _fit_ranker(self, inter, train, valid, ctx: FitContext, rng, budget_s: float) -> None:
        p, hp = ctx.protocol, ctx.baseline
        dim = hp.cascade_dim
        self.ranker = DINRanker(self._item_encoder(inter, dim), dim)
        opt = torch.optim.Adam(self.ranker.parameters(), lr=hp.lr)
        batch = hp.batch_size * RANKER_BATCH_FACTOR

        def batch_loss(idx: np.ndarray) -> tuple[torch.Tensor, int]:
            t = train[idx]
            logits = self._ranker_logits(inter, t, inter.item[t][:, None], counted=True)[:, 0]
            y = torch.from_numpy(inter.label[t].astype(np.float32))
            return nn.functional.binary_cross_entropy_with_logits(logits, y), len(t)

        def train_epoch(epoch: int) -> float:
            return train_epoch_over(opt, len(train), batch, rng, f"{self.name} ranker epoch {epoch}", batch_loss)

        def validate() -> float:
            return float(log_loss(self.predict_proba(inter, valid, inter.item[valid]), inter.label[valid]))

        fit_log = fit_early_stopping(self.ranker, train_epoch, validate, baseline_rule(p, budget_s), "logloss",
                                     higher_is_better=False, name=f"{self.name} ranker")
        fit_log.describe(count_params(self.ranker), step_flops(self.ranker, batch_loss, np.arange(min(
            batch, len(train)))), len(train), "labelled training event")
        self.fit_log["ranker"] = fit_log.to_dict()

    def _fit_merge(self, inter, valid, ctx: FitContext) -> None:
        """The plain cascade has one retrieval channel: only the candidate count to set."""
        hp = ctx.baseline
        self.n_candidates = hp.cascade_candidates

    # ------------------------------------------------------------------------------------------------------------
    # inference

    def rate_features(self, inter: Interactions, targets: np.ndarray, items: np.ndarray, labels: np.ndarray,
                      lengths: np.ndarray, counted: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """The ranker's dense features: logits of the smoothed positive rates of `items` [n, m] (n, m) and of each
        target's history window (`labels` [n, L] and `lengths` [n] from `padded_histories`) (n,). ``counted``:
        `items` [n, 1] are the targets' own training events, which the item counts include; each one's label is
        left out of its item's rate, or the ranker would learn to read its label there (rare items most) and be
        over-confident at test time, where the feature holds no such label."""
        pos, count = self.item_pos[items], self.item_count[items]
        if counted:
            pos, count = pos - inter.label[targets][:, None], count - 1
        item_rate = smoothed_rate_logit(torch.from_numpy(pos), torch.from_numpy(count), self.base_rate)
        user_rate = smoothed_rate_logit(torch.from_numpy(labels.sum(axis=1)), torch.from_numpy(lengths), self.base_rate)
        return item_rate, user_rate

    def _ranker_logits(self, inter: Interactions, targets: np.ndarray, items: np.ndarray,
                       counted: bool = False) -> torch.Tensor:
        """Ranker logits (n, m) of each target's history with each of its `items` [n, m] (``counted``: see
        `rate_features`)."""
        hist, labels, lengths = padded_histories(inter, targets, self.max_len)
        item_rate, user_rate = self.rate_features(inter, targets, items, labels, lengths, counted)
        return self.ranker.logits(torch.from_numpy(hist), torch.from_numpy(labels), torch.from_numpy(items),
                                  item_rate, user_rate)

    def _retrieval_log_probs(self, inter: Interactions, targets: np.ndarray) -> np.ndarray:
        """log softmax of the two-tower logits over the whole catalogue: float64 [n, n_items]."""
        hist, labels, _ = padded_histories(inter, targets, self.max_len)
        u = self.retrieval.user_vectors(torch.from_numpy(hist), torch.from_numpy(labels))
        logits = u @ self.retrieval.items.all_items().T  # (n, n_items)
        return torch.log_softmax(logits.double(), dim=-1).numpy()

    def _candidates(self, inter: Interactions, targets: np.ndarray,
                    among: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(candidate ids [n, N] with -1 padding, their retrieval log-probabilities [n, N]); `among`: retrieve only
        those items."""
        lp = keep_only(mask_history(self._retrieval_log_probs(inter, targets), inter, targets, self.allow_repeats), among)
        cand = top_k(lp, self.n_candidates)
        return cand, np.where(cand >= 0, np.take_along_axis(lp, np.maximum(cand, 0), axis=1), -np.inf)

    @torch.no_grad()
    def recommend(self, inter: Interactions, targets: np.ndarray, k: int,
                  among: np.ndarray | None = None) -> np.ndarray:
        if self.ranker is None:
            raise RuntimeError(f"{type(self).__name__}.recommend called before fit")
        self.retrieval.eval()
        self.ranker.eval()
        out = []
        chunks = list(target_chunks(np.asarray(targets), inter.n_items, cap=256))
        for t in tqdm(chunks, desc=f"{self.name} recommend", leave=False, disable=None):
            cand, retrieval_lp = self._candidates(inter, t, among)
            p = self._proba(inter, t, np.maximum(cand, 0))
            score = np.where(cand >= 0, retrieval_lp + np.log(np.maximum(p, 1e-12)), -np.inf)
            out.append(top_k(score, k, ids=cand))
        return np.concatenate(out) if out else np.zeros((0, k), dtype=np.int64)

    def _proba(self, inter, targets, items, chunk_pairs: int = 2048) -> np.ndarray:
        # 2048 (target, item) pairs x 50 history x 4*64 attention inputs = 105 MB of activations per chunk
        step = max(1, chunk_pairs // items.shape[1])
        parts = [torch.sigmoid(self._ranker_logits(inter, targets[s : s + step], items[s : s + step])).numpy()
                 for s in range(0, len(targets), step)]
        return np.concatenate(parts).astype(np.float64) if parts else np.zeros(items.shape)

    @torch.no_grad()
    def predict_proba(self, inter: Interactions, targets: np.ndarray, items: np.ndarray) -> np.ndarray:
        """P(positive feedback) from the ranker; `items` is [n] (one per target) or [n, m]."""
        if self.ranker is None:
            raise RuntimeError(f"{type(self).__name__}.predict_proba called before fit")
        self.ranker.eval()
        items = np.asarray(items, dtype=np.int64)
        p = self._proba(inter, np.asarray(targets, dtype=np.int64), items.reshape(len(targets), -1))
        return p.reshape(items.shape)


class PluginCascade(Cascade):
    """The cascade with language-model item embeddings in both stages and a semantic-similarity retrieval channel."""

    name = "plugin_cascade"
    uses_text = True
    ALPHAS = (1.0, 0.9, 0.7, 0.5, 0.3)  # two-tower weight in the channel mixture; 1.0 = semantic adds candidates only
    TAUS = (0.05, 0.1, 0.2)  # softmax temperatures of the cosine channel

    def _channels(self, inter: Interactions, targets: np.ndarray,
                  among: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(union of both channels' candidates [n, N + M] with -1 for duplicates, two-tower log-probs, cosines);
        `among`: both channels retrieve only those items."""
        lp_tt = keep_only(mask_history(self._retrieval_log_probs(inter, targets), inter, targets, self.allow_repeats), among)
        hist, _, _ = padded_histories(inter, targets, self.max_len)
        text = self._text_unit
        user = np.where((hist >= 0)[..., None], text[np.maximum(hist, 0)], 0.0).sum(1)  # (n, d)
        user /= np.maximum(np.linalg.norm(user, axis=1, keepdims=True), 1e-12)
        cos = keep_only(mask_history(user @ text.T, inter, targets, self.allow_repeats), among)  # (n, n_items)
        cand = np.concatenate([top_k(lp_tt, self.n_candidates), top_k(cos, self.n_semantic)], axis=1)
        cand = np.sort(cand, axis=1)
        cand[:, 1:][cand[:, 1:] == cand[:, :-1]] = -1  # a candidate found by both channels counts once
        return cand, lp_tt, cos

    @staticmethod
    def _mixture(cand: np.ndarray, lp_tt: np.ndarray, cos: np.ndarray, alpha: float, tau: float) -> np.ndarray:
        """log(alpha P_two_tower + (1 - alpha) softmax(cos / tau)) at the candidates, -inf at padding."""
        idx = np.maximum(cand, 0)
        mix = np.log(alpha) + np.take_along_axis(lp_tt, idx, axis=1)
        if alpha < 1.0:
            lp_sem = torch.log_softmax(torch.from_numpy(cos / tau), dim=-1).numpy()
            mix = np.logaddexp(mix, np.log1p(-alpha) + np.take_along_axis(lp_sem, idx, axis=1))
        return np.where(cand >= 0, mix, -np.inf)

    def _candidates(self, inter: Interactions, targets: np.ndarray,
                    among: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        cand, lp_tt, cos = self._channels(inter, targets, among)
        return cand, self._mixture(cand, lp_tt, cos, self.alpha, self.tau)

    @torch.no_grad()
    def _fit_merge(self, inter, valid, ctx: FitContext) -> None:
        """Choose the channel weight and temperature on the validation targets (both stages are fixed by now).

        The candidate union does not depend on (alpha, tau): ranking by cosine is the same at every temperature.
        """
        p, hp = ctx.protocol, ctx.baseline
        t = np.asarray(self.item_text, dtype=np.float64)
        self._text_unit = t / np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-12)
        self.n_candidates, self.n_semantic = hp.cascade_candidates, hp.semantic_candidates
        cut = p.select_k
        grid = [(a, tau) for tau in self.TAUS for a in self.ALPHAS if a < 1.0 or tau == self.TAUS[0]]
        recs: dict[tuple[float, float], list[np.ndarray]] = {g: [] for g in grid}
        for v in target_chunks(np.asarray(valid), inter.n_items, cap=256):
            cand, lp_tt, cos = self._channels(inter, v)
            log_p = np.log(np.maximum(self._proba(inter, v, np.maximum(cand, 0)), 1e-12))
            for alpha, tau in grid:
                recs[(alpha, tau)].append(top_k(self._mixture(cand, lp_tt, cos, alpha, tau) + log_p, cut, ids=cand))
        scores = {g: select_score(np.concatenate(r), inter.item[valid], p.select_metric) for g, r in recs.items()}
        self.alpha, self.tau = max(scores, key=scores.get)
        self.fit_log["merge"] = {"metric": p.select_metric, "alpha": self.alpha, "tau": self.tau,
                                 "valid": {f"alpha={a},tau={tau}": v for (a, tau), v in scores.items()}}
