"""What the trained baselines share: config access, item features, mini-batching, and early stopping.

Early stopping is part of the protocol (`e2erec.eval.stopping`, the one rule every system of a report trains under):
after every epoch a baseline is scored on the validation targets, the best epoch's weights are kept, and training
stops after `eval.patience` epochs without improvement, at `eval.baseline_epochs`, or when its time budget is spent.
Test numbers then come from the best-validation weights, never from the last epoch.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from e2erec.data.types import Interactions, Split
from e2erec.errors import DataError
from e2erec.eval.config import EvalConfig
from e2erec.eval.metrics import hit_rate, ndcg, reciprocal_rank, target_ranks
from e2erec.eval.stopping import FitLog, StoppingRule, training_flops

log = logging.getLogger(__name__)


def select_score(recs: np.ndarray, targets_items: np.ndarray, metric: str) -> float:
    """The validation metric named by `eval.select_metric` (e.g. 'ndcg@10'), averaged over targets."""
    ranks = target_ranks(recs, targets_items)
    name, _, cut = metric.partition("@")
    k = int(cut) if cut else recs.shape[1]
    if name == "ndcg":
        return float(ndcg(ranks, k).mean())
    if name in ("hr", "recall"):
        return float(hit_rate(ranks, k).mean())
    return float(reciprocal_rank(ranks).mean())


def baseline_rule(protocol: EvalConfig, budget_s: float = 0.0) -> StoppingRule:
    """The protocol's early-stopping rule for one baseline stage: `eval.patience` epochs without a better validation
    score, at most `eval.baseline_epochs` epochs, and `budget_s` of wall time (0 = none)."""
    return StoppingRule(patience=protocol.patience, max_evals=protocol.baseline_epochs, time_budget_s=budget_s)


def fit_early_stopping(
    module: nn.Module,
    train_epoch: Callable[[int], float],
    validate: Callable[[], float],
    rule: StoppingRule,
    metric: str,
    higher_is_better: bool = True,
    name: str = "",
) -> FitLog:
    """Run epochs under `rule` (see `e2erec.eval.stopping`), then restore the best epoch's weights."""
    fit_log = rule.start(metric, higher_is_better)
    best_state = None
    while True:
        epoch = len(fit_log.valid) + 1
        t0, c0 = time.perf_counter(), time.process_time()
        module.train()
        loss = train_epoch(epoch)
        module.eval()
        with torch.no_grad():
            score = validate()
        if fit_log.record(score, loss, time.perf_counter() - t0, time.process_time() - c0):
            best_state = copy.deepcopy(module.state_dict())
        log.info("%s epoch %d: loss %.4f, valid %s %.4f (%.1fs, %.1fs CPU)", name, epoch, loss, metric, score,
                 fit_log.seconds[-1], fit_log.cpu_seconds[-1])
        if reason := fit_log.check():
            log.info("%s: stopped (%s) after %d epochs; keeping epoch %d", name, reason, epoch, fit_log.best_epoch)
            break
    if best_state is not None:
        module.load_state_dict(best_state)
    module.eval()
    return fit_log


def step_flops(module: nn.Module, loss_of: Callable[[np.ndarray], tuple[torch.Tensor, int]], idx: np.ndarray) -> float:
    """Measured training FLOPs per example of one batch: `loss_of(idx) -> (mean loss, examples)` forward + backward.
    Gradients are cleared afterwards and the module's mode is restored."""
    was_training = module.training
    module.train()
    examples = []

    def step() -> None:
        loss, count = loss_of(idx)
        examples.append(count)
        loss.backward()

    flops = training_flops(step)
    module.zero_grad(set_to_none=True)
    module.train(was_training)
    return flops / max(int(examples[0]), 1)


def count_params(*modules: nn.Module) -> int:
    """Distinct trainable parameters of `modules` (shared tables counted once)."""
    seen = {id(p): p for m in modules for p in m.parameters() if p.requires_grad}
    return sum(p.numel() for p in seen.values())


def batches(n: int, batch_size: int, rng: np.random.Generator | None = None):
    """Index arrays covering range(n) in chunks; shuffled when `rng` is given."""
    order = rng.permutation(n) if rng is not None else np.arange(n)
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]


