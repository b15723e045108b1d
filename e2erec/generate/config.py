"""The `generate` section: how the end-to-end model writes its lists (beam search and steering).

Steering is applied inside the search, not as a post-filter, so the list stays full. The list length itself is the
protocol's (`eval.top_k`): every evaluated system returns that many items. Every steering field is an operator's
instruction, settable per request (`e2erec.serve.Recommender.recommend(history, instructions)`), from YAML or the
command line (`generate.steering.history_days=3`); the schedulability benchmark measures each one
(`e2erec eval --steering-bench`, `e2erec.eval.steering_bench`).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SteeringConfig:
    """Instructions applied inside beam search (not as a post-filter, so top-K stays full). Items are named by the
    dataset's own ids, categories by the item table's names."""

    exclude_seen: bool = True  # never recommend an item of the user's history (the whole history, window or not)
    # Without exclude_seen the model re-recommends an item when its history makes it likely; this log-prob bonus is
    # added to every history item (negative: repeat less). None: chosen on the validation targets
    # (`GenerativeSystem.fit` under eval.allow_repeats), 0 until then.
    repeat_bonus: float | None = None
    # History windows: the model reads only the user's events of the last `history_days` days before the request
    # and at most the last `history_events` of them (0 = no limit). An empty window keeps the latest event.
    history_days: float = 0.0
    history_events: int = 0
    include_categories: list[str] = field(default_factory=list)  # restrict to these categories (empty = all)
    boost_categories: dict[str, float] = field(default_factory=dict)  # category -> log-prob bonus ("hot topic")
    include_items: list[str] = field(default_factory=list)  # restrict to these items (empty = all)
    boost_items: list[str] = field(default_factory=list)  # items that get `item_boost` added to their log-prob
    item_boost: float = 1.0
    min_year: int = 0  # no items released before this year (items without a year are excluded too); 0 = off
    freshness_weight: float = 0.0  # log-prob bonus per (year - min_year) / (max_year - min_year)
    explore_share: float = 0.0  # share of the top-K reserved for exploration (long-tail items by default)
    explore_categories: list[str] = field(default_factory=list)  # explore these categories instead of the long tail

    def validate(self) -> None:
        if not 0.0 <= self.explore_share <= 1.0:
            raise ValueError(f"explore_share must be in [0, 1], got {self.explore_share}")
        if self.history_days < 0 or self.history_events < 0:
            raise ValueError(f"history_days and history_events must be >= 0 (0 = no window), got "
                             f"{self.history_days} and {self.history_events}")
        if self.explore_categories and self.explore_share == 0:
            raise ValueError("explore_categories is set but explore_share is 0: no slot is reserved for them")

    @property
    def windowed(self) -> bool:
        return self.history_days > 0 or self.history_events > 0


@dataclass
class ExplainConfig:
    """Reasons under recommended items (`e2erec generate --explain`, `e2erec.explain`). The event counts set the
    cost: max_events + at most k + 2 encoder passes per user (`e2erec.explain.attribution.explain_events`)."""

    top_events: int = 3  # history events cited per item
    # Events occluded one at a time per user: the latest `recent_events`, then the most similar to the items. 5 and 2
    # explain a top-10 at 4.5x the cost of generating it on ml-100k (all 943 test users; 6 and 3 cost 6.2x, with
    # no better deletion score: the issue-17 note).
    max_events: int = 5
    recent_events: int = 2
    # Reasons never mention these item categories, nor these user attributes (beside the demographics, which are
    # never mentioned whatever this says: `e2erec.explain.reasons.DEMOGRAPHICS`).
    deny_categories: list[str] = field(default_factory=list)
    deny_attributes: list[str] = field(default_factory=list)

    def validate(self) -> None:
        if self.top_events < 1 or self.max_events < 0 or self.recent_events < 0:
            raise ValueError(f"top_events must be >= 1 and max_events, recent_events >= 0, got {self.top_events}, "
                             f"{self.max_events}, {self.recent_events}")
        if 0 < self.max_events < self.recent_events:
            raise ValueError(f"max_events ({self.max_events}) must be >= recent_events ({self.recent_events}) "
                             "(or 0: every event of the history)")


@dataclass
class GenerateConfig:
    beam_size: int = 50  # prefixes kept per user and level (at least the list length)
    # The objective knob of the joint order, log P(next item) + w log P(positive): w = 0 ranks by engagement, a
    # large w by satisfaction. None: w is chosen on the validation targets (`GenerativeSystem.fit`).
    objective_weight: float | None = None
    steering: SteeringConfig = field(default_factory=SteeringConfig)
    explain: ExplainConfig = field(default_factory=ExplainConfig)

    def validate(self) -> None:
        if self.beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {self.beam_size}")
        if self.objective_weight is not None and self.objective_weight < 0:
            raise ValueError(f"objective_weight must be >= 0 (or null: chosen on validation), got "
                             f"{self.objective_weight}")
