"""The `eval` section: generation, steering, baselines and the evaluation protocol."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SteeringConfig:
    """Constraints applied inside beam search (not as a post-filter, so top-K stays full)."""

    exclude_seen: bool = True
    include_categories: list[str] = field(default_factory=list)  # restrict to these categories (empty = all)
    boost_categories: dict[str, float] = field(default_factory=dict)  # category -> log-prob bonus
    freshness_weight: float = 0.0  # log-prob bonus per (year - min_year) / (max_year - min_year)
    explore_share: float = 0.0  # share of the top-K reserved for long-tail items


@dataclass
class EvalConfig:
    ks: list[int] = field(default_factory=lambda: [1, 5, 10, 50])
    beam_size: int = 50
    top_k: int = 50
    steering: SteeringConfig = field(default_factory=SteeringConfig)
    baselines: list[str] = field(default_factory=lambda: ["popularity", "sasrec", "cascade", "plugin_cascade"])
    bootstrap: int = 200  # bootstrap resamples over users for confidence intervals
    ece_bins: int = 15
    long_tail_share: float = 0.8  # items outside the top 20% by popularity are long tail
    short_history: int = 5  # users with <= this many training events form the cold segment
    # The protocol's early-stopping rule (e2erec/eval/stopping.py), the same for every system of a report: stop after
    # `patience` validation evaluations without a better score (an epoch for the baselines, train.eval_every steps
    # for the end-to-end model), at `baseline_epochs` epochs, or when the time budget is spent.
    baseline_epochs: int = 40
    patience: int = 3
    baseline_budget_s: float = 0.0  # wall seconds per baseline system (0 = none); `e2erec run` sets it from its budget
    # Baseline widths, depth and learning rate: the winners of scripts/tune_baselines.py on ml-100k validation
    # NDCG@10 (issue-14 notes): SASRec 64-d, dropout 0.2, lr 2e-3 at 2 blocks (0.1173; 128-d 0.1077, lr 1e-3
    # 0.0934), then depth x lr: 1 block 0.1287 (lr 4e-3: 0.1265), 2 blocks 0.1173 (0.1192), 3 blocks 0.1179
    # (0.1194); the cascade 128-d, lr 2e-3 (0.1123; 64-d 0.1055). The plugin cascade shares the cascade's
    # architecture and width.
    baseline_dim: int = 64  # embedding width of SASRec
    cascade_dim: int = 128  # embedding width of both cascades' two-tower and ranking models
    sasrec_layers: int = 1  # SASRec's self-attention blocks (the grid's winner on ml-100k; the paper's 2)
    sasrec_dropout: float = 0.2  # SASRec's dropout (the paper's 0.2 on MovieLens-1M)
    # SASRec's training softmax: 0 = over the whole catalogue (the default, and what every ml-100k number uses);
    # n > 0 = over the target and n uniform negatives shared by the batch. A full softmax costs positions x items
    # per batch, ~70 min an epoch at 10M events / 100K items on 2 cores; scripts/bench_scale.py uses 1024.
    sasrec_negatives: int = 0
    baseline_max_len: int = 50  # most recent history events a baseline reads
    baseline_batch_size: int = 128  # sequences per step (SASRec, two-tower); the ranker uses 16x this many events
    baseline_lr: float = 2e-3
    # torch CPU threads while baselines train. 1 by default: on a shared 2-core machine, 2 OpenMP threads spin-waited
    # and cost 8x the CPU time of 1 thread for a SASRec epoch (21 s vs 2.6 s, measured under load).
    baseline_threads: int = 1
    cascade_candidates: int = 100  # retrieval stage output (top-N handed to the ranker)
    cascade_negatives: int = 256  # uniformly sampled negatives per step, on top of the in-batch ones
    semantic_candidates: int = 50  # plugin cascade: candidates from the semantic-similarity channel
    select_metric: str = "ndcg@10"  # validation metric for early stopping of retrieval-type baselines
    seed: int = 0

    def validate(self) -> None:
        if not self.ks or min(self.ks) < 1:
            raise ValueError(f"ks must be positive cutoffs, got {self.ks}")
        if max(self.ks) > self.top_k:
            raise ValueError(f"top_k ({self.top_k}) must be >= the largest cutoff in ks ({max(self.ks)})")
        if not 0.0 < self.long_tail_share < 1.0:
            raise ValueError(f"long_tail_share must be in (0, 1), got {self.long_tail_share}")
        if self.ece_bins < 1 or self.bootstrap < 0 or self.baseline_epochs < 1 or self.patience < 1:
            raise ValueError("ece_bins, baseline_epochs and patience must be >= 1 and bootstrap >= 0")
        if self.sasrec_layers < 1 or not 0.0 <= self.sasrec_dropout < 1.0:
            raise ValueError(f"sasrec_layers must be >= 1 and sasrec_dropout in [0, 1), got {self.sasrec_layers}, "
                             f"{self.sasrec_dropout}")
        if self.sasrec_negatives < 0:
            raise ValueError(f"sasrec_negatives must be >= 0 (0 = full softmax), got {self.sasrec_negatives}")
        if self.cascade_candidates < self.top_k:
            raise ValueError(f"cascade_candidates ({self.cascade_candidates}) must be >= top_k ({self.top_k})")
        name, _, cut = self.select_metric.partition("@")
        if name not in ("ndcg", "hr", "recall", "mrr") or (cut and not cut.isdigit()):
            raise ValueError(f"select_metric must look like 'ndcg@10', 'hr@10' or 'mrr', got {self.select_metric!r}")
