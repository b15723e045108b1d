"""The recommender side of training: which sequences train, how a batch is built, and the validation metrics.

Training sequences (`training_units`), for users with at least 2 training events (`offsets[u] : split.train_end[u]`):
generative windows of up to `data.max_seq_len` events that cover every training event, each token predicting the
next item; and one calibration sequence per user whose last k events are labelled targets (`build_model_batch`).

Validation (every `train.eval_every` steps on up to `train.eval_max_targets` targets, at the end on up to
`train.final_eval_max_targets`, default all): for each validation event v of user u, the history is
`offsets[u] : v` and v is the target, exactly as at test time.

- eval_loss = w_gen * (item NLL of v, the sum over code levels of the teacher-forced cross-entropy, normalised
  over the trie's valid codes when `train.trie_softmax`)
            + w_calib * (binary cross-entropy of the calibration head on v's real label); the training loss's
  definition, on held-out targets only.
- metrics.sid_exact_match: the teacher-forced argmax code equals v's code at every level.
- metrics.sid_recall@10: v is among the 10 items of a trie-constrained beam search of width 10 (the search of
  `e2erec.generate`, without steering, so seen items may appear); a quick check that tracks training — the
  evaluation report (wider beam, exclude-seen) is the protocol.
- metrics.calib_logloss and metrics.calib_base_rate (mean label), to read the calibration loss against; the raw
  head's, before the Platt scaling that `fit_calibration` fits on these targets when training ends.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from e2erec.config import RunConfig
from e2erec.data.jagged import newest_first_windows
from e2erec.data.types import Interactions, Split
from e2erec.eval.metrics import log_loss
from e2erec.eval.protocol import item_feedback_counts
from e2erec.generate.beam import constrained_beam_search
from e2erec.model import GenerativeRecommender, build_model_batch
from e2erec.model.batch import trie_code_mask
from e2erec.model.model import HistoryState
from e2erec.tokenizer.trie import PrefixTrie
from e2erec.train import distributed as D
from e2erec.train.calibrate import fit_platt

RECALL_K = 10
EVAL_BATCH = 256  # validation sequences per forward pass; bounded by the longest history (max_seq_len tokens)


def training_units(offsets: np.ndarray, train_end: np.ndarray, max_len: int,
                   calibration: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The sequences one training epoch is made of: (user, end, is_calibration, tokens), one row per unit.

    Generative units cut each user's training events `offsets[u] : train_end[u]` into windows of at most `max_len`
    events, newest first (the history `end - max_len : end`, as `gather_histories` truncates it), so every training
    event is a next-item target exactly once per epoch, however long the user's history. Calibration units, one per
    user with at least 2 training events, end at `train_end[u]`; the batch holds out their last k events as
    labelled targets and predicts no items from them. Were the two one sequence, the k held-out events (the user's
    most recent, closest to what is tested) would be cut from the generative loss: with k ~ U{1..32} the last event
    was a generative target in 1 epoch in 32, and events beyond `max_len` never were (14% of ml-100k's).
    Tokens = BOS + events, what the token-budget sampler packs by.
    """
    first = offsets[:-1]
    n = np.maximum(np.asarray(train_end) - first, 0)
    has = n >= 2
    user, end = newest_first_windows(np.where(has, n, 0), train_end, max_len)
    length = np.minimum(end - first[user], max_len)
    calib_user = np.flatnonzero(has).astype(np.int64) if calibration else np.zeros(0, np.int64)
    users = np.concatenate([user, calib_user])
    ends = np.concatenate([end, np.asarray(train_end, dtype=np.int64)[calib_user]])
    is_calib = np.concatenate([np.zeros(len(user), bool), np.ones(len(calib_user), bool)])
    tokens = np.concatenate([length, np.minimum(n[calib_user], max_len)]) + 1
    return users, ends.astype(np.int64), is_calib, tokens.astype(np.int64)


