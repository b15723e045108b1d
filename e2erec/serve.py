"""The request-level API a service wraps: one call, `recommend(user_history, instructions) -> items + scores`.

    from e2erec.serve import Recommender

    rec = Recommender.load("runs/default/export")
    for r in rec.recommend(["50", "181", "258"], {"include_categories": ["Comedy"], "min_year": 1995}, k=5):
        print(r.item, r.title, r.categories, r.year, round(r.score, 3), round(r.p_positive, 3))

A history is the dataset's item ids, oldest first, or (item, unix time[, rating]) tuples; without times the events
are a day apart and end now, without ratings every event counts as positive feedback. `instructions` are
`generate.steering` fields (`e2erec/generate/config.py`: windows, topics, item lists, years, exploration,
exclude_seen) plus `objective_weight`, the w of log P(next) + w log P(positive); a key that is not one of them is an
error that names it. The lists come from the same trie-constrained, steered beam search as `e2erec generate`, in
the joint order, so every item is a real catalogue item and the list is full whenever enough items qualify.
`rec.explain(history, [r.item for r in picks])` gives each item's reason (`e2erec.explain`): the history events
that drove it, what its semantic-ID cluster means, the instructions that acted on it, its probability's meaning.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from e2erec.data.types import Interactions
from e2erec.errors import DataError

DEFAULT_WEIGHT = 1.0  # the joint order's w when neither the request nor `choose_weight` sets it (the cascade's rule)


@dataclass(frozen=True)
class Recommendation:
    item: str  # the dataset's item id
    score: float  # the order's score: log P(next) + w log P(positive), steering bonuses included
    p_positive: float  # the calibration head's P(positive feedback | history, item)
    title: str
    categories: list[str]
    year: int  # -1 when unknown


class Recommender:
    """A trained export behind `recommend`: load once, then one call per request (one call at a time: not thread-safe)."""

    def __init__(self, system, inter: Interactions):
        self.system, self.inter = system, inter
        self._index = {raw: i for i, raw in enumerate(inter.items.raw_id)}

    @classmethod
    def load(cls, export_dir: str | Path, device: str = "auto", choose_weight: bool = False) -> Recommender:
        """The export's model, semantic IDs and catalogue. `choose_weight`: pick the joint order's w on the
        validation targets (one beam search over them, as `e2erec eval` does), else w = 1 unless a request sets it."""
        from e2erec.data import make_split
        from e2erec.eval.protocol import FitContext
        from e2erec.generate.system import GenerativeSystem

        system, inter = GenerativeSystem.from_export(export_dir, device=device, rank_by="joint")
        split = make_split(inter, system.cfg.data)  # training popularity: where the long tail starts
        system.calib_weight = DEFAULT_WEIGHT
        if choose_weight:
            system.fit(inter, split, FitContext(system.cfg.eval, system.cfg.baseline))
        return cls(system, inter)

    def recommend(self, user_history: Sequence, instructions: dict | None = None, k: int = 10,
                  now: int | None = None) -> list[Recommendation]:
        """The top-k for one history under the instructions (module docstring), best first."""
        steering, weight = self._instructions(instructions)
        one = self._history(user_history, now)
        system = self.system
        if weight is not None:
            if float(weight) < 0:
                raise DataError(f"instructions: objective_weight must be >= 0, got {weight}")
            system = _with_weight(system, float(weight))
        items, scores = system.generate_for(one, np.zeros(1, np.int64), one.offsets[1:], k, steering)
        picked = items[0][items[0] >= 0]
        p = system.p_positive(one, np.zeros(1, np.int64), one.offsets[1:], picked[None, :])[0]
        table = self.inter.items
        return [Recommendation(table.raw_id[i], float(s), float(q), table.title[i], list(table.categories[i]),
                               int(table.year[i]))
                for i, s, q in zip(picked.tolist(), scores[0][: len(picked)].tolist(), p.tolist())]

    def explain(self, user_history: Sequence, items: Sequence[str], instructions: dict | None = None,
                now: int | None = None):
        """A reason (`e2erec.explain.reasons.Reason`) for each item (the dataset's ids) as a recommendation after
        this history under these instructions: the history events that drove it, what its semantic-ID cluster
        means, the instructions that acted on it, and its calibrated probability with its meaning, filtered by
        `generate.explain`'s deny-lists. Usually the items `recommend` returned, in its order."""
        from e2erec.explain import explain_lists
        from e2erec.explain.reasons import probability_meaning

        steering, _ = self._instructions(instructions)
        unknown = [str(i) for i in items if str(i) not in self._index]
        if unknown:
            raise DataError(f"items: item id(s) {unknown[:5]} are not in the catalogue ({len(self._index)} items)")
        one = self._history(user_history, now)
        picked = np.array([[self._index[str(i)] for i in items]], np.int64)
        users, ends = np.zeros(1, np.int64), one.offsets[1:]
        p = self.system.p_positive(one, users, ends, picked)
        # The probability's meaning is the catalogue's (its ratings), not the request's (which may carry none).
        meaning = probability_meaning(self.inter, self.system.cfg.data.positive_threshold)
        return explain_lists(self.system, one, users, ends, picked, p, steering, meaning)[0]

    def _instructions(self, instructions: dict | None):
        """(steering config, objective weight or None) of a request's instructions; a bad key names itself."""
        from e2erec.config import ConfigError, from_dict, to_dict
        from e2erec.generate.config import SteeringConfig

        instructions = dict(instructions or {})
        weight = instructions.pop("objective_weight", None)
        try:
            steering = from_dict(SteeringConfig, {**to_dict(self.system.cfg.generate.steering), **instructions},
                                 source="instructions")
        except ConfigError as e:
            raise DataError(f"instructions: {e}") from None
        return steering, weight

    def _history(self, user_history: Sequence, now: int | None) -> Interactions:
        """A one-user log of the request's history, in the catalogue's item indices."""
        if len(user_history) == 0:
            raise DataError("user_history is empty: the model needs at least one event to read")
        rows = [h if isinstance(h, (tuple, list)) else (h,) for h in user_history]
        unknown = [str(r[0]) for r in rows if str(r[0]) not in self._index]
        if unknown:
            raise DataError(f"user_history: item id(s) {unknown[:5]} are not in the catalogue "
                            f"({len(self._index)} items)")
        n = len(rows)
        end = int(time.time()) if now is None else int(now)
        ts = np.array([int(r[1]) if len(r) > 1 else end - (n - 1 - j) * 86_400 for j, r in enumerate(rows)],
                      np.int64)
        if np.any(np.diff(ts) < 0):
            raise DataError("user_history: events must be oldest first (their times decrease somewhere)")
        threshold = self.system.cfg.data.positive_threshold
        feedback = np.array([float(r[2]) if len(r) > 2 else threshold for r in rows], np.float32)
        return dataclasses.replace(
            self.inter, offsets=np.array([0, n], np.int64),
            item=np.array([self._index[str(r[0])] for r in rows], np.int64), timestamp=ts, feedback=feedback,
            label=(feedback >= threshold).astype(np.int8), user_raw_id=["request"], planted={}, cold=None,
            new_users=None)


def _with_weight(system, weight: float):
    """The same loaded model under another objective weight (a shallow copy: nothing is reloaded)."""
    import copy

    other = copy.copy(system)
    other.cfg = dataclasses.replace(system.cfg, generate=dataclasses.replace(system.cfg.generate,
                                                                             objective_weight=weight))
    return other
