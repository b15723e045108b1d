"""Post-hoc calibration of the calibration head: Platt scaling fitted on validation targets after training.

    P(positive | history, item) = sigmoid(a * logit + b)

The head is trained with BCE on each user's last few events for many epochs (the generative head needs them), so by
the end it has memorised those labels and is over-confident on new ones: on MovieLens-100K its raw validation
LogLoss climbs above the base rate's while the training BCE falls towards zero. Rescaling the logit keeps the order
(AUC is unchanged) and restores probabilities (Platt 1999; Guo et al. 2017, "On Calibration of Modern Neural
Networks", where one temperature fixed most of the miscalibration of deep classifiers). Two parameters fitted on
hundreds of validation labels cannot overfit them the way the head did; the test split is never used.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

MIN_TARGETS = 20  # fewer labelled validation targets than this: keep the identity (a, b) = (1, 0)


def fit_platt(logits: torch.Tensor, labels: torch.Tensor, max_iter: int = 200) -> tuple[float, float]:
    """(a, b) minimising the mean BCE of sigmoid(a * logit + b) against 0/1 labels (float64 L-BFGS from (1, 0)).

    Returns the identity when there are fewer than MIN_TARGETS labels or only one class (nothing to fit; with one
    class the optimum is at infinity)."""
    x = torch.as_tensor(logits, dtype=torch.float64).flatten()
    y = torch.as_tensor(labels, dtype=torch.float64).flatten()
    if x.numel() != y.numel():
        raise ValueError(f"logits ({x.numel()}) and labels ({y.numel()}) differ in length")
    if x.numel() < MIN_TARGETS or bool((y == y[0]).all()):
        return 1.0, 0.0
    params = torch.tensor([1.0, 0.0], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([params], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(params[0] * x + params[1], y)
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    a, b = params.detach().tolist()
    return float(a), float(b)

