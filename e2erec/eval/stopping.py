"""The protocol's one early-stopping rule, shared by every trained system of a report.

Every trained stage — SASRec, the two-tower retrieval and the DIN ranker of both cascades, and the end-to-end model —
is scored on the validation targets after each epoch (baselines) or each `train.eval_every` steps (the end-to-end
model), keeps its best-scoring weights, and stops for the first of three reasons:

- ``converged``: `patience` evaluations in a row brought no better validation score;
- ``max_epochs`` / ``max_steps``: the cap on epochs (or steps) was reached while the score was still improving
  (within the last `patience` evaluations), i.e. the stage had *not* converged — the report says so;
- ``budget``: its share of the wall-clock budget was spent, likewise before converging.

Test numbers always come from the kept (best-validation) weights. The rule is one object (`StoppingRule`); the
record of one stage's run under it is a `FitLog`, which the report's training section reads.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

STOP_REASONS = ("converged", "max_epochs", "max_steps", "budget")


@dataclass(frozen=True)
class StoppingRule:
    """Stop after `patience` evaluations without a better validation score, at `max_evals` evaluations, or when
    `time_budget_s` (> 0) of wall time is spent, whichever comes first."""

    patience: int
    max_evals: int
    time_budget_s: float = 0.0

    def __post_init__(self):
        if self.patience < 1 or self.max_evals < 1:
            raise ValueError(f"patience and max_evals must be >= 1, got {self.patience} and {self.max_evals}")

    def with_budget(self, seconds: float) -> StoppingRule:
        return StoppingRule(self.patience, self.max_evals, max(float(seconds), 0.0))

    def start(self, metric: str, higher_is_better: bool, unit: str = "epoch") -> FitLog:
        """A fresh record for one stage trained under this rule."""
        return FitLog(metric=metric, higher_is_better=higher_is_better, unit=unit, patience=self.patience,
                      max_evals=self.max_evals, time_budget_s=self.time_budget_s)


@dataclass
class FitLog:
    """One stage's validation scores under a `StoppingRule`; `best_epoch` is the 1-based index of the kept
    evaluation (an epoch for the baselines)."""

    metric: str
    higher_is_better: bool
    unit: str = "epoch"  # what one evaluation follows: "epoch", or e.g. "100 steps"
    patience: int = 1
    max_evals: int = 1
    time_budget_s: float = 0.0
    valid: list[float] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)  # wall clock per evaluation interval, validation included
    cpu_seconds: list[float] = field(default_factory=list)  # process CPU time per interval (robust to a busy machine)
    best_epoch: int = 0
    best_value: float | None = None
    stop_reason: str = ""
    wall_s: float = 0.0
    # Filled by the stage that owns the record (`describe`): what the report's training section prints.
    params: int = 0
    flops_per_example: float = 0.0  # training FLOPs (forward + backward) per training example, measured
    examples_per_epoch: int = 0
    example: str = ""  # what one training example is, e.g. "next-item target"
    _t0: float = field(default_factory=time.perf_counter, repr=False)

    @property
    def stale(self) -> int:
        """Evaluations since the best one."""
        return len(self.valid) - self.best_epoch

    def record(self, score: float, loss: float = math.nan, seconds: float = 0.0, cpu_seconds: float = 0.0) -> bool:
        """Add one evaluation; True when it is the best so far (its weights are then the ones to keep)."""
        self.valid.append(float(score))
        self.loss.append(float(loss))
        self.seconds.append(float(seconds))
        self.cpu_seconds.append(float(cpu_seconds))
        better = math.isfinite(score) and (
            self.best_value is None or (score > self.best_value if self.higher_is_better else score < self.best_value))
        if better:
            self.best_epoch, self.best_value = len(self.valid), float(score)
        return better

    def check(self, elapsed_s: float | None = None, cap_reason: str = "max_epochs") -> str | None:
        """The reason to stop now, or None: converged (patience spent), the evaluation cap, or the time budget
        (`elapsed_s`, default the wall time since this record was started). Sets `stop_reason` and `wall_s`."""
        elapsed = time.perf_counter() - self._t0 if elapsed_s is None else elapsed_s
        reason = None
        if self.valid and self.stale >= self.patience:
            reason = "converged"
        elif len(self.valid) >= self.max_evals:
            reason = cap_reason
        elif self.time_budget_s > 0 and elapsed >= self.time_budget_s:
            reason = "budget"
        if reason:
            self.stop_reason, self.wall_s = reason, elapsed
        return reason

    def finish(self, reason: str, elapsed_s: float | None = None) -> None:
        """Stopped from outside the rule (e.g. a preemption or the training run's own limits)."""
        self.stop_reason = reason
        self.wall_s = time.perf_counter() - self._t0 if elapsed_s is None else elapsed_s

    def describe(self, params: int, flops_per_example: float, examples_per_epoch: int, example: str) -> None:
        self.params, self.flops_per_example = int(params), float(flops_per_example)
        self.examples_per_epoch, self.example = int(examples_per_epoch), example

    @property
    def converged(self) -> bool:
        return self.stop_reason == "converged"

    def to_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if not k.startswith("_")}
        d["train_loss"], d["epoch_seconds"], d["epoch_cpu_seconds"] = d.pop("loss"), d.pop("seconds"), d.pop(
            "cpu_seconds")
        return d

    @classmethod
    def from_dict(cls, d: dict) -> FitLog:
        d = dict(d)
        d["loss"], d["seconds"], d["cpu_seconds"] = (d.pop("train_loss", []), d.pop("epoch_seconds", []),
                                                     d.pop("epoch_cpu_seconds", []))
        known = set(cls.__dataclass_fields__) - {"_t0"}
        return cls(**{k: v for k, v in d.items() if k in known})


def training_flops(step) -> float:
    """Measured FLOPs of one call of ``step()`` (a loss forward and its backward, for training FLOPs): torch's FLOP
    counter over every matmul-like op, so no per-model formula can drift from the model."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return float(counter.get_total_flops())
