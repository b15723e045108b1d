"""Scaling-law fits: the Chinchilla parametric loss L(N, D) and the compute frontier L(C).

Both laws are sums of power laws plus a constant, fitted the way Hoffmann et al. (2022, "Training Compute-Optimal
Large Language Models", Approach 3 and its appendix D.2) fit theirs: in log space, through a log-sum-exp, with a Huber
loss on the residuals, by L-BFGS started from a grid of initialisations::

    L(N, D) = E + A / N^alpha + B / D^beta
    log L  = LSE(a - alpha log N,  b - beta log D,  e),      A = exp(a), B = exp(b), E = exp(e)
    min  sum_i Huber_delta( LSE_i - log L_i ),                delta = 1e-3

The same machinery fits L(C) = a C^(-b) + c along the compute frontier (one power-law term). The Huber loss keeps a
few noisy points from dominating; the log-space residual weighs small and large models equally.

Compute-optimal allocation under C ≈ 6 N D (Hoffmann et al. eq. 4)::

    N_opt(C) = G (C/6)^(beta/(alpha+beta)),  D_opt(C) = G^-1 (C/6)^(alpha/(alpha+beta)),  G = (alpha A / (beta B))^(1/(alpha+beta))
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy.optimize import minimize

HUBER_DELTA = 1e-3  # Hoffmann et al. D.2
N_STARTS = 8  # L-BFGS runs from the best grid points; more starts changed no fit in tests/sweep/test_fit.py


# ----------------------------------------------------------------------------------------------------------------
# The generic fit: log L = LSE_k(a_k - alpha_k x_k, e), x_k = log of the k-th variable


def logsumexp(t: np.ndarray, axis: int) -> np.ndarray:
    """log(sum(exp(t))) along `axis`, stabilised by the max (scipy's version costs ~0.8 ms a call in overhead)."""
    m = t.max(axis=axis, keepdims=True)
    return np.squeeze(m, axis) + np.log(np.exp(t - m).sum(axis=axis))


def _huber(r: np.ndarray, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """Huber loss and its derivative, elementwise; delta = inf is the squared error."""
    if not np.isfinite(delta):
        return 0.5 * r * r, r
    small = np.abs(r) <= delta
    loss = np.where(small, 0.5 * r * r, delta * (np.abs(r) - 0.5 * delta))
    grad = np.where(small, r, delta * np.sign(r))
    return loss, grad


def _objective(theta: np.ndarray, x: np.ndarray, y: np.ndarray, delta: float) -> tuple[float, np.ndarray]:
    """Huber loss of the log-space residuals and its gradient.

    theta = [a_1..a_K, alpha_1..alpha_K, e]; x: (n, K) log-variables; y: (n,) log-losses.
    """
    k = x.shape[1]
    a, alpha, e = theta[:k], theta[k : 2 * k], theta[2 * k]
    terms = np.concatenate([a[None, :] - alpha[None, :] * x, np.full((len(y), 1), e)], axis=1)  # (n, K+1)
    pred = logsumexp(terms, axis=1)  # (n,)
    loss, dloss = _huber(pred - y, delta)
    w = np.exp(terms - pred[:, None]) * dloss[:, None]  # d loss / d term, (n, K+1)
    grad = np.concatenate([w[:, :k].sum(0), -(w[:, :k] * x).sum(0), [w[:, k].sum()]])
    return float(loss.sum()), grad


def _init_grid(k: int, y: np.ndarray) -> np.ndarray:
    """Hoffmann et al.'s grid over exponents {0, 0.5, ..., 2} and e; coefficients on the scale of the data.

    Coefficients are for centred log-variables (see `_fit_lse`), where exp(a_k) is term k's share of the loss at the
    centre of the data: so the grid spans the observed log-losses whatever the units of N, D or C.
    """
    exps = np.arange(0.0, 2.01, 0.5)
    es = np.linspace(float(np.min(y)) - 2.0, float(np.min(y)), 5)
    coefs = np.linspace(float(np.min(y)) - 4.0, float(np.max(y)), 6)
    rows = [list(c) + list(p) + [e] for c in itertools.product(coefs, repeat=k) for p in itertools.product(exps, repeat=k) for e in es]
    return np.asarray(rows)


def _fit_lse(x: np.ndarray, y: np.ndarray, delta: float = HUBER_DELTA, starts: int = N_STARTS,
             init: np.ndarray | None = None) -> np.ndarray:
    """Best theta over L-BFGS runs from the `starts` lowest-objective grid points (the whole grid evaluated at once).

    The log-variables are centred first (a shift of x_k only moves a_k: a_k - alpha_k (x_k + m) = (a_k - alpha_k m) -
    alpha_k x_k), which makes one grid fit any units. Each run first minimises the squared error (smooth, so L-BFGS
    gets near the basin), then the Huber loss: started cold on the Huber loss, whose gradient is flat outside
    +-delta, L-BFGS stopped in poor local minima on a third of bootstrap resamples.
    With `init` (uncentred theta, e.g. the full-data fit for a bootstrap resample), that is the only start.
    """
    k = x.shape[1]
    m = x.mean(0)
    xc = x - m  # (n, K)
    bounds = [(None, None)] * k + [(0.0, 5.0)] * k + [(None, None)]
    if init is None:
        grid = _init_grid(k, y)
        a, alpha, e = grid[:, :k], grid[:, k : 2 * k], grid[:, 2 * k]
        e3 = np.broadcast_to(e[:, None, None], (len(grid), len(y), 1))
        pred = logsumexp(np.concatenate([a[:, None, :] - alpha[:, None, :] * xc[None], e3], axis=2), axis=2)  # (grid, n)
        inits = grid[np.argsort(_huber(pred - y[None], delta)[0].sum(1))[:starts]]
    else:
        inits = init[None].copy()
        inits[:, :k] -= init[k : 2 * k] * m  # to centred coefficients
    best, best_loss = None, np.inf
    for theta in inits:
        for dl in (np.inf, delta):
            res = minimize(_objective, theta, args=(xc, y, dl), jac=True, method="L-BFGS-B", bounds=bounds,
                           options={"maxiter": 1000})
            theta = res.x
        if res.fun < best_loss:
            best, best_loss = res.x, res.fun
    best = best.copy()
    best[:k] += best[k : 2 * k] * m  # back to uncentred coefficients
    return best


def _r2(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    ss_tot = float(np.sum((y_true - y_true.mean()) ** 2))
    return 1.0 - float(np.sum((y_true - y_pred) ** 2)) / ss_tot if ss_tot > 0 else float("nan")


def _interval(samples: list[float]) -> list[float]:
    """95% percentile bootstrap interval."""
    arr = np.asarray([s for s in samples if np.isfinite(s)])
    return [float(np.percentile(arr, 2.5)), float(np.percentile(arr, 97.5))] if len(arr) else [float("nan")] * 2


# ----------------------------------------------------------------------------------------------------------------
# L(N, D)


@dataclass
class ChinchillaFit:
    """L(N, D) = E + A / N^alpha + B / D^beta, with 95% bootstrap intervals (`ci`) and fit quality."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float
    r2: float = float("nan")  # on the losses themselves
    n_points: int = 0
    ci: dict[str, list[float]] = field(default_factory=dict)

    def predict(self, n, d) -> np.ndarray:
        return self.E + self.A / np.asarray(n, float) ** self.alpha + self.B / np.asarray(d, float) ** self.beta

    def optimal_allocation(self, compute: float) -> tuple[float, float]:
        """(N_opt, D_opt) minimising L under C = 6 N D (Hoffmann et al. eq. 4)."""
        s = self.alpha + self.beta
        g = (self.alpha * self.A / (self.beta * self.B)) ** (1.0 / s)
        n_opt = g * (compute / 6.0) ** (self.beta / s)
        return float(n_opt), float(compute / 6.0 / n_opt)

    def to_dict(self) -> dict:
        return asdict(self)


def _chinchilla_from_theta(theta: np.ndarray) -> ChinchillaFit:
    a, b, alpha, beta, e = theta
    return ChinchillaFit(E=float(np.exp(e)), A=float(np.exp(a)), B=float(np.exp(b)), alpha=float(alpha), beta=float(beta))


def fit_chinchilla(n, d, loss, *, bootstrap: int = 100, seed: int = 0, target_compute: float | None = None) -> ChinchillaFit:
    """Fit L(N, D) to points (N parameters, D training tokens, final loss); bootstrap over points for intervals.

    With `target_compute`, the intervals also cover the compute-optimal N_opt and D_opt at that budget.
    Each resample is fitted by one L-BFGS run started from the full-data fit rather than from the grid (a resample
    lies near the data; the grid search would cost N_STARTS times more per resample).
    """
    n, d, loss = (np.asarray(v, dtype=float) for v in (n, d, loss))
    if len(loss) < 6 or len(np.unique(n)) < 2 or len(np.unique(d)) < 2:
        raise ValueError(f"L(N, D) has 5 parameters: need >= 6 points over >= 2 sizes and >= 2 token counts, got {len(loss)}")
    x = np.stack([np.log(n), np.log(d)], axis=1)  # (points, 2)
    theta = _fit_lse(x, np.log(loss))
    fit = _chinchilla_from_theta(theta)
    fit.r2 = _r2(loss, fit.predict(n, d))
    fit.n_points = len(loss)
    rng = np.random.default_rng(seed)
    keys = ["E", "A", "B", "alpha", "beta"] + (["n_opt", "d_opt"] if target_compute else [])
    samples: dict[str, list[float]] = {k: [] for k in keys}
    for _ in range(bootstrap):
        idx = rng.integers(0, len(loss), len(loss))
        if len(np.unique(n[idx])) < 2 or len(np.unique(d[idx])) < 2:
            continue  # a resample without two sizes or two token counts cannot identify the law
        b = _chinchilla_from_theta(_fit_lse(x[idx], np.log(loss[idx]), init=theta))
        for k in ["E", "A", "B", "alpha", "beta"]:
            samples[k].append(getattr(b, k))
        if target_compute:
            n_opt, d_opt = b.optimal_allocation(target_compute)
            samples["n_opt"].append(n_opt)
            samples["d_opt"].append(d_opt)
    if bootstrap:
        fit.ci = {k: _interval(v) for k, v in samples.items()}
    return fit


# ----------------------------------------------------------------------------------------------------------------
# L(C) along the compute frontier


@dataclass
class ComputeFit:
    """L(C) = a C^(-b) + c fitted on the compute-frontier points, with 95% bootstrap intervals."""

    a: float
    b: float
    c: float
    r2: float = float("nan")
    n_points: int = 0
    ci: dict[str, list[float]] = field(default_factory=dict)

    def predict(self, compute) -> np.ndarray:
        return self.a * np.asarray(compute, float) ** (-self.b) + self.c

    def to_dict(self) -> dict:
        return asdict(self)


def compute_frontier(compute, loss) -> np.ndarray:
    """Indices of the points no cheaper-or-equal point beats: the lower envelope of loss over compute, by compute."""
    compute, loss = np.asarray(compute, float), np.asarray(loss, float)
    order = np.lexsort((loss, compute))
    keep, best = [], np.inf
    for i in order:
        if loss[i] < best:
            keep.append(int(i))
            best = loss[i]
    return np.asarray(keep, dtype=int)


def _compute_from_theta(theta: np.ndarray) -> ComputeFit:
    a, b, c = theta
    return ComputeFit(a=float(np.exp(a)), b=float(b), c=float(np.exp(c)))


def fit_compute(compute, loss, *, bootstrap: int = 100, seed: int = 0) -> ComputeFit:
    """Fit L(C) = a C^-b + c to (compute, loss) points (pass the frontier); bootstrap over points for intervals."""
    compute, loss = np.asarray(compute, float), np.asarray(loss, float)
    if len(loss) < 4:
        raise ValueError(f"L(C) has 3 parameters: need >= 4 frontier points, got {len(loss)}")
    x = np.log(compute)[:, None]  # (points, 1)
    theta = _fit_lse(x, np.log(loss))
    fit = _compute_from_theta(theta)
    fit.r2 = _r2(loss, fit.predict(compute))
    fit.n_points = len(loss)
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = {"a": [], "b": [], "c": []}
    for _ in range(bootstrap):
        idx = rng.integers(0, len(loss), len(loss))
        if len(np.unique(compute[idx])) < 3:
            continue
        b = _compute_from_theta(_fit_lse(x[idx], np.log(loss[idx]), init=theta))
        for k, v in samples.items():
            v.append(getattr(b, k))
    if bootstrap:
        fit.ci = {k: _interval(v) for k, v in samples.items()}
    return fit


# ----------------------------------------------------------------------------------------------------------------
# Checks


def holdout_check(n, d, loss) -> dict:
    """Fit L(N, D) on all but the largest size and predict the largest: the test a scaling law exists for.

    Returns the per-point predictions and the mean / max absolute relative error on the held-out size.
    """
    n, d, loss = (np.asarray(v, dtype=float) for v in (n, d, loss))
    largest = n.max()
    train = n < largest
    fit = fit_chinchilla(n[train], d[train], loss[train], bootstrap=0)
    pred = fit.predict(n[~train], d[~train])
    rel = np.abs(pred - loss[~train]) / loss[~train]
    return {
        "held_out_params": float(largest),
        "fit_points": int(train.sum()),
        "points": [{"tokens": float(dd), "loss": float(ll), "predicted": float(pp)} for dd, ll, pp in zip(d[~train], loss[~train], pred)],
        "mean_abs_rel_error": float(rel.mean()),
        "max_abs_rel_error": float(rel.max()),
    }


def isoflop_minima(n, compute, loss, *, budgets) -> list[dict]:
    """Hoffmann et al. Approach 2: per compute budget, a parabola in log N through the losses; its vertex is N_opt(C).

    Points are assigned to the nearest budget in log space; budgets with fewer than 3 sizes are skipped.
    """
    n, compute, loss = (np.asarray(v, dtype=float) for v in (n, compute, loss))
    budgets = np.asarray(budgets, float)
    nearest = np.abs(np.log(compute)[:, None] - np.log(budgets)[None, :]).argmin(1)  # (points,)
    out = []
    for j, c in enumerate(budgets):
        sel = nearest == j
        if len(np.unique(n[sel])) < 3:
            continue
        p = np.polyfit(np.log(n[sel]), loss[sel], 2)
        if p[0] <= 0:
            continue  # no minimum inside: the profile is monotone over these sizes
        log_n_opt = -p[1] / (2 * p[0])
        out.append({"compute": float(c), "n_opt": float(np.exp(log_n_opt)), "loss_min": float(np.polyval(p, log_n_opt))})
    return out
