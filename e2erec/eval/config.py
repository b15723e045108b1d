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
    baseline_epochs: int = 20
