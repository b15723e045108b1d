"""Quantizers: embeddings float [n, d] -> codes long [n, levels], in torch (CPU or GPU).

* RQ-KMeans (residual k-means, as in OneRec, Deng et al. 2025): level l runs k-means on the residual
  r_l = x - sum_{j<l} c_j[code_j]; k-means++ init (Arthur & Vassilvitskii, 2007) and Lloyd iterations on a sample of
  at most `kmeans_points_per_centroid * K` points, then every item is assigned, optionally with a capacity of
  ceil(n / K) per code (balanced), and the centroids are refitted as the means of their items.
* RQ-VAE (TIGER, Rajput et al. 2023; Zeghidour et al. 2021): MLP encoder -> residual VQ over `levels` codebooks ->
  MLP decoder; loss = ||x - x_hat||^2 + sum_l ||sg[r_l] - e_l||^2 + beta ||r_l - sg[e_l]||^2, straight-through
  gradients, codebooks initialised by RQ-KMeans on the first latents, unused codes restarted on random residuals.
* random: uniform random codes, the control every metric should beat.

Each returns a `Quantized`: the codes, the reconstruction of the input (for the relative error) and the relative
reconstruction error after each level.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from e2erec.errors import DataError
from e2erec.tokenizer.config import RQVAEConfig, TokenizerConfig

# Rows per distance block: a (32768 x 256) float32 block is 32 MiB, small next to the data it streams over.
_CHUNK = 32768


@dataclass
class Quantized:
    codes: torch.Tensor  # long [n, levels]
    reconstruction: torch.Tensor  # float [n, d], in the input space
    level_errors: list[float]  # relative reconstruction error ||x - x_hat_l||^2 / ||x||^2 after each level
    centroids: list[torch.Tensor] = field(default_factory=list)  # RQ-KMeans: per level [K, d]
    info: dict = field(default_factory=dict)


def _sq_norm(x: torch.Tensor) -> float:
    """||x||^2 without an (n, d) temporary."""
    return float(torch.linalg.vector_norm(x).item()) ** 2


def _subtract_rows(residual: torch.Tensor, c: torch.Tensor, code: torch.Tensor) -> None:
    """residual -= c[code], in blocks: c[code] for a million items would be another full copy of the data."""
    for start in range(0, residual.shape[0], _CHUNK):
        residual[start:start + _CHUNK] -= c[code[start:start + _CHUNK]]


# ----------------------------------------------------------------------------------------------------------------
# k-means


def _sq_dist(x: torch.Tensor, c: torch.Tensor, c_sq: torch.Tensor) -> torch.Tensor:
    """Squared distances [rows, K] = ||x||^2 - 2 x.c + ||c||^2, clamped at 0 against cancellation."""
    return (x.pow(2).sum(1, keepdim=True) - 2 * x @ c.T + c_sq).clamp_min_(0)


def nearest(x: torch.Tensor, c: torch.Tensor, m: int = 1, rows: torch.Tensor | None = None):
    """The m nearest centroids of every row (of `x[rows]` when given, gathered block by block):
    (distances [n, m], indices [n, m]), closest first."""
    c_sq = c.pow(2).sum(1)
    dists, idx = [], []
    n = x.shape[0] if rows is None else rows.numel()
    for start in range(0, n, _CHUNK):
        block = x[start:start + _CHUNK] if rows is None else x[rows[start:start + _CHUNK]]
        d = _sq_dist(block, c, c_sq)
        if m == 1:
            v, i = d.min(1, keepdim=True)
        else:
            v, i = d.topk(m, dim=1, largest=False)  # sorted ascending
        dists.append(v)
        idx.append(i)
    return torch.cat(dists), torch.cat(idx)


def kmeans_plusplus(x: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """k-means++ seeding: each next centroid is drawn with probability proportional to D(x)^2."""
    n = x.shape[0]
    x_sq = x.pow(2).sum(1)

    def dist_to(i: int) -> torch.Tensor:  # one mat-vec instead of an (n, d) temporary
        return (x_sq - 2 * (x @ x[i]) + x_sq[i]).clamp_min_(0)

    picks = [int(torch.randint(n, (1,), generator=gen))]
    d2 = dist_to(picks[0])
    for _ in range(1, k):
        total = d2.sum()
        if total <= 0:  # every point already coincides with a centroid: duplicates are the only choice left
            pick = int(torch.randint(n, (1,), generator=gen))
        else:
            pick = int(torch.multinomial((d2 / total).double().cpu(), 1, generator=gen))
        picks.append(pick)
        d2 = torch.minimum(d2, dist_to(pick))
    return x[torch.tensor(picks, device=x.device)].clone()


def balanced_assign(x: torch.Tensor, c: torch.Tensor, capacity: int, candidates: int = 16) -> torch.Tensor:
    """Assign every row to a centroid holding at most `capacity` rows, preferring near centroids.

    Rounds of proposals: each unassigned row proposes its next-nearest open centroid; a centroid accepts its closest
    proposers up to its remaining capacity. Rows left after `candidates` rounds repeat with full centroids masked.
    Deterministic (ties break by row index). Needs capacity * K >= n.
    """
    n, k = x.shape[0], c.shape[0]
    assert capacity * k >= n, "balanced_assign: capacity * K must cover every row"
    assign = torch.full((n,), -1, dtype=torch.long, device=x.device)
    load = torch.zeros(k, dtype=torch.long, device=x.device)
    pending = torch.arange(n, device=x.device)
    while pending.numel():
        open_mask = load < capacity
        c_open = torch.nonzero(open_mask).squeeze(1)
        m = min(candidates, c_open.numel())
        cand_d, cand_i = nearest(x, c[c_open], m, rows=pending)
        cand_i = c_open[cand_i]  # back to global centroid ids
        for r in range(m):
            if not pending.numel():
                break
            cl, d = cand_i[:, r], cand_d[:, r]
            # Sort proposals by (centroid, distance, row): stable sorts, least significant key first.
            order = torch.argsort(d, stable=True)
            order = order[torch.argsort(cl[order], stable=True)]
            cl_sorted = cl[order]
            counts = torch.bincount(cl_sorted, minlength=k)
            first = torch.cumsum(counts, 0) - counts
            rank = torch.arange(cl_sorted.numel(), device=x.device) - first[cl_sorted]
            take = rank < (capacity - load)[cl_sorted]
            rows = order[take]
            assign[pending[rows]] = cl[rows]
            load += torch.bincount(cl[rows], minlength=k)
            keep = torch.ones(pending.numel(), dtype=torch.bool, device=x.device)
            keep[rows] = False
            pending, cand_i, cand_d = pending[keep], cand_i[keep], cand_d[keep]
    return assign


def _assign(x: torch.Tensor, c: torch.Tensor, balanced: bool) -> torch.Tensor:
    if balanced:
        return balanced_assign(x, c, capacity=math.ceil(x.shape[0] / c.shape[0]))
    return nearest(x, c)[1].squeeze(1)


def _update(x: torch.Tensor, assign: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Centroids = means of their rows; (new centroids, counts). Empty clusters keep their old centroid."""
    k = c.shape[0]
    counts = torch.bincount(assign, minlength=k)
    sums = torch.zeros_like(c).index_add_(0, assign, x)
    new = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None].to(x.dtype), c)
    return new, counts


