"""Quantizers on small synthetic embeddings: determinism, per-level error, balance, and bad input."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from e2erec.errors import DataError
from e2erec.tokenizer.config import RQVAEConfig, TokenizerConfig
from e2erec.tokenizer.quantize import balanced_assign, quantize, rq_kmeans


def blobs(n=600, d=16, centers=12, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(centers, d, generator=g) * 3
    return c[torch.randint(centers, (n,), generator=g)] + torch.randn(n, d, generator=g)


def test_rq_kmeans_is_deterministic_by_seed():
    x = blobs()
    a = rq_kmeans(x, 3, 16, iters=10, balanced=True, seed=1)
    b = rq_kmeans(x, 3, 16, iters=10, balanced=True, seed=1)
    c = rq_kmeans(x, 3, 16, iters=10, balanced=True, seed=2)
    assert torch.equal(a.codes, b.codes)
    assert not torch.equal(a.codes, c.codes)


@pytest.mark.parametrize("balanced", [False, True])
def test_rq_kmeans_error_falls_level_by_level_and_beats_random(balanced):
    x = blobs()
    cfg = TokenizerConfig(levels=4, codebook_size=16, balanced=balanced, kmeans_iters=15)
    q = quantize(x, cfg, quantizer="rq_kmeans")
    errs = q.level_errors
    assert all(later < earlier for earlier, later in itertools.pairwise(errs)), errs
    assert errs[0] < 1.0
    # The reconstruction is the sum of the chosen centroids.
    assert np.isclose(((x - q.reconstruction).pow(2).sum() / x.pow(2).sum()).item(), errs[-1], rtol=1e-4)
    rand = quantize(x, cfg, quantizer="random")
    assert errs[-1] < 0.5 * rand.level_errors[-1]


def test_balanced_codes_are_used_evenly():
    x = blobs(n=500, centers=3)  # three blobs, 20 codes: unbalanced k-means would leave codes nearly empty
    q = quantize(x, TokenizerConfig(levels=1, codebook_size=20, balanced=True), quantizer="rq_kmeans")
    counts = torch.bincount(q.codes[:, 0], minlength=20)
    assert counts.max() <= math.ceil(500 / 20) and counts.min() > 0


@pytest.mark.parametrize("n,k", [(1, 1), (7, 3), (100, 7), (257, 16)])
def test_balanced_assign_respects_capacity_and_prefers_near_centroids(n, k):
    g = torch.Generator().manual_seed(n)
    x, c = torch.randn(n, 4, generator=g), torch.randn(k, 4, generator=g)
    cap = math.ceil(n / k)
    a = balanced_assign(x, c, cap, candidates=2)
    assert (a >= 0).all() and torch.bincount(a, minlength=k).max() <= cap
    # With room for everyone, everyone gets their nearest centroid.
    nearest = torch.cdist(x, c).argmin(1)
    assert torch.equal(balanced_assign(x, c, n), nearest)


def test_rq_vae_trains_deterministically_and_restarts_dead_codes():
    x = blobs(n=400, d=16)
    cfg = TokenizerConfig(levels=2, codebook_size=8, quantizer="rq_vae", seed=3,
                          rq_vae=RQVAEConfig(hidden_dims=[32], latent_dim=8, steps=300, batch_size=64, lr=3e-3,
                                             dead_code_restart_every=100))
    a, b = quantize(x, cfg), quantize(x, cfg)
    assert torch.equal(a.codes, b.codes)
    assert a.codes.shape == (400, 2) and int(a.codes.max()) < 8
    assert a.level_errors[-1] < 0.5  # trained: well below predicting zero
    assert "dead_code_restarts" in a.info


def test_random_codes_are_a_seeded_control():
    x = blobs(n=300)
    cfg = TokenizerConfig(levels=2, codebook_size=10, quantizer="random")
    assert torch.equal(quantize(x, cfg).codes, quantize(x, cfg).codes)


def test_codebook_larger_than_catalog_is_a_clear_error():
    with pytest.raises(DataError, match=r"codebook_size=256 is larger than the number of items \(50\)"):
        quantize(blobs(n=50), TokenizerConfig())


def test_nan_embeddings_are_a_clear_error():
    x = blobs(n=100)
    x[7, 3] = float("nan")
    with pytest.raises(DataError, match="1 of 100 item embeddings contain NaN"):
        quantize(x, TokenizerConfig(codebook_size=8))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_rq_kmeans_on_gpu_matches_cpu_quality():
    x = blobs(n=2000)
    cfg = TokenizerConfig(levels=3, codebook_size=16, device="cuda")
    gpu = quantize(x, cfg, quantizer="rq_kmeans")
    cpu = quantize(x, TokenizerConfig(levels=3, codebook_size=16, device="cpu"), quantizer="rq_kmeans")
    assert gpu.codes.device.type == "cuda"
    assert abs(gpu.level_errors[-1] - cpu.level_errors[-1]) < 0.05 * cpu.level_errors[-1]
