"""A reason under every recommended item, and the filter every reason passes before anyone sees it.

A reason has four parts, each from something the system computed, none written after the fact:
- ``because``: the history events whose removal lowers the item's generation log-probability the most
  (`e2erec.explain.attribution.explain_events`), each with its own weight and the drop of all of them together;
- ``cluster``: what the item's semantic-ID prefix means (`e2erec.tokenizer.describe`), e.g. "Comedy 71% · 1990s 88%";
- ``steering``: which operator instructions acted on the item (a boost, an exploration slot, freshness, ...);
- ``probability``: the calibration head's number with its meaning, "P(rating >= 4) = 0.63".

The filter (`ReasonFilter`): a configurable deny-list of item categories and user attributes (`generate.explain`),
plus the demographics, which are never mentioned whatever the config says. A cited event or a part that would name
a denied term is dropped, never reworded; an item left with nothing to say says so (`NO_REASON`); and every line
that reaches the output is checked against every denied term once more, the fallbacks included.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

import numpy as np

from e2erec.generate.explore import explore_slots
from e2erec.tokenizer.describe import describe, prefix_key

# User attributes no reason may mention, whatever `generate.explain.deny_attributes` says: the model never reads
# them, and platforms' review rules forbid reasons about who the user is.
DEMOGRAPHICS = ("age", "gender", "sex", "occupation", "zip", "zip code", "zip_code", "postcode", "height",
                "weight", "appearance", "race", "ethnicity", "religion", "income", "marital", "nationality")
NO_REASON = "no reason can be shown for this item"
MIN_CLUSTER_ITEMS = 3  # a deeper prefix is described only when it groups at least this many items


@dataclass
class Cause:
    item: str  # the dataset's item id of the history event
    title: str
    when: str  # the event's date, YYYY-MM-DD
    rating: float
    weight: float | None  # the drop of the recommended item's log-probability without this event alone (None: one
    # of the latest events, cited for what they do together, not occluded alone)


@dataclass
class Reason:
    item: str
    title: str
    rank: int
    p_positive: float
    probability: str  # the number with its meaning: "P(rating >= 4) = 0.63"
    because: list[Cause] = field(default_factory=list)
    together: float = 0.0  # the drop without all the cited events at once
    latest: bool = False  # the cited events are the latest ones, which mattered together
    cluster: str = ""
    steering: list[str] = field(default_factory=list)
    text: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


class ReasonFilter:
    """Drops whatever would mention a denied category or user attribute (module docstring)."""

    def __init__(self, deny_categories=(), deny_attributes=()):
        self.categories = {c.lower() for c in deny_categories}
        terms = sorted({t.lower() for t in (*deny_categories, *deny_attributes, *DEMOGRAPHICS)}, key=len,
                       reverse=True)
        self._pattern = re.compile(r"\b(" + "|".join(re.escape(t) for t in terms) + r")\b", re.IGNORECASE)

    def allows(self, text: str) -> bool:
        return self._pattern.search(text or "") is None

    def allows_item(self, categories) -> bool:
        """An item may be named in a reason only when none of its categories is denied."""
        return not any(c.lower() in self.categories for c in categories)

    def apply(self, reason: Reason) -> Reason:
        """The reason with every denied mention dropped, its text rebuilt from what is left."""
        if not all(self.allows(c.title) and self.allows(c.item) for c in reason.because):
            reason.because = []  # the joint drop is the set's: a set with an event taken out is not shown
        if not reason.because:
            reason.together, reason.latest = 0.0, False
        reason.cluster = reason.cluster if self.allows(reason.cluster) else ""
        reason.steering = [s for s in reason.steering if self.allows(s)]
        reason.text = render(reason)
        if not self.allows(reason.text):  # nothing denied may pass, whatever produced it
            reason.because, reason.cluster, reason.steering = [], "", []
            reason.text = render(reason)
        if not self.allows(reason.title):
            reason.title = ""
        return reason


def render(reason: Reason) -> str:
    """One readable line: "because you watched A (+1.2), B (+0.4) · Comedy 71% · boosted · P(rating >= 4) = 0.63"."""
    parts = []
    if reason.because:
        cited = ", ".join(f"{c.title or c.item}" + ("" if c.weight is None else f" ({c.weight:+.2f})")
                          for c in reason.because)
        parts.append(f"because you watched {cited}: without them log P falls by {reason.together:.2f}"
                     + (" (your latest events, together)" if reason.latest else ""))
    if reason.cluster:
        parts.append(f"its cluster: {reason.cluster}")
    parts.extend(reason.steering)
    if not parts:
        parts.append(NO_REASON)
    return " · ".join(parts + [reason.probability])


def probability_meaning(inter, threshold: float) -> str:
    """What the calibration head's number is: P(rating >= t) on rated data, else P(positive feedback)."""
    feedback = np.asarray(inter.feedback)
    if len(feedback) and len(np.unique(feedback[: 1 << 16])) > 2:
        return f"P(rating >= {threshold:g})"
    return "P(positive feedback)"