def kmeans(
    x: torch.Tensor, k: int, *, iters: int, balanced: bool, gen: torch.Generator, points_per_centroid: int = 256,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means with k-means++ seeding: (centroids [k, d], codes [n]).

    Fits on a random sample of at most points_per_centroid * k rows, then assigns all rows and refits the centroids
    as the means of all their rows. An empty cluster is re-seeded at the sample point farthest from its centroid.
    """
    n = x.shape[0]
    sample_n = min(n, points_per_centroid * k)
    fit = x if sample_n == n else x[torch.randperm(n, generator=gen, device="cpu")[:sample_n].to(x.device)]
    c = kmeans_plusplus(fit, k, gen)
    for _ in range(iters):
        assign = _assign(fit, c, balanced)
        new, counts = _update(fit, assign, c)
        empty = torch.nonzero(counts == 0).squeeze(1)
        if empty.numel():
            far = (fit - new[assign]).pow(2).sum(1).topk(empty.numel()).indices
            new[empty] = fit[far]
        shift = (new - c).pow(2).sum()
        c = new
        if shift <= 1e-10 * fit.pow(2).sum() and not empty.numel():
            break
    codes = _assign(x, c, balanced)
    c, _ = _update(x, codes, c)
    return c, codes


def rq_kmeans(x: torch.Tensor, levels: int, k: int, *, iters: int, balanced: bool, seed: int,
              points_per_centroid: int = 256, progress: bool = False) -> Quantized:
    """Residual k-means: level l quantizes x - sum_{j<l} c_j[code_j]."""
    from tqdm.auto import tqdm

    gen = torch.Generator().manual_seed(seed)
    residual = x.clone()
    x_sq = max(_sq_norm(x), 1e-12)
    codes, centroids, errors = [], [], []
    for _ in tqdm(range(levels), desc="rq-kmeans", unit="level", disable=not progress):
        c, code = kmeans(residual, k, iters=iters, balanced=balanced, gen=gen, points_per_centroid=points_per_centroid)
        _subtract_rows(residual, c, code)
        codes.append(code)
        centroids.append(c)
        errors.append(_sq_norm(residual) / x_sq)
    reconstruction = residual.neg_().add_(x)  # x - residual, in the residual's memory
    return Quantized(torch.stack(codes, 1), reconstruction, errors, centroids)


# ----------------------------------------------------------------------------------------------------------------
# RQ-VAE


def _mlp(dims: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(dims)):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)


class RQVAE(nn.Module):
    """Encoder MLP -> residual vector quantization (levels x K codebooks) -> decoder MLP."""

    def __init__(self, in_dim: int, cfg: RQVAEConfig, levels: int, k: int):
        super().__init__()
        self.encoder = _mlp([in_dim, *cfg.hidden_dims, cfg.latent_dim])
        self.decoder = _mlp([cfg.latent_dim, *reversed(cfg.hidden_dims), in_dim])
        self.codebooks = nn.Parameter(torch.zeros(levels, k, cfg.latent_dim))

    def quantize(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(codes [n, levels], quantized latent [n, latent], VQ loss terms summed over levels: (codebook, commit))."""
        residual, quant = z, torch.zeros_like(z)
        codes, cb_loss, commit = [], z.new_zeros(()), z.new_zeros(())
        for level in range(self.codebooks.shape[0]):
            book = self.codebooks[level]
            code = nearest(residual.detach(), book.detach())[1].squeeze(1)
            e = book[code]  # (n, latent)
            cb_loss = cb_loss + F.mse_loss(e, residual.detach())
            commit = commit + F.mse_loss(residual, e.detach())
            quant = quant + e
            residual = residual - e.detach()
            codes.append(code)
        return torch.stack(codes, 1), quant, torch.stack([cb_loss, commit])

    def forward(self, x: torch.Tensor):
        z = self.encoder(x)
        codes, quant, vq = self.quantize(z)
        z_q = z + (quant - z).detach()  # straight-through estimator
        return codes, self.decoder(z_q), vq


def rq_vae(x: torch.Tensor, levels: int, k: int, cfg: RQVAEConfig, *, seed: int, kmeans_iters: int,
           progress: bool = False) -> Quantized:
    from tqdm.auto import tqdm

    torch_state = torch.random.get_rng_state()
    torch.manual_seed(seed)  # parameter init
    gen = torch.Generator().manual_seed(seed)
    model = RQVAE(x.shape[1], cfg, levels, k).to(x.device)
    n = x.shape[0]
    with torch.no_grad():  # codebooks start at residual k-means of the untrained encoder's latents
        init_n = min(n, 64 * k)
        z = model.encoder(x[torch.randperm(n, generator=gen)[:init_n].to(x.device)])
        init = rq_kmeans(z, levels, k, iters=min(kmeans_iters, 10), balanced=False, seed=seed)
        model.codebooks.copy_(torch.stack(init.centroids))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    restarts = 0
    used = torch.zeros(levels, k, dtype=torch.bool, device=x.device)
    level_ids = torch.arange(levels, device=x.device)
    bar = tqdm(range(cfg.steps), desc="rq-vae", unit="step", disable=not progress, mininterval=1.0)
    for step in bar:
        xb = x[torch.randint(n, (min(cfg.batch_size, n),), generator=gen).to(x.device)]
        codes, x_hat, vq = model(xb)
        # Squared error summed over dimensions (per item), as the VQ terms are per latent vector: a per-element
        # mean would let the codebook terms dominate and the decoder collapse to the mean item.
        recon = (x_hat - xb).pow(2).sum(1).mean()
        loss = recon + vq[0] + cfg.commitment * vq[1]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        used[level_ids[None, :].expand_as(codes), codes] = True
        if step % 50 == 0:
            bar.set_postfix(recon=f"{recon.item():.4f}", used=f"{used.float().mean().item():.2f}")
        if cfg.dead_code_restart_every and (step + 1) % cfg.dead_code_restart_every == 0 and step + 1 < cfg.steps:
            restarts += _restart_dead_codes(model, x, used, gen)
            used.zero_()
    model.eval()
    with torch.no_grad():
        # Per-level error: decode from the first l levels' codebook vectors (the RQ-VAE analogue of RQ-KMeans'
        # partial sums), accumulated block by block.
        codes, recon_parts, err = [], [], torch.zeros(levels, dtype=torch.float64)
        for start in range(0, n, _CHUNK):
            xb = x[start:start + _CHUNK]
            c, x_hat, _ = model(xb)
            quant = torch.zeros(xb.shape[0], cfg.latent_dim, device=x.device)
            for level in range(levels):
                quant += model.codebooks[level][c[:, level]]
                err[level] += _sq_norm(xb - model.decoder(quant))
            codes.append(c)
            recon_parts.append(x_hat)
        codes_t, x_hat = torch.cat(codes), torch.cat(recon_parts)
        errors = (err / max(_sq_norm(x), 1e-12)).tolist()
    torch.random.set_rng_state(torch_state)
    return Quantized(codes_t, x_hat, errors, info={"dead_code_restarts": restarts})


@torch.no_grad()
def _restart_dead_codes(model: RQVAE, x: torch.Tensor, used: torch.Tensor, gen: torch.Generator) -> int:
    """Move every code unused since the last restart onto the residual of a random item at that level."""
    dead = ~used
    if not dead.any():
        return 0
    sample = x[torch.randperm(x.shape[0], generator=gen)[: min(x.shape[0], 8192)].to(x.device)]
    residual = model.encoder(sample)
    for level in range(model.codebooks.shape[0]):
        book = model.codebooks[level]
        idx = torch.nonzero(dead[level]).squeeze(1)
        if idx.numel():
            pick = torch.randint(residual.shape[0], (idx.numel(),), generator=gen).to(x.device)
            book[idx] = residual[pick]
        residual = residual - book[nearest(residual, book)[1].squeeze(1)]
    return int(dead.sum())


# ----------------------------------------------------------------------------------------------------------------
# random control and dispatch


def random_codes(x: torch.Tensor, levels: int, k: int, *, seed: int) -> Quantized:
    """Uniform random codes; the reconstruction is the best one these codes allow (residual means per code)."""
    gen = torch.Generator().manual_seed(seed)
    codes = torch.randint(k, (x.shape[0], levels), generator=gen).to(x.device)
    residual, errors, x_sq = x.clone(), [], max(_sq_norm(x), 1e-12)
    for level in range(levels):
        c, _ = _update(residual, codes[:, level], torch.zeros(k, x.shape[1], dtype=x.dtype, device=x.device))
        _subtract_rows(residual, c, codes[:, level])
        errors.append(_sq_norm(residual) / x_sq)
    return Quantized(codes, residual.neg_().add_(x), errors)


def quantize(emb: np.ndarray | torch.Tensor, cfg: TokenizerConfig, *, quantizer: str | None = None,
             progress: bool = False) -> Quantized:
    """Run the quantizer `cfg.quantizer` (or `quantizer`) on embeddings [n, d]."""
    quantizer = quantizer or cfg.quantizer
    x = torch.as_tensor(emb, dtype=torch.float32)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    x = x.to(device)
    n = x.shape[0]
    bad = sum(int((~torch.isfinite(x[s:s + _CHUNK]).all(1)).sum()) for s in range(0, n, _CHUNK))
    if bad:
        raise DataError(f"{bad} of {n} item embeddings contain NaN/inf; cannot quantize")
    if cfg.codebook_size > n:
        raise DataError(
            f"tokenizer.codebook_size={cfg.codebook_size} is larger than the number of items ({n}); "
            f"set tokenizer.codebook_size <= {n}"
        )
    if quantizer == "rq_kmeans":
        return rq_kmeans(x, cfg.levels, cfg.codebook_size, iters=cfg.kmeans_iters, balanced=cfg.balanced,
                         seed=cfg.seed, points_per_centroid=cfg.kmeans_points_per_centroid, progress=progress)
    if quantizer == "rq_vae":
        return rq_vae(x, cfg.levels, cfg.codebook_size, cfg.rq_vae, seed=cfg.seed, kmeans_iters=cfg.kmeans_iters,
                      progress=progress)
    if quantizer == "random":
        return random_codes(x, cfg.levels, cfg.codebook_size, seed=cfg.seed)
    raise DataError(f"tokenizer.quantizer={quantizer!r} is not one of rq_kmeans, rq_vae, random")
