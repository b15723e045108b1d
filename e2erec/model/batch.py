r"""From a batch of user histories (events) to the model's jagged token batch.

Token layout — one token per event, plus a BOS token per sequence and one token per calibration candidate::

    sequence b:  [BOS] [e_0] [e_1] ... [e_{h-1}] | [t_0] [t_1] ... [t_{k-1}]
                 \________ history (causal) ______/   \____ k targets ____/

    token embedding of event e = sum_l E_l[code_l(item)]      (per-level code tables, l = 0..L-1)
                               + F[feedback bucket] + Y[label] + G[time gap to the previous event, log2 bucket]
    token embedding of target t = sum_l E_l[code_l(candidate)] + F[hidden] + Y[hidden] + G[unknown]

Position and absolute time enter through learned relative biases inside attention (position bucket of the
distance, log2 bucket of the timestamp gap; ``e2erec_kernels.reference``); targets carry the timestamp of the last
history event ("now"), because at serving time a candidate's own timestamp is unknown.

Worked example, L = 3 levels, ``num_candidates = 2``, a user with 4 events (item, rating, label, ts)
``(7, 5, 1, 100), (3, 2, 0, 160), (9, 4, 1, 200), (2, 1, 0, 260)`` and codes ``7 -> (1, 4, 0), 3 -> (1, 2, 0),
9 -> (6, 0, 0), 2 -> (6, 0, 1)``: k = 2 targets (the last two events) and h = 2 history events::

    token      BOS      e0        e1        t0 (item 9)   t1 (item 2)
    codes      -        (1,4,0)   (1,2,0)   (6,0,0)       (6,0,1)
    feedback   -        5         2         hidden        hidden
    label      -        1         0         hidden        hidden
    gap        -        unknown   60 s      unknown       unknown
    timestamp  100      100       160       160           160
    num_targets = 2; gen: BOS -> (1,4,0), e0 -> (1,2,0), e1 -> (6,0,0); calib: t0 -> 1, t1 -> 0

The hidden state of a history token predicts the NEXT event's codes (generative head); the hidden state of a target
token, which sees the history and itself but neither the other targets nor its own feedback, gives P(label = 1)
(calibration head). Why one token per event instead of one token per code (TIGER-style ``[c1 c2 c3 fb]``):
sequences are L+1 times shorter (attention cost (L+1)^2 lower), the history is encoded ONCE for the whole beam
search (the code-by-code decoding runs in a small head on one vector per beam, so no KV cache is needed), and a
candidate is exactly one target token, which is what the kernels' target-aware mask scores in one pass.

Candidate choice for training (calibration): the sequence's own last k events with their real labels, so positives
AND negatives come from real feedback. We do not add sampled unseen items as label-0 negatives: "not consumed" is
not "disliked", and the head is evaluated (ECE, LogLoss) on real held-out feedback; mixing in sampled negatives
would shift the base rate and make the probabilities systematically too low on the distribution they are used on.
Held-out targets are cut from the history, so training (`e2erec.train.task.training_units`) gives the calibration
targets sequences of their own (``generative`` false) and keeps every event a generative target elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Protocol

import torch
from e2erec_kernels import time_bucket

from e2erec.errors import ArtifactMismatchError


class EventsLike(Protocol):
    """What the model reads from ``e2erec.data.jagged.JaggedBatch`` (torch tensors or numpy arrays)."""

    offsets: torch.Tensor  # int64 [B+1]
    item: torch.Tensor  # int64 [N]
    timestamp: torch.Tensor  # int64 [N]
    feedback: torch.Tensor  # float [N]
    label: torch.Tensor  # float [N], 0/1


HIDDEN = 0  # feedback / label id of a BOS or target token: never seen by the model
LABEL_NEGATIVE, LABEL_POSITIVE = 1, 2  # label ids of history events: 1 + label


@dataclass
class ModelBatch:
    """The model's input: a jagged token batch plus the targets of both heads. Build with `build_model_batch`.

    Token tensors have one row per token (N in total, sequence b is rows offsets[b]:offsets[b+1]).
    """

    offsets: torch.Tensor  # int64 [B+1] over tokens
    max_len: int  # longest sequence in tokens
    codes: torch.Tensor  # int64 [N, L]; rows of BOS tokens are 0 and ignored
    item: torch.Tensor  # int64 [N]: each token's item id (events and targets); BOS rows are 0 and ignored
    is_bos: torch.Tensor  # bool [N]
    feedback_id: torch.Tensor  # int64 [N]: HIDDEN, or 1 + clamp(round(feedback), 0, num_feedback - 1)
    label_id: torch.Tensor  # int64 [N]: HIDDEN, or 1 + label
    gap_id: torch.Tensor  # int64 [N]: log2 bucket of the gap to the previous event; num_time_buckets = unknown
    timestamp: torch.Tensor  # int64 [N] seconds
    num_targets: torch.Tensor  # int64 [B]
    gen_index: torch.Tensor  # int64 [G]: tokens whose hidden state predicts the next item
    gen_codes: torch.Tensor  # int64 [G, L]: that next item's codes
    calib_index: torch.Tensor  # int64 [T]: target tokens
    calib_label: torch.Tensor  # float32 [T] in {0, 1}
    calib_item: torch.Tensor  # int64 [T]: each target's item id
    last_index: torch.Tensor  # int64 [B]: each sequence's last history token (BOS when the history is empty)
    loss_weights: tuple[float, float] = (1.0, 1.0)  # (generative, calibration)
    # bool [G, sum(K_l)]: the codes the trie allows at each level after the true prefix (`trie_code_mask`); the
    # generative loss normalises over them. None = over the whole codebook.
    gen_mask: torch.Tensor | None = None
    # The targets are events the model's item statistics count (training batches): the calibration head leaves each
    # one's own label out of its item's positive rate (`GenerativeRecommender.prior_features`).
    targets_counted: bool = False

    @property
    def n_tokens(self) -> int:
        return int(self.offsets[-1])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> ModelBatch:
        moved = {}
        for f in fields(self):
            value = getattr(self, f.name)
            moved[f.name] = value.to(device, non_blocking=non_blocking) if torch.is_tensor(value) else value
        return ModelBatch(**moved)


def _as_tensor(x, dtype) -> torch.Tensor:
    return torch.as_tensor(x).to(dtype)


def build_model_batch(
    events: EventsLike,
    codes: torch.Tensor,
    *,
    num_candidates: int | torch.Tensor,
    loss_weights: tuple[float, float] = (1.0, 1.0),
    generator: torch.Generator | None = None,
    max_history: int | None = None,
    num_feedback: int = 6,
    num_time_buckets: int = 32,
    candidates: torch.Tensor | None = None,
    trie=None,
    generative: torch.Tensor | None = None,
    targets_counted: bool = False,
) -> ModelBatch:
    """Token batch for training (targets = each sequence's last events) or scoring (targets = given candidates).

    events: a JaggedBatch of histories. codes: int64 [n_items, L] semantic IDs.
    Training (``candidates is None``): sequence b with n events holds out k = min(num_candidates, n - 1) of its
    last events as calibration targets with their real labels (at least one history event stays). With a
    ``generator``, k is drawn uniformly from 1..that bound per sequence instead, so that over an epoch the last
    events are also used as generative targets and the head sees several horizons; without one the batch is
    deterministic (validation). ``num_candidates`` may also be an int64 tensor [B], one bound per sequence (0: no
    calibration targets, every event is history). ``generative`` (bool [B], default all) chooses the sequences whose
    history tokens are generative targets; the others train the calibration head only. Scoring: every event is
    history and ``candidates`` [B, C] (item ids) are targets
    with label 0 (unused). ``max_history`` keeps the most recent history events (the model's max_tokens_per_seq).
    With a ``trie`` (`e2erec.tokenizer.trie.PrefixTrie` of ``codes``), ``gen_mask`` holds each generative target's
    valid codes per level (`trie_code_mask`). ``targets_counted``: the training targets are among the events the
    model's item feedback statistics were counted over (see `ModelBatch.targets_counted`).
    """
    offsets = _as_tensor(events.offsets, torch.int64).cpu()
    item = _as_tensor(events.item, torch.int64).cpu()
    ts = _as_tensor(events.timestamp, torch.int64).cpu()
    fb = _as_tensor(events.feedback, torch.float32).cpu()
    lab = _as_tensor(events.label, torch.float32).cpu()
    codes = codes.cpu().long()
    if offsets.dim() != 1 or offsets.numel() < 1 or int(offsets[0]) != 0 or int(offsets[-1]) != item.numel():
        raise ValueError(f"events.offsets must be [B+1] from 0 to {item.numel()}, got {offsets.tolist()[:8]}...")
    if item.numel() and (int(item.min()) < 0 or int(item.max()) >= codes.shape[0]):
        bad = int(item.min()) if int(item.min()) < 0 else int(item.max())
        raise ArtifactMismatchError(
            f"item ids must be in [0, {codes.shape[0]}) (rows of the semantic-ID codes), got {bad}: were the codes "
            "built for another dataset?"
        )
    B = offsets.numel() - 1
    lengths = offsets.diff()
    if candidates is not None:
        candidates = _as_tensor(candidates, torch.int64).cpu()
        if candidates.dim() != 2 or candidates.shape[0] != B:
            raise ValueError(f"candidates must be [B={B}, C], got {tuple(candidates.shape)}")
        if targets_counted:
            raise ValueError("targets_counted applies to training targets (events), not to scored candidates")
        k = torch.full((B,), candidates.shape[1], dtype=torch.int64)
        hist_len = lengths
    else:
        per_seq = _as_tensor(num_candidates, torch.int64).cpu()
        if per_seq.dim() > 1 or (per_seq.dim() == 1 and per_seq.numel() != B):
            raise ValueError(f"num_candidates must be an int or [B={B}], got shape {tuple(per_seq.shape)}")
        bound = torch.minimum((lengths - 1).clamp(min=0), per_seq.clamp(min=0))
        if generator is not None:
            draw = torch.rand(B, generator=generator)
            k = torch.where(bound > 0, 1 + (draw * bound).long().clamp(max=bound - 1), bound)
        else:
            k = bound
        hist_len = lengths - k
    # Most recent history only: the history of sequence b is events[hist_start[b] : hist_end[b]].
    hist_end = offsets[:-1] + hist_len
    if max_history is not None:
        hist_len = hist_len.clamp(max=max_history)
    hist_start = hist_end - hist_len

    seq_len = 1 + hist_len + k  # BOS + history + targets
    tok_offsets = torch.zeros(B + 1, dtype=torch.int64)
    tok_offsets[1:] = seq_len.cumsum(0)
    N = int(tok_offsets[-1])
    seq_of_tok = torch.repeat_interleave(torch.arange(B), seq_len)  # [N]
    pos = torch.arange(N) - tok_offsets[:-1][seq_of_tok]  # [N] position inside the sequence
    h_tok = hist_len[seq_of_tok]
    is_bos = pos == 0
    is_hist = (pos >= 1) & (pos <= h_tok)
    is_target = pos > h_tok

    # Event row of every history token; targets of training batches are the events right after the history.
    ev = hist_start[seq_of_tok] + pos - 1  # [N], valid where is_hist, and where is_target for training
    tok_item = torch.zeros(N, dtype=torch.int64)
    tok_item[is_hist] = item[ev[is_hist]]
    if candidates is not None:
        tok_item[is_target] = candidates[seq_of_tok[is_target], (pos - 1 - h_tok)[is_target]]
    else:
        tok_item[is_target] = item[ev[is_target]]
    tok_codes = codes[tok_item]  # [N, L]
    tok_codes[is_bos] = 0

    feedback_id = torch.full((N,), HIDDEN, dtype=torch.int64)
    label_id = torch.full((N,), HIDDEN, dtype=torch.int64)
    feedback_id[is_hist] = 1 + fb[ev[is_hist]].round().long().clamp(0, num_feedback - 1)
    label_id[is_hist] = torch.where(lab[ev[is_hist]] > 0.5, LABEL_POSITIVE, LABEL_NEGATIVE)

    # Timestamps: history tokens their own; BOS the first history event's; targets the last one's ("now").
    def ts_at(rows: torch.Tensor) -> torch.Tensor:  # timestamps of event rows, 0 where the history is empty
        if item.numel() == 0:
            return torch.zeros_like(rows)
        return torch.where(hist_len > 0, ts[rows.clamp(0, item.numel() - 1)], 0)

    first_ts, last_ts = ts_at(hist_start), ts_at(hist_end - 1)
    timestamp = torch.where(is_target, last_ts[seq_of_tok], first_ts[seq_of_tok])
    timestamp[is_hist] = ts[ev[is_hist]]
    gap_id = torch.full((N,), num_time_buckets, dtype=torch.int64)
    follows = is_hist & (pos >= 2)  # a history event after another history event
    gap_id[follows] = time_bucket(timestamp[follows] - timestamp[follows.nonzero().squeeze(1) - 1], num_time_buckets)

    # Generative targets: BOS and every history token predict the next event (when it exists in this batch).
    # In training the last history token predicts the first target; when scoring, the next event is unknown.
    last_hist = pos == h_tok  # the last history token (BOS when the history is empty)
    predicts = (is_bos | is_hist) & ~(last_hist & ((k[seq_of_tok] == 0) | (candidates is not None)))
    if generative is not None:
        generative = _as_tensor(generative, torch.bool).cpu()
        if generative.shape != (B,):
            raise ValueError(f"generative must be bool [B={B}], got shape {tuple(generative.shape)}")
        predicts &= generative[seq_of_tok]
    gen_index = predicts.nonzero().squeeze(1)
    gen_items = item[ev[gen_index] + 1]
    gen_codes = codes[gen_items]

    calib_index = is_target.nonzero().squeeze(1)
    calib_label = torch.zeros(calib_index.numel()) if candidates is not None else lab[ev[calib_index]].float()

    return ModelBatch(
        offsets=tok_offsets,
        max_len=int(seq_len.max()) if B else 0,
        codes=tok_codes,
        item=tok_item,
        is_bos=is_bos,
        feedback_id=feedback_id,
        label_id=label_id,
        gap_id=gap_id,
        timestamp=timestamp,
        num_targets=k,
        gen_index=gen_index,
        gen_codes=gen_codes,
        calib_index=calib_index,
        calib_label=calib_label,
        calib_item=tok_item[calib_index],
        last_index=tok_offsets[:-1] + hist_len,
        loss_weights=(float(loss_weights[0]), float(loss_weights[1])),
        gen_mask=None if trie is None else trie_code_mask(trie, gen_items),
        targets_counted=targets_counted,
    )


def trie_code_mask(trie, items: torch.Tensor) -> torch.Tensor:
    """bool [n, sum(K_l)]: for each item, the codes the trie allows at level l after the item's own first l codes,
    levels side by side. The beam search can only emit these, so the generative loss normalises over them too."""
    items = torch.as_tensor(items, dtype=torch.int64, device=trie.device)
    return torch.cat([trie.step(level, trie.item_node[level][items])[0] for level in range(trie.n_levels)], dim=1)
