"""The `eval` section: the evaluation protocol, the same for every system of a report: which systems, the list
length and cut-offs, the early-stopping rule, the confidence intervals and segments.

How the end-to-end model searches (beam, steering) is the `generate` section (`e2erec/generate/config.py`); the
baselines' hyperparameters are the `baseline` section (`e2erec/baselines/config.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class EvalConfig:
    ks: list[int] = field(default_factory=lambda: [1, 5, 10, 50])
    top_k: int = 50  # every system returns this many items per target (and MRR is truncated there)
    baselines: list[str] = field(default_factory=lambda: ["popularity", "sasrec", "cascade", "plugin_cascade"])
    bootstrap: int = 200  # bootstrap resamples over users for confidence intervals
    ece_bins: int = 15
    long_tail_share: float = 0.8  # items outside the top 20% by popularity are long tail
    short_history: int = 5  # users with <= this many training events form the cold segment
    # Exploration efficiency (e2erec/eval/exploration.py): each system's top-10 with these shares of its slots given
    # to its own best long-tail items, against rolling dice and the cascades (empty = not measured).
    explore_shares: list[float] = field(default_factory=list)
    # Repeats: every system may recommend items already in the history (the end-to-end model then learns when to,
    # generate.steering.exclude_seen is off). False: every system excludes them, and a test target that repeats an
    # item of its history cannot be hit (the report's repeat_target segment counts them).
    allow_repeats: bool = False
    # The protocol's early-stopping rule (e2erec/eval/stopping.py), the same for every system of a report: stop after
    # `patience` validation evaluations without a better score (an epoch for the baselines, train.eval_every steps
    # for the end-to-end model), at `baseline_epochs` epochs, or when the time budget is spent.
    baseline_epochs: int = 40
    patience: int = 3
    baseline_budget_s: float = 0.0  # wall seconds per baseline system (0 = none); `e2erec run` sets it from its budget
    select_metric: str = "ndcg@10"  # validation metric for early stopping of retrieval-type baselines
    seed: int = 0

    @property
    def select_k(self) -> int:
        """The list length `select_metric` reads: its @k, else the whole list (`top_k`)."""
        return int(self.select_metric.partition("@")[2] or self.top_k)

    def validate(self) -> None:
        if not self.ks or min(self.ks) < 1:
            raise ValueError(f"ks must be positive cutoffs, got {self.ks}")
        if max(self.ks) > self.top_k:
            raise ValueError(f"top_k ({self.top_k}) must be >= the largest cutoff in ks ({max(self.ks)})")
        if not 0.0 < self.long_tail_share < 1.0:
            raise ValueError(f"long_tail_share must be in (0, 1), got {self.long_tail_share}")
        if self.ece_bins < 1 or self.bootstrap < 0 or self.baseline_epochs < 1 or self.patience < 1:
            raise ValueError("ece_bins, baseline_epochs and patience must be >= 1 and bootstrap >= 0")
        if any(not 0 < s < 1 for s in self.explore_shares) or sorted(set(self.explore_shares)) != list(
                self.explore_shares):
            raise ValueError(f"explore_shares must be distinct shares in (0, 1) in ascending order, got "
                             f"{self.explore_shares}")
        if self.explore_shares and min(self.explore_shares) < 0.1:
            raise ValueError(f"explore_shares: {min(self.explore_shares)} reserves no slot of a top-10 (>= 0.1)")
        name, _, cut = self.select_metric.partition("@")
        if name not in ("ndcg", "hr", "recall", "mrr") or (cut and not cut.isdigit()):
            raise ValueError(f"select_metric must look like 'ndcg@10', 'hr@10' or 'mrr', got {self.select_metric!r}")
