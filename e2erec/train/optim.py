"""AdamW with decoupled weight decay on matrices only, and the warmup + cosine learning-rate schedule."""

from __future__ import annotations

import math

import torch

from e2erec.train.config import TrainConfig


class SkippableAdamW(torch.optim.AdamW):
    """AdamW whose next `step()` can be turned into a no-op, so a step with a NaN/inf loss leaves the parameters and
    the moments untouched under every ZeRO stage: ZeRO wraps this optimizer and calls its `step()` (once per
    parameter sub-group under ZeRO-3), so skipping here is the one place that works for all of them."""

    skip: bool = False

    def step(self, closure=None):
        if self.skip:
            return None
        return super().step(closure)


def build_optimizer(model: torch.nn.Module, train: TrainConfig) -> SkippableAdamW:
    """Weight decay on >= 2-D weights except embeddings; biases, norms and embeddings are not decayed (GPT-2/nanoGPT)."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 and id(p) not in embeddings else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": train.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # foreach=False: the multi-tensor path reorders float additions and would make CPU and resumed runs drift apart.
    return SkippableAdamW(
        [g for g in groups if g["params"]], lr=train.lr, betas=(train.beta1, train.beta2), foreach=False
    )


def lr_factor(step: int, train: TrainConfig, total_steps: int) -> float:
    """Linear warmup to 1 over `warmup_steps`, then cosine decay to `min_lr_ratio` at `total_steps`:
    f(s) = r + (1 - r) * (1 + cos(pi * (s - w) / (T - w))) / 2 (Loshchilov & Hutter, SGDR, 2017)."""
    w = train.warmup_steps
    if step < w:
        return (step + 1) / w
    if total_steps <= w:
        return 1.0
    progress = min(1.0, (step - w) / (total_steps - w))
    r = train.min_lr_ratio
    return r + (1.0 - r) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, train: TrainConfig, total_steps: int):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, train, total_steps))
