"""The sweep spec (`configs/sweeps/*.yaml`) and its expansion into points: one training run each.

A point is a run config plus overrides. Model sizes are named override lists, so a CPU sweep can span 30x in
parameters with `model.d_model`/`model.n_layers` while a cluster sweep swaps whole model files (`model=1b`)::

    name: cpu
    run_config: default             # configs/run/<name>.yaml, or a path
    overrides: [data.name=synthetic]
    mode: grid                      # grid: sizes x tokens (x lrs); isoflop: sizes x budgets, tokens = C / (6 N)
    sizes:
      - {name: d32l1, overrides: [model.d_model=32, model.n_layers=1]}
      - {name: 1b, overrides: [model=1b], params: 1.0e9}
    tokens: [100000, 300000]

Points are written to `<out_dir>/points.json`; a Slurm array task reads its point from there by index.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from e2erec.config import ConfigError, load_config, load_run_config, parse_overrides


@dataclass
class SizeSpec:
    name: str = ""
    overrides: list[str] = field(default_factory=list)  # e.g. [model.d_model=64, model.n_layers=2] or [model=1b]
    params: float = 0.0  # N as counted by param_key, if known; isoflop mode estimates it from the config otherwise


@dataclass
class SweepSpec:
    name: str = "sweep"
    run_config: str = "default"
    overrides: list[str] = field(default_factory=list)  # applied to every point, before the size's overrides
    out_dir: str = "runs/sweeps/{name}"
    mode: Literal["grid", "isoflop"] = "grid"
    sizes: list[SizeSpec] = field(default_factory=list)
    tokens: list[float] = field(default_factory=list)  # grid: training tokens per run (train.max_tokens)
    lrs: list[float] = field(default_factory=list)  # grid: optional learning rates (train.lr); empty = config's
    budgets: list[float] = field(default_factory=list)  # isoflop: compute budgets in FLOPs (C = 6 N D)
    min_tokens: float = 0.0  # isoflop: skip a (size, budget) whose D = C / (6 N) falls outside [min, max]
    max_tokens: float = float("inf")
    param_key: Literal["non_embedding_params", "params"] = "non_embedding_params"  # N in the fits (Kaplan et al.)
    target_compute: float = 0.0  # report the compute-optimal N and D at this budget (0: 10x the largest run)
    bootstrap: int = 100  # resamples for the fits' confidence intervals
    parallel: int = 1  # local points run at once
    # Slurm: `e2erec sweep --slurm` submits slurm/sweep_array.sbatch with these sbatch options (e.g. --partition=gpu).
    sbatch_args: list[str] = field(default_factory=list)
    max_concurrent: int = 0  # array throttle (`--array=...%N`); 0 = no limit

    @property
    def root(self) -> Path:
        return Path(self.out_dir.format(name=self.name))

    def validate(self) -> None:
        if not self.sizes:
            raise ValueError("sizes: give at least one model size")
        names = [s.name for s in self.sizes]
        for s in self.sizes:
            if not re.fullmatch(r"[A-Za-z0-9_.-]+", s.name):
                raise ValueError(f"sizes: name {s.name!r} must be non-empty letters, digits, '_', '-' or '.'")
        if len(set(names)) != len(names):
            raise ValueError(f"sizes: names must be unique, got {names}")
        if self.mode == "grid" and not self.tokens:
            raise ValueError("tokens: a grid sweep needs at least one token count")
        if self.mode == "isoflop" and not self.budgets:
            raise ValueError("budgets: an isoflop sweep needs at least one compute budget")
        if any(t <= 0 for t in self.tokens) or any(c <= 0 for c in self.budgets) or any(lr <= 0 for lr in self.lrs):
            raise ValueError("tokens, budgets and lrs must be positive")
        if self.parallel < 1:
            raise ValueError(f"parallel must be >= 1, got {self.parallel}")


@dataclass
class Point:
    index: int
    id: str
    size: str
    tokens: int
    lr: float | None
    overrides: list[str]  # the complete override list for `e2erec train`
    run_dir: str

    def train_argv(self, run_config: str) -> list[str]:
        return ["train", "--config", run_config, *self.overrides]


def load_spec(path: str | Path, overrides: list[str] | None = None) -> SweepSpec:
    return load_config(SweepSpec, path, overrides)


def estimate_params(run_config: str, overrides: list[str]) -> float:
    """Non-embedding parameters of a pre-norm transformer with a SwiGLU MLP: n_layers (4 + 3 ffn_mult) d_model^2.

    Attention has 4 d^2 (q, k, v, out), the SwiGLU MLP 3 d (ffn_mult d) (Kaplan et al. 2020 count 12 d^2 per layer
    for a 4d GELU MLP; 4 + 3 * 8/3 gives the same). Used only to choose D = C / (6 N) for isoFLOP points before
    training; the fits use the counts the trainer reports.
    """
    model = load_run_config(run_config, overrides).model
    return float(model.n_layers * (4 + 3 * model.ffn_mult) * model.d_model**2)


def _fmt(x: float) -> str:
    """3 significant digits, short exponent: 2048 -> '2.05e3', 3e-4 -> '0.0003'."""
    return f"{x:.3g}".replace("e+0", "e").replace("e+", "e")


def expand(spec: SweepSpec) -> list[Point]:
    """The sweep's points in a stable order (sizes outermost), each with its own run folder under `<root>/points/`."""
    combos: list[tuple[SizeSpec, int, float | None]] = []
    for size in spec.sizes:
        if spec.mode == "grid":
            for tokens in spec.tokens:
                for lr in spec.lrs or [None]:
                    combos.append((size, int(tokens), lr))
        else:
            base = [*spec.overrides, *size.overrides]
            n = size.params or estimate_params(spec.run_config, base)
            for budget in spec.budgets:
                tokens = budget / (6.0 * n)
                if spec.min_tokens <= tokens <= spec.max_tokens:
                    combos.append((size, int(tokens), None))
    points = []
    for i, (size, tokens, lr) in enumerate(combos):
        pid = f"{size.name}_t{_fmt(tokens)}" + (f"_lr{_fmt(lr)}" if lr is not None else "")
        run_dir = str((spec.root / "points" / pid).resolve())
        # max_steps=0: the token budget alone stops the run (and spans its LR schedule), whatever the run config says.
        overrides = [*spec.overrides, *size.overrides, "train.max_steps=0", f"train.max_tokens={tokens}"]
        if lr is not None:
            overrides.append(f"train.lr={lr}")
        # Last, so a spec cannot route two points into one folder; resume=auto continues a killed point.
        overrides += [f"name={pid}", f"out_dir={run_dir}", "train.resume=auto"]
        parse_overrides(overrides)  # fail here, naming the bad override, not in the 10th training run
        points.append(Point(index=i, id=pid, size=size.name, tokens=tokens, lr=lr, overrides=overrides, run_dir=run_dir))
    if len({p.id for p in points}) != len(points):
        raise ConfigError(f"{spec.name}: two points got the same id: make token counts / learning rates distinct at 3 significant digits")
    return points
