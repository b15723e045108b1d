"""The end-to-end generative recommender: one jagged sequence model, two heads.

Read top to bottom: token embedding -> backbone blocks (pre-norm transformer or HSTU) -> generative head (next
item's semantic ID, code by code) and calibration head (P(positive feedback) of a candidate). The token layout and
the batch it reads are in ``batch.py`` (with a worked example); attention goes through ``e2erec_kernels`` on packed
tokens + offsets, never padded. Model code is written for one device and knows nothing about DeepSpeed.

Generative head (code-level decoding). For the hidden state h of a history token, the next item's codes
(c_1..c_L) are decoded autoregressively by a small residual stack on h alone:

    z_0 = h;   log p(c_l | h, c_<l) = log_softmax(RMSNorm(z_{l-1}) @ E_l^T)       (E_l tied with the input tables)
    z_l = z_{l-1} + SwiGLU_l(RMSNorm(z_{l-1} + E_l[c_l]))

trained with teacher forcing (the true prefix) and cross-entropy per level, each level's softmax restricted to the
codes the prefix trie allows after the true prefix (the only ones the constrained beam search can emit; without the
restriction the head spends capacity and probability on code paths that name no item, and on a catalogue far smaller
than the code space most levels below the first are fully determined by the prefix); the sum over levels is the
item's negative log-likelihood among real items, our ``gen_loss``. Beam search calls ``next_code_logprobs`` with the encoded history.

Calibration head: logit = MLP([RMSNorm(h_target), r_item, r_user]), probability = sigmoid(a * logit + b), trained
with binary cross-entropy on real feedback labels, the proper scoring rule whose minimiser is the true conditional
probability, so the outputs are probabilities (checked by ECE in tests/model), not just an order. (a, b) = (1, 0)
while training; after it, Platt scaling on the validation targets sets them (``e2erec.train.calibrate``), because a
head trained for many epochs on each user's few labelled targets ends over-confident on new ones.

r_item and r_user (``model.calibration_priors``, on when the model is built with ``num_items``) are the logits of the
candidate item's and the user's smoothed positive rates: (positives + 5 * base rate) / (events + 5), the item's over
the training events (``set_feedback_priors``), the user's over the history in the batch. They are the counter
features every industrial ranker has, the DIN ranker of our cascade included. The transformer could learn the user's
rate from the label tokens, but an item's own rate is hard to learn from semantic IDs, whose codes are shared across
items. Measured on ml-100k (600 steps of ``mini``): raw validation LogLoss 0.555 -> 0.545, and the head needs almost
no Platt rescaling (slope 0.92 -> 0.99). A training target is itself one of the counted events, so its own label is
left out of its item's rate (leave-one-out); otherwise the head would read the label from the feature on rarely
consumed items, and learn a dependence that is not there at test time.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from e2erec_kernels import jagged_attention
from torch import nn
from torch.utils.checkpoint import checkpoint

from e2erec.model.batch import LABEL_POSITIVE, ModelBatch, build_model_batch, trie_code_mask
from e2erec.model.config import ModelConfig

PRIOR_WEIGHT = 5.0  # pseudo-events at the base rate in every smoothed positive rate (the cascade ranker's too)


def smoothed_rate_logit(pos: torch.Tensor, count: torch.Tensor, base_rate: torch.Tensor | float,
                        weight: float = PRIOR_WEIGHT) -> torch.Tensor:
    """logit((pos + weight * base_rate) / (count + weight)), the rate clipped to [1e-4, 1 - 1e-4] (float32)."""
    rate = (pos.float() + weight * base_rate) / (count.float() + weight)
    return torch.logit(rate.clamp(1e-4, 1 - 1e-4))


class RMSNorm(nn.Module):
    """Zhang & Sennrich 2019: x / rms(x) * g."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