def calibration_ends(first: np.ndarray, ends: np.ndarray, is_calib: np.ndarray, recent_share: float,
                     generator: torch.Generator) -> np.ndarray:
    """Where this batch's calibration sequences end: at their unit's end (the user's last training event) with
    probability `recent_share`, else after a uniformly drawn event in `first + 2 .. end` (a history of at least 2
    events leaves one history event and one target). Never past the unit's end, so a sequence is never longer than
    the token count the sampler packed it by."""
    u = torch.rand(2, len(ends), generator=generator).numpy()
    span = np.maximum(ends - first - 1, 1)  # candidate ends first+2 .. end
    earlier = np.minimum(first + 2 + (u[1] * span).astype(np.int64), ends)
    return np.where(is_calib & (u[0] >= recent_share), earlier, ends).astype(np.int64)


class RecTask:
    """Data, semantic IDs and model factory for one run; `e2erec.train.engine.TrainTask` is the contract."""

    def __init__(self, cfg: RunConfig, inter: Interactions, split: Split, codes: torch.Tensor,
                 codebook_sizes: list[int], data_fingerprint: str, artifact: dict[str, Any] | None = None):
        self.cfg = cfg
        self.inter, self.split = inter, split
        self.codes = torch.as_tensor(codes, dtype=torch.int64)  # [n_items, L]
        self.codebook_sizes = list(codebook_sizes)
        self.trie = PrefixTrie.build(self.codes, self.codebook_sizes)
        # Under the cold-item protocol the held-out items do not exist while training: the trie-softmax renormalises
        # over the codes of the other items only, so a cold item's codes are never pushed down as alternatives
        # (train.warm_trie_softmax=false: over every item's, the ablation).
        warm_only = inter.cold is not None and cfg.train.warm_trie_softmax
        self.train_trie = PrefixTrie.build_subset(self.codes, self.codebook_sizes,
                                                  torch.from_numpy(~inter.cold.items)) if warm_only else self.trie
        self.data_fingerprint = data_fingerprint
        self._artifact = artifact or {}
        offsets = np.asarray(inter.offsets)
        self.first_event = offsets[:-1]  # row of each user's first event
        # The calibration head's item statistics, counted once: every build_model (the engine's, and fresh copies
        # to load weights into) installs them.
        self.item_feedback = item_feedback_counts(inter, split)
        self.unit_user, self.unit_end, self.unit_calib, self.lengths = training_units(
            offsets, np.asarray(split.train_end), cfg.data.max_seq_len,
            calibration=cfg.train.num_candidates > 0 and cfg.train.calib_loss_weight > 0,
        )
        valid = np.asarray(split.valid, dtype=np.int64)
        valid = valid[valid - offsets[inter.user_of(valid)] >= 1]  # a target needs at least one history event
        # A fixed shuffle: any prefix (the periodic eval's eval_max_targets) is a uniform sample of the targets.
        self.valid = valid[np.random.default_rng(0).permutation(len(valid))]

    @classmethod
    def from_config(cls, cfg: RunConfig, info: D.DistInfo) -> RecTask:
        """Load data and semantic IDs. The IDs come from `train.semantic_ids`, else from `<run_dir>/semantic_ids`,
        which rank 0 builds on the first start (the other ranks wait, then read it) and every resume reuses, so a
        resumed run can never see different codes."""
        from e2erec.data import load_dataset, make_split
        from e2erec.tokenizer import SemanticIDs, build_semantic_ids
        from e2erec.utils.io import cache_root, file_digest

        if info.is_main:  # prepares the dataset cache once; the other ranks then open it
            load_dataset(cfg.data, progress=True)
        D.barrier()
        inter = load_dataset(cfg.data, progress=False)
        split = make_split(inter, cfg.data)
        sid_dir = Path(cfg.train.semantic_ids) if cfg.train.semantic_ids else cfg.run_dir / "semantic_ids"
        if info.is_main and not cfg.train.semantic_ids and not (sid_dir / "meta.json").exists():
            sids, _ = build_semantic_ids(inter, split, cfg.tokenizer, cache_root(cfg.data.cache_dir))
            sids.save(sid_dir)
        D.barrier()
        sids = SemanticIDs.load(sid_dir, inter)
        artifact = {"path": str(sid_dir.resolve()), "sha256": file_digest(sid_dir / "codes.safetensors")}
        return cls(cfg, inter, split, sids.codes, sids.codebook_sizes, inter.meta.get("fingerprint", ""), artifact)

    def artifact_ref(self) -> dict[str, Any]:
        return dict(self._artifact, data_fingerprint=self.data_fingerprint)

    def export_assets(self, run_dir: Path, is_main: bool) -> dict[str, Any]:
        """What an export carries besides the weights: the semantic-ID folder, the item table (written once per run
        into `run_dir`, then linked into every export) and a summary of the training data for the model card."""
        from e2erec.train.export import write_item_table

        items = run_dir / "items.parquet"
        if is_main and not items.exists():
            write_item_table(self.inter.items, items)
        inter = self.inter
        return {"semantic_ids": Path(self._artifact["path"]), "item_table": items,
                "dataset": {"name": inter.meta.get("name", self.cfg.data.name), "n_users": inter.n_users,
                            "n_items": inter.n_items, "n_events": inter.n_events}}

    def build_model(self) -> GenerativeRecommender:
        """The model, its calibration head's item statistics counted over the training events."""
        model = GenerativeRecommender(self.cfg.model, self.codebook_sizes, num_items=len(self.codes))
        model.set_feedback_priors(*map(torch.from_numpy, self.item_feedback), codes=self.codes)
        return model

    # ------------------------------------------------------------------------------------------ training

    def make_sampler(self, rank: int, world_size: int):
        from e2erec.data import TokenBudgetSampler

        return TokenBudgetSampler(self.lengths, max_tokens=self.cfg.train.batch_tokens, seed=self.cfg.train.seed,
                                  shuffle=True, rank=rank, world_size=world_size)

    def _model_batch(self, users: np.ndarray, ends: np.ndarray, num_candidates: int | torch.Tensor,
                     generator: torch.Generator | None, generative: torch.Tensor | None = None,
                     training: bool = False):
        from e2erec.data import gather_histories

        events = gather_histories(self.inter, users, ends, self.cfg.data.max_seq_len)
        m = self.cfg.model
        return build_model_batch(
            events, self.codes, num_candidates=num_candidates, generator=generator,
            loss_weights=(self.cfg.train.gen_loss_weight, self.cfg.train.calib_loss_weight),
            max_history=m.max_tokens_per_seq, num_feedback=m.num_feedback, num_time_buckets=m.num_time_buckets,
            trie=self.train_trie if self.cfg.train.trie_softmax else None, generative=generative,
            targets_counted=training,
        )

    def train_batch(self, indices, generator: torch.Generator):
        idx = np.asarray(indices, dtype=np.int64)
        users, ends, is_calib = self.unit_user[idx], self.unit_end[idx], self.unit_calib[idx]
        if self.cfg.train.calib_recent_share < 1.0 and is_calib.any():
            ends = calibration_ends(self.first_event[users], ends, is_calib,
                                    self.cfg.train.calib_recent_share, generator)
        calib = torch.from_numpy(is_calib)
        bound = torch.where(calib, self.cfg.train.num_candidates, 0)
        return self._model_batch(users, ends, bound, generator, generative=~calib, training=True)

    # ------------------------------------------------------------------------------------------ validation

    def _encode_targets(self, model: GenerativeRecommender, targets: np.ndarray, device: torch.device):
        """(batch, hidden states (N, d)) of validation targets: each target's history with the target itself as the
        one calibration candidate, exactly as at test time."""
        batch = self._model_batch(self.inter.user_of(targets), targets + 1, 1, None).to(device)
        return batch, model.encode(batch)

    def eval_sums(self, model: GenerativeRecommender, rank: int, world_size: int, max_targets: int,
                  device: torch.device) -> dict[str, float]:
        """Sums over this rank's share of the validation targets (the engine adds them up over ranks)."""
        targets = self.valid[:max_targets] if max_targets > 0 else self.valid
        mine = targets[rank::world_size]
        # Every rank runs the same number of passes (collectives inside forward under some ZeRO settings):
        # pad with a repeated target of weight 0.
        per_rank = -(-len(targets) // world_size)
        n_batches = -(-per_rank // EVAL_BATCH)
        sums = {"n": 0.0, "nll": 0.0, "bce": 0.0, "exact": 0.0, "recall": 0.0, "label": 0.0}
        w_gen, w_calib = self.cfg.train.gen_loss_weight, self.cfg.train.calib_loss_weight
        for b in range(n_batches):
            chunk = mine[b * EVAL_BATCH:(b + 1) * EVAL_BATCH]
            weight = torch.ones(len(chunk))
            if len(chunk) == 0:
                if len(targets) == 0:
                    break
                chunk, weight = targets[:1], torch.zeros(1)
            batch, h = self._encode_targets(model, chunk, device)
            hl = h[batch.last_index]  # (B, d): the state that predicts the target v
            tgt_items = torch.as_tensor(np.asarray(self.inter.item)[chunk])
            tgt = self.codes[tgt_items].to(device)  # (B, L)
            mask = trie_code_mask(self.trie, tgt_items).to(device) if self.cfg.train.trie_softmax else None
            logits = model.generative_logits(hl, tgt, mask)  # L x (B, K_l)
            nll = sum(F.cross_entropy(lg.float(), tgt[:, i], reduction="none") for i, lg in enumerate(logits))
            exact = torch.stack([lg.argmax(-1) == tgt[:, i] for i, lg in enumerate(logits)]).all(0)
            state = HistoryState(hidden=hl)
            top, _ = constrained_beam_search(  # (B, RECALL_K) real items only, via the semantic-ID trie
                lambda level, prefix, beams, state=state: model.next_code_logprobs(state, prefix, beams.pairs),
                self.trie.to(device),
                len(chunk), RECALL_K, RECALL_K)
            hit = (top == torch.as_tensor(np.asarray(self.inter.item)[chunk], device=device)[:, None]).any(-1)
            calib_logit = model.calibration_logits(h, batch).float()  # (B,): one target per sequence
            label = batch.calib_label.float()
            bce = F.binary_cross_entropy_with_logits(calib_logit, label, reduction="none")
            weight = weight.to(device)
            sums["n"] += float(weight.sum())
            sums["nll"] += float((nll * weight).sum())
            sums["bce"] += float((bce * weight).sum())
            sums["exact"] += float((exact.float() * weight).sum())
            sums["recall"] += float((hit.float() * weight).sum())
            sums["label"] += float((label * weight).sum())
        sums["w_loss"] = w_gen * sums["nll"] + w_calib * sums["bce"]
        return sums

    def fit_calibration(self, model: GenerativeRecommender, device: torch.device) -> dict[str, Any] | None:
        """Fit Platt scaling of the calibration head on (up to `train.calibration_targets` of) the validation
        targets and install it in `model`; None when it is off. Every rank computes the same fit from the same
        targets (a few thousand forward rows), so the installed values agree without a collective."""
        max_targets = self.cfg.train.calibration_targets
        if max_targets <= 0 or len(self.valid) == 0:
            return None
        targets = self.valid[:max_targets]
        logits, labels = [], []
        for start in range(0, len(targets), EVAL_BATCH):
            batch, h = self._encode_targets(model, targets[start:start + EVAL_BATCH], device)
            logits.append(model.calibration_logits(h, batch).float().cpu())
            labels.append(batch.calib_label.cpu())
        x, y = torch.cat(logits), torch.cat(labels)
        scale, shift = fit_platt(x, y)
        model.set_calibration(scale, shift)
        y = y.numpy()
        return {"scale": scale, "shift": shift, "n_targets": int(x.numel()),
                "logloss_raw": log_loss(torch.sigmoid(x).numpy(), y),
                "logloss_calibrated": log_loss(torch.sigmoid(scale * x + shift).numpy(), y)}

    def summarize_eval(self, sums: dict[str, float]) -> dict[str, Any]:
        if sums["n"] == 0:  # e.g. a temporal split whose validation window is empty
            return {"eval_loss": None, "n_targets": 0, "metrics": {}}
        n = sums["n"]
        return {
            "eval_loss": sums["w_loss"] / n,
            "eval_gen_loss": sums["nll"] / n,
            "eval_calib_loss": sums["bce"] / n,
            "n_targets": int(sums["n"]),
            "metrics": {
                "sid_exact_match": sums["exact"] / n,
                f"sid_recall@{RECALL_K}": sums["recall"] / n,
                "calib_logloss": sums["bce"] / n,
                "calib_base_rate": sums["label"] / n,
            },
        }