def train_epoch_over(opt: torch.optim.Optimizer, n: int, batch_size: int, rng: np.random.Generator, desc: str,
                     loss_of: Callable[[np.ndarray], tuple[torch.Tensor, int]]) -> float:
    """One shuffled pass over range(n) in batches: `loss_of(indices) -> (mean loss, count)`, one optimizer step per
    batch; returns the count-weighted mean loss (what `fit_early_stopping` logs per epoch)."""
    from tqdm.auto import tqdm

    total, seen = 0.0, 0
    for idx in tqdm(list(batches(n, batch_size, rng)), desc=desc, leave=False, disable=None):
        loss, count = loss_of(idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total, seen = total + loss.item() * count, seen + count
    return total / max(seen, 1)


def category_matrix(inter: Interactions) -> torch.Tensor:
    """Multi-hot item categories, rows normalised to sum 1: float32 [n_items, n_categories] (0 columns if none)."""
    names = sorted({c for cats in inter.items.categories for c in cats})
    index = {c: j for j, c in enumerate(names)}
    m = np.zeros((inter.n_items, len(names)), dtype=np.float32)
    for i, cats in enumerate(inter.items.categories):
        for c in cats:
            m[i, index[c]] = 1.0
    m /= np.maximum(m.sum(axis=1, keepdims=True), 1.0)
    return torch.from_numpy(m)


def _with_zero_row(m: torch.Tensor) -> torch.Tensor:
    """(n, d) -> (n + 1, d): the padding item's features are zeros."""
    return torch.cat([m, torch.zeros(1, m.shape[1])])


class ItemEncoder(nn.Module):
    """Item vectors = ID embedding + projected categories (+ projected frozen text embedding, for the plugin).

    Index `n_items` is the padding item (a zero vector, no features): history windows padded with -1 map to it.
    """

    def __init__(self, n_items: int, dim: int, categories: torch.Tensor, text: torch.Tensor | None = None):
        super().__init__()
        self.n_items = n_items
        self.id = nn.Embedding(n_items + 1, dim, padding_idx=n_items)
        nn.init.normal_(self.id.weight, std=dim**-0.5)
        with torch.no_grad():
            self.id.weight[n_items].zero_()
        self.register_buffer("categories", _with_zero_row(categories), persistent=False)
        self.cat_proj = nn.Linear(categories.shape[1], dim, bias=False) if categories.shape[1] else None
        if text is not None:
            text = nn.functional.normalize(text.float(), dim=-1)
            self.register_buffer("text", _with_zero_row(text), persistent=False)
            self.text_proj = nn.Linear(text.shape[1], dim, bias=False)
        else:
            self.text, self.text_proj = None, None

    def table(self, ids: torch.Tensor) -> torch.Tensor:
        """Vectors of item ids in [0, n_items] (n_items = padding, a zero vector): (len(ids), dim)."""
        out = self.id(ids)
        if self.cat_proj is not None:
            out = out + self.cat_proj(self.categories[ids])
        if self.text_proj is not None:
            out = out + self.text_proj(self.text[ids])
        return out

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        """items: int64 of any shape with -1 as padding -> (*items.shape, dim).

        The feature projections run once per distinct item of the call, not once per position: a batch of 2,048
        histories x 50 events names at most the catalogue, and the plugin's 384-d text projection dominated the
        ranker's step when it ran per position."""
        idx = torch.where(items < 0, torch.full_like(items, self.n_items), items)
        distinct, inverse = torch.unique(idx, return_inverse=True)
        return self.table(distinct)[inverse]

    def all_items(self) -> torch.Tensor:
        return self.table(torch.arange(self.n_items))  # (n_items, dim)


def seed_everything(seed: int, threads: int) -> np.random.Generator:
    torch.manual_seed(seed)
    torch.set_num_threads(max(1, threads))
    return np.random.default_rng(seed)


def split_valid_targets(split: Split) -> np.ndarray:
    if len(split.valid) == 0:
        raise DataError("the split has no validation targets: early stopping needs them (use leave_one_out or "
                         "a temporal split with temporal_valid_frac > 0)")
    return split.valid