class SwiGLU(nn.Module):
    """Shazeer 2020, "GLU Variants Improve Transformer": W2 (silu(W1 x) * W3 x)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


@dataclass
class AttnContext:
    """Per-batch attention inputs shared by every block."""

    offsets: torch.Tensor  # int64 [B+1]
    max_len: int
    num_targets: torch.Tensor  # int64 [B]
    timestamp: torch.Tensor  # int64 [N]


class TransformerBlock(nn.Module):
    """Pre-norm block: x + Attn(RMSNorm(x)), then x + SwiGLU(RMSNorm(x)); softmax attention with learned relative
    position and time-gap biases (T5-style buckets, one table per block)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        d, H = cfg.d_model, cfg.n_heads
        self.attn_norm = RMSNorm(d)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.proj = nn.Linear(d, d, bias=False)
        self.pos_bias = nn.Parameter(torch.zeros(cfg.num_pos_buckets, H))
        self.time_bias = nn.Parameter(torch.zeros(cfg.num_time_buckets, H))
        self.ffn_norm = RMSNorm(d)
        self.ffn = SwiGLU(d, cfg.ffn_hidden)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, ctx: AttnContext) -> torch.Tensor:
        N, d = x.shape
        H = self.cfg.n_heads
        q, k, v = self.qkv(self.attn_norm(x)).view(N, 3, H, d // H).unbind(1)  # 3 x (N, heads, head_dim)
        a = jagged_attention(
            q, k, v, ctx.offsets, ctx.max_len, kind="softmax", num_targets=ctx.num_targets,
            timestamps=ctx.timestamp, pos_bias=self.pos_bias, time_bias=self.time_bias,
            backend=self.cfg.attention_backend,
        )  # (N, heads, head_dim)
        x = x + self.drop(self.proj(a.reshape(N, d)))
        return x + self.drop(self.ffn(self.ffn_norm(x)))


class HSTUBlock(nn.Module):
    """HSTU layer (Zhai et al. 2024, "Actions Speak Louder than Words", eqs. 1-3):

        U, V, Q, K = split(silu(f1(Norm(x))))
        A = silu(Q K^T / sqrt(d_h) + rab^{p,t}) / n         (pointwise, no softmax; n = max_tokens_per_seq)
        y = x + f2(Norm(A V) * U)
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        d, H = cfg.d_model, cfg.n_heads
        self.in_norm = RMSNorm(d)
        self.f1 = nn.Linear(d, 4 * d, bias=False)
        self.pos_bias = nn.Parameter(torch.zeros(cfg.num_pos_buckets, H))
        self.time_bias = nn.Parameter(torch.zeros(cfg.num_time_buckets, H))
        self.out_norm = RMSNorm(d)
        self.f2 = nn.Linear(d, d, bias=False)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, ctx: AttnContext) -> torch.Tensor:
        N, d = x.shape
        H = self.cfg.n_heads
        u, v, q, k = F.silu(self.f1(self.in_norm(x))).split(d, dim=-1)  # 4 x (N, d)
        a = jagged_attention(
            q.reshape(N, H, d // H), k.reshape(N, H, d // H), v.reshape(N, H, d // H), ctx.offsets, ctx.max_len,
            kind="hstu", num_targets=ctx.num_targets, timestamps=ctx.timestamp, pos_bias=self.pos_bias,
            time_bias=self.time_bias, hstu_norm=float(self.cfg.max_tokens_per_seq),
            backend=self.cfg.attention_backend,
        )  # (N, heads, head_dim)
        return x + self.drop(self.f2(self.out_norm(a.reshape(N, d)) * u))


@dataclass
class HistoryState:
    """Encoded histories for beam search: the last history token's hidden state per user."""

    hidden: torch.Tensor  # (B, d_model)


StepFn = Callable[[int, torch.Tensor, object], torch.Tensor]


class GenerativeRecommender(nn.Module):
    """Semantic-ID sequence model with a generative (next item) and a calibration (P(positive)) head."""

    def __init__(self, cfg: ModelConfig, codebook_sizes: list[int], *, num_feedback: int | None = None,
                 num_items: int = 0):
        """``num_items`` > 0 (the catalogue the semantic IDs cover) gives the calibration head the item and user
        positive-rate features when ``cfg.calibration_priors``; without it (benchmarks, plans) the head reads h only."""
        super().__init__()
        if not codebook_sizes or min(codebook_sizes) < 1:
            raise ValueError(f"codebook_sizes must be a non-empty list of positive sizes, got {codebook_sizes}")
        self.cfg = cfg
        self.codebook_sizes = list(codebook_sizes)
        self.num_feedback = cfg.num_feedback if num_feedback is None else num_feedback
        d, L = cfg.d_model, len(codebook_sizes)
        # Input tables: per-level codes; feedback / label with row 0 = hidden; time gap with a last row = unknown.
        self.code_emb = nn.ModuleList(nn.Embedding(K, d) for K in codebook_sizes)
        self.feedback_emb = nn.Embedding(self.num_feedback + 1, d)
        self.label_emb = nn.Embedding(3, d)
        self.gap_emb = nn.Embedding(cfg.num_time_buckets + 1, d)
        self.bos = nn.Parameter(torch.zeros(d))
        # Optional item-ID table (cfg.item_embeddings), only for models built with their catalogue size.
        rows = {"none": 0, "full": num_items, "hashed": cfg.item_hash_buckets}[cfg.item_embeddings] if num_items else 0
        self.item_emb = nn.Embedding(rows, d) if rows else None
        block = TransformerBlock if cfg.backbone == "transformer" else HSTUBlock
        self.blocks = nn.ModuleList(block(cfg) for _ in range(cfg.n_layers))
        self.final_norm = RMSNorm(d)
        # Generative head: level l reads RMSNorm(z_{l-1}); z_l adds the chosen code (L - 1 steps).
        self.level_norm = nn.ModuleList(RMSNorm(d) for _ in range(L))
        self.step_norm = nn.ModuleList(RMSNorm(d) for _ in range(L - 1))
        self.step_ffn = nn.ModuleList(SwiGLU(d, cfg.ffn_hidden) for _ in range(L - 1))
        self.code_out = (
            None if cfg.tie_code_embeddings else nn.ModuleList(nn.Linear(d, K, bias=False) for K in codebook_sizes)
        )
        self.calib_norm = RMSNorm(d)
        self.num_items = num_items if cfg.calibration_priors else 0
        n_in = d + (2 if self.num_items else 0)
        self.calib_mlp = nn.Sequential(nn.Linear(n_in, cfg.calibration_hidden), nn.SiLU(),
                                       nn.Linear(cfg.calibration_hidden, 1))
        if self.num_items:
            # Counts, not rates, so a target's own label can be left out; integers, so a bf16 engine leaves them
            # exact. Saved with the weights: the statistics belong to the trained model. (0, 0) until set.
            self.register_buffer("item_pos", torch.zeros(num_items, dtype=torch.int64))
            self.register_buffer("item_count", torch.zeros(num_items, dtype=torch.int64))
            if cfg.prior_prefix_levels:  # each item's code prefix, numbered 0..: whose rate is its prior
                self.register_buffer("item_prefix", torch.zeros(num_items, dtype=torch.int64))
        # Post-hoc Platt scaling of the calibration logit (not trained by the optimizer); saved with the weights.
        self.register_buffer("calib_scale", torch.ones(()))
        self.register_buffer("calib_shift", torch.zeros(()))
        self.reset_parameters()

    # ------------------------------------------------------------------------------------------ init & counts

    def reset_parameters(self) -> None:
        """GPT-2 init: N(0, 0.02); residual output projections scaled by 1/sqrt(2 n_layers)."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
                if isinstance(m, nn.Linear) and m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, RMSNorm):
                nn.init.ones_(m.weight)
        for name, p in self.named_parameters():
            if name.endswith(("proj.weight", "f2.weight", "ffn.w2.weight")):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * self.cfg.n_layers))
            elif name.endswith(("pos_bias", "time_bias")) or name == "bos":
                nn.init.zeros_(p)

    def embedding_parameters(self) -> list[nn.Parameter]:
        """Lookup tables (no matmul FLOPs when read as inputs): code, feedback, label, gap embeddings and BOS."""
        tables = [*self.code_emb, self.feedback_emb, self.label_emb, self.gap_emb]
        tables += [self.item_emb] if self.item_emb is not None else []
        return [t.weight for t in tables] + [self.bos]

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameter count; ``non_embedding`` drops the lookup tables (Kaplan et al. 2020's N)."""
        total = sum(p.numel() for p in self.parameters())
        if non_embedding:
            total -= sum(p.numel() for p in self.embedding_parameters())
        return total

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs (forward + backward) per token, Kaplan et al. 2020 / PaLM appendix B:

            6 * (N_nonembedding + d * sum(K_l)) + 6 * n_layers * d_model * seq_len

        The first term is 2 FLOPs per multiply-add, x3 for forward + backward, over every matmul weight, counting the
        tied code-output projections (d x K_l per level) that N_nonembedding leaves out. The second is attention
        scores and weighted values (2 matmuls of seq_len x d per token and layer, x3 fwd+bwd), halved for the
        causal mask (a token attends to (seq_len + 1) / 2 keys on average, rounded to seq_len / 2). Norms,
        activations and biases are ignored (< 1%).
        """
        d, n_layers = self.cfg.d_model, self.cfg.n_layers
        dense = self.num_params(non_embedding=True) + d * sum(self.codebook_sizes)
        return 6.0 * dense + 6.0 * n_layers * d * seq_len

    # ------------------------------------------------------------------------------------------ encoder

    def embed(self, batch: ModelBatch) -> torch.Tensor:
        """Token embeddings (N, d): summed per-level code embeddings + feedback + label + time gap; BOS rows = bos."""
        x = sum(table(batch.codes[:, level]) for level, table in enumerate(self.code_emb))
        x = x + self.feedback_emb(batch.feedback_id) + self.label_emb(batch.label_id) + self.gap_emb(batch.gap_id)
        if self.item_emb is not None:
            # Hashed: a multiplicative hash spreads consecutive ids (ids are assigned by first appearance) over rows.
            rows = batch.item
            if self.cfg.item_embeddings == "hashed":
                rows = (rows * 2654435761) % self.item_emb.num_embeddings
            x = x + self.item_emb(rows)
        return torch.where(batch.is_bos[:, None], self.bos.to(x.dtype), x)

    def encode(self, batch: ModelBatch) -> torch.Tensor:
        """Final-normed hidden states (N, d) of every token."""
        ctx = AttnContext(batch.offsets, batch.max_len, batch.num_targets, batch.timestamp)
        x = self.embed(batch)
        for block in self.blocks:
            if self.cfg.activation_checkpointing and self.training and torch.is_grad_enabled():
                # Recompute the block in backward: only its input (N, d) stays alive between forward and backward.
                x = checkpoint(block, x, ctx, use_reentrant=False)
            else:
                x = block(x, ctx)
        return self.final_norm(x)

    # ------------------------------------------------------------------------------------------ heads

    def _code_logits(self, z: torch.Tensor, level: int) -> torch.Tensor:
        """Logits (..., K_level) of code `level` from decoder state z (..., d)."""
        u = self.level_norm[level](z)
        if self.code_out is not None:
            return self.code_out[level](u)
        return u @ self.code_emb[level].weight.t()

    def _decoder_step(self, z: torch.Tensor, level: int, code: torch.Tensor) -> torch.Tensor:
        """z_{l} = z_{l-1} + SwiGLU(RMSNorm(z_{l-1} + E_l[c_l])), for level l = `level` (0-based)."""
        return z + self.step_ffn[level](self.step_norm[level](z + self.code_emb[level](code)))

    def generative_logits(self, hidden: torch.Tensor, codes: torch.Tensor,
                          mask: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Teacher-forced logits per level: hidden (G, d), true codes (G, L) -> L tensors (G, K_l). With ``mask``
        (bool (G, sum K_l), `e2erec.model.batch.trie_code_mask`) the codes the trie forbids get -inf, so the
        softmax is over real items' codes only: the support the constrained beam search decodes from."""
        out, z = [], hidden
        masks = mask.split(self.codebook_sizes, dim=1) if mask is not None else [None] * len(self.codebook_sizes)
        for level in range(len(self.codebook_sizes)):
            logits = self._code_logits(z, level)
            out.append(logits if masks[level] is None else logits.masked_fill(~masks[level], float("-inf")))
            if level + 1 < len(self.codebook_sizes):
                z = self._decoder_step(z, level, codes[:, level])
        return out

    def set_feedback_priors(self, positives: torch.Tensor, events: torch.Tensor,
                            codes: torch.Tensor | None = None) -> None:
        """Install each item's positive and total training-event counts (int [num_items] each,
        `e2erec.eval.protocol.item_feedback_counts`), the statistics behind the head's item rate feature, and with
        ``model.prior_prefix_levels`` the items' semantic IDs (`codes` [num_items, L]), whose prefixes pool the
        counts of the rate's prior. A no-op without ``calibration_priors``."""
        if not self.num_items:
            return
        self.item_pos.copy_(torch.as_tensor(positives))
        self.item_count.copy_(torch.as_tensor(events))
        if hasattr(self, "item_prefix"):
            if codes is None:
                raise ValueError("model.prior_prefix_levels needs the items' codes in set_feedback_priors")
            prefix = torch.as_tensor(codes)[:, :self.cfg.prior_prefix_levels]
            self.item_prefix.copy_(torch.unique(prefix, dim=0, return_inverse=True)[1])

    def prior_features(self, batch: ModelBatch) -> torch.Tensor:
        """(T, 2) logits of the smoothed positive rates of each target's item and of its sequence's history."""
        count, pos = self.item_count.sum(), self.item_pos.sum()
        base = torch.where(count > 0, pos.float() / count.clamp_min(1).float(), 0.5)
        item_pos, item_count = self.item_pos[batch.calib_item], self.item_count[batch.calib_item]
        own = (batch.calib_label > 0.5).long() if batch.targets_counted else 0  # the target's own event, left out
        counted = int(batch.targets_counted)
        item_pos, item_count = (item_pos - own).clamp_min(0), (item_count - counted).clamp_min(0)
        prior = base
        if hasattr(self, "item_prefix"):  # the pooled counts of the items sharing the target's code prefix
            prefix = self.item_prefix[batch.calib_item]
            pooled_pos = torch.zeros_like(self.item_pos).index_add_(0, self.item_prefix, self.item_pos)[prefix]
            pooled = torch.zeros_like(self.item_count).index_add_(0, self.item_prefix, self.item_count)[prefix]
            pooled_pos, pooled = (pooled_pos - own).clamp_min(0), (pooled - counted).clamp_min(0)
            prior = (pooled_pos.float() + PRIOR_WEIGHT * base) / (pooled.float() + PRIOR_WEIGHT)
        # History positives and events per sequence, by cumulative sums over the tokens (BOS and targets have the
        # hidden label and count as neither).
        zero = batch.label_id.new_zeros(1)
        cum_pos = torch.cat([zero, (batch.label_id == LABEL_POSITIVE).long().cumsum(0)])
        cum_seen = torch.cat([zero, (batch.label_id > 0).long().cumsum(0)])
        seq = torch.searchsorted(batch.offsets, batch.calib_index, right=True) - 1  # (T,) sequence of each target
        start, end = batch.offsets[seq], batch.offsets[seq + 1]
        user_pos, user_count = cum_pos[end] - cum_pos[start], cum_seen[end] - cum_seen[start]
        return torch.stack([smoothed_rate_logit(item_pos, item_count, prior),
                            smoothed_rate_logit(user_pos, user_count, base)], dim=-1)

    def calibration_logits(self, hidden: torch.Tensor, batch: ModelBatch) -> torch.Tensor:
        """Raw (trained, not Platt-scaled) logit of P(positive feedback) of the batch's targets: hidden states of
        all tokens (N, d) -> (T,)."""
        u = self.calib_norm(hidden[batch.calib_index])
        if self.num_items:
            u = torch.cat([u, self.prior_features(batch).to(u.dtype)], dim=-1)
        return self.calib_mlp(u).squeeze(-1)

    def calibrated_probs(self, hidden: torch.Tensor, batch: ModelBatch) -> torch.Tensor:
        """P(positive feedback) of the batch's targets, hidden states (N, d) -> (T,), Platt scaling applied (float32)."""
        logit = self.calibration_logits(hidden, batch).float()
        return torch.sigmoid(self.calib_scale.float() * logit + self.calib_shift.float())

    def set_calibration(self, scale: float, shift: float) -> None:
        """Install Platt scaling: P = sigmoid(scale * logit + shift)."""
        self.calib_scale.fill_(scale)
        self.calib_shift.fill_(shift)

    # ------------------------------------------------------------------------------------------ training

    def forward(self, batch: ModelBatch) -> dict[str, torch.Tensor]:
        """Losses of one batch: "loss" = w_gen * gen_loss + w_calib * calib_loss (weights from the batch),
        "gen_loss" = mean over predicted items of the item NLL (sum of the per-level cross-entropies
        "gen_loss_l{i}"), "calib_loss" = mean BCE over target tokens, "n_tokens", "n_gen", "n_calib" (counts).
        Empty parts contribute 0 (with a graph, so every parameter gets a gradient under ZeRO)."""
        h = self.encode(batch)
        out: dict[str, torch.Tensor] = {}
        n_gen = batch.gen_index.numel()
        gen = h.new_zeros(())
        smoothing = self.cfg.label_smoothing if self.training else 0.0
        for level, logits in enumerate(self.generative_logits(h[batch.gen_index], batch.gen_codes, batch.gen_mask)):
            logp = F.log_softmax(logits.float(), dim=-1)
            nll = -logp.gather(1, batch.gen_codes[:, level:level + 1]).squeeze(1)
            ce = nll.sum() / max(n_gen, 1)
            out[f"gen_loss_l{level}"] = ce
            if smoothing > 0:
                # Smoothing mass spread over the codes the trie allows (the softmax's support), never over the
                # masked ones, whose log-probability is -inf; "gen_loss" stays the unsmoothed NLL.
                allowed = torch.isfinite(logp)
                uniform = -logp.masked_fill(~allowed, 0.0).sum(1) / allowed.sum(1)
                gen = gen + ((1 - smoothing) * nll + smoothing * uniform).sum() / max(n_gen, 1)
            else:
                gen = gen + ce
        if smoothing > 0:
            out["gen_loss_smoothed"] = gen
            gen_report = sum(out[f"gen_loss_l{level}"] for level in range(len(self.codebook_sizes)))
        else:
            gen_report = gen
        logit = self.calibration_logits(h, batch).float()
        n_calib = batch.calib_index.numel()
        calib = F.binary_cross_entropy_with_logits(logit, batch.calib_label.float(), reduction="sum") / max(n_calib, 1)
        w_gen, w_calib = batch.loss_weights
        out.update(
            loss=w_gen * gen + w_calib * calib,
            gen_loss=gen_report,
            calib_loss=calib,
            n_tokens=torch.tensor(batch.n_tokens, device=h.device),
            n_gen=torch.tensor(n_gen, device=h.device),
            n_calib=torch.tensor(n_calib, device=h.device),
        )
        return out

    # ------------------------------------------------------------------------------------------ inference

    def _batch(self, histories, codes: torch.Tensor, candidates: torch.Tensor | None = None) -> ModelBatch:
        device = next(self.parameters()).device
        return build_model_batch(
            histories, codes, num_candidates=0, candidates=candidates, max_history=self.cfg.max_tokens_per_seq,
            num_feedback=self.num_feedback, num_time_buckets=self.cfg.num_time_buckets,
        ).to(device)

    @torch.no_grad()
    def score_candidates(
        self, histories, candidates: torch.Tensor, codes: torch.Tensor, *, chunk: int = 256
    ) -> torch.Tensor:
        """P(positive feedback) (B, C) for each history and candidate item id in ``candidates`` (B, C).

        Candidates are appended as target tokens and scored in one pass per chunk of ``chunk`` candidates; the
        target-aware mask makes a candidate's score independent of the others in its pass.
        """
        candidates = torch.as_tensor(candidates, dtype=torch.int64)
        probs = []
        for start in range(0, candidates.shape[1], chunk):
            part = candidates[:, start : start + chunk]
            batch = self._batch(histories, codes, part.cpu())
            h = self.encode(batch)
            probs.append(self.calibrated_probs(h, batch).view(part.shape))
        if not probs:
            return torch.zeros(candidates.shape, device=next(self.parameters()).device)
        return torch.cat(probs, dim=1)

    @torch.no_grad()
    def encode_histories(self, histories, codes: torch.Tensor) -> HistoryState:
        """Encode each history once: the hidden state that predicts its next item, (B, d)."""
        batch = self._batch(histories, codes)
        return HistoryState(hidden=self.encode(batch)[batch.last_index])

    @torch.no_grad()
    def next_code_logprobs(self, state: HistoryState, prefix: torch.Tensor, pairs=None) -> torch.Tensor:
        """log p(c_{level} | history, prefix): prefix (B, beams, level) of codes -> (B, beams, K_level), level =
        prefix.shape[-1] (0-based index of the code being chosen). Runs only the small decoder head.

        With ``pairs`` = (row, beam, code) long [P] each, returns only those codes' logits [P], unnormalised (the
        beam search renormalises over them): P dot products instead of a [B, beams, K] head, for a level whose K is
        far larger than the children a beam can have."""
        B, beams, level = prefix.shape
        if level >= len(self.codebook_sizes):
            raise ValueError(f"prefix has {level} codes but items have only {len(self.codebook_sizes)} levels")
        z = state.hidden[:, None, :].expand(B, beams, -1)  # (B, beams, d)
        for step in range(level):
            z = self._decoder_step(z, step, prefix[..., step])
        if pairs is None:
            return torch.log_softmax(self._code_logits(z, level).float(), dim=-1)
        row, beam, code = (t.to(z.device) for t in pairs)
        weight = (self.code_emb if self.code_out is None else self.code_out)[level].weight  # (K, d), as _code_logits
        u = self.level_norm[level](z)  # per beam, before the gather: P can be many times B x beams
        return (u[row, beam] * weight[code]).sum(-1)

    @torch.no_grad()
    def item_log_probs(self, hidden: torch.Tensor, items: torch.Tensor, codes: torch.Tensor, trie) -> torch.Tensor:
        """log P_gen(item | history) among real items, float32 [B, C], for the encoded histories' next-item states
        `hidden` [B, d] and item ids `items` [B, C] (-1: -inf): each level's softmax over the codes the trie
        allows (`trie_code_mask`), summed over levels. The score the constrained beam search gives an item before
        steering, computed teacher-forced for items chosen elsewhere (what an explanation attributes)."""
        B, C = items.shape
        flat = items.reshape(-1).to(hidden.device)
        real = flat.clamp_min(0)
        target = codes.to(hidden.device)[real]  # (B*C, L)
        z = hidden[:, None, :].expand(B, C, -1).reshape(B * C, -1)
        total = torch.zeros(B * C, device=hidden.device)
        for level, logits in enumerate(self.generative_logits(z, target, trie_code_mask(trie, real))):
            total += torch.log_softmax(logits.float(), dim=-1).gather(1, target[:, level:level + 1]).squeeze(1)
        return torch.where(flat >= 0, total, torch.full_like(total, float("-inf"))).view(B, C)

    def make_step_fn(self, histories, codes: torch.Tensor) -> tuple[StepFn, HistoryState]:
        """(step_fn, state) for beam search: ``step_fn(level, prefix [B, beams, level], state) -> log-probs
        [B, beams, K_level]``. Histories are encoded once here; each step runs only the decoder head."""
        state = self.encode_histories(histories, codes)

        def step_fn(level: int, prefix: torch.Tensor, state: HistoryState = state, pairs=None) -> torch.Tensor:
            if prefix.shape[-1] != level:
                raise ValueError(f"step {level} got a prefix of {prefix.shape[-1]} codes")
            return self.next_code_logprobs(state, prefix.to(state.hidden.device), pairs)

        return step_fn, state
