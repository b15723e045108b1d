"""The `generate` section: how the end-to-end model writes its lists (beam search and steering).

Steering is applied inside the search, not as a post-filter, so the list stays full. The list length itself is the
protocol's (`eval.top_k`): every evaluated system returns that many items.
"""

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

    def validate(self) -> None:
        if not 0.0 <= self.explore_share <= 1.0:
            raise ValueError(f"explore_share must be in [0, 1], got {self.explore_share}")


@dataclass
class GenerateConfig:
    beam_size: int = 50  # prefixes kept per user and level (at least the list length)
    steering: SteeringConfig = field(default_factory=SteeringConfig)

    def validate(self) -> None:
        if self.beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {self.beam_size}")