def cluster_text(prefixes: dict, codes, items: np.ndarray, filt: ReasonFilter, levels: int) -> list[str]:
    """Each item's prefix description: the deepest described prefix that still groups MIN_CLUSTER_ITEMS items
    (else the first), with denied categories left out of it."""
    out = []
    for row in np.asarray(codes)[np.maximum(items, 0)]:
        chosen = prefixes.get(prefix_key(row[:1]))
        for depth in range(2, levels + 1):
            deeper = prefixes.get(prefix_key(row[:depth]))
            if deeper is not None and deeper["n_items"] >= MIN_CLUSTER_ITEMS:
                chosen = deeper
        if chosen is None:
            out.append("")
            continue
        cats = [c for c in chosen["categories"] if filt.allows(c[0])]
        out.append(describe(cats, chosen["decades"]) if cats or chosen["decades"] else "")
    return out


def steering_rules(steering, info, items: np.ndarray, repeated: np.ndarray, explore_share: float,
                   k: int) -> list[list[str]]:
    """Per request, per item: the instructions that acted on it (only those whose condition the item meets);
    `repeated` bool [n, k]: the item is already in the request's history."""
    slots = explore_slots(k, explore_share).numpy() if explore_share > 0 else np.zeros(k, bool)
    pool = None
    if explore_share > 0:
        from e2erec.generate.beam import explore_pool

        pool = explore_pool(steering, info).numpy()
    year = info.year.numpy()
    out = []
    for r, row in enumerate(np.asarray(items)):
        rules_row = []
        for pos, item in enumerate(row.tolist()):
            rules = []
            if item < 0:
                rules_row.append(rules)
                continue
            cats = {info.categories[j] for j in np.flatnonzero(info.multi_hot[item].numpy())}
            if steering.include_categories:
                rules.append(f"within the requested topics ({', '.join(sorted(cats & set(steering.include_categories)))})")
            for name, bonus in steering.boost_categories.items():
                if name in cats:
                    rules.append(f"boosted topic {name} ({bonus:+g})")
            if steering.include_items:
                rules.append("from the requested item list")
            if steering.boost_items and info.raw_id[item] in set(map(str, steering.boost_items)):
                rules.append(f"boosted item ({steering.item_boost:+g})")
            if steering.min_year:
                rules.append(f"released in {year[item]} (>= {steering.min_year})")
            if steering.freshness_weight and year[item] >= 0:
                rules.append(f"freshness bonus (released {year[item]})")
            if slots[pos] and pool is not None and pool[item]:
                where = ", ".join(steering.explore_categories) or "the long tail"
                rules.append(f"exploration slot ({where})")
            if repeated[r, pos] and not steering.exclude_seen:
                rules.append("a repeat of an item in your history")
            if steering.windowed:
                window = (f"your last {steering.history_days:g} days" if steering.history_days else
                          f"your last {steering.history_events} events")
                rules.append(f"read from {window}")
            rules_row.append(rules)
        out.append(rules_row)
    return out
