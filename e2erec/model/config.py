"""The `model` section: the jagged semantic-ID sequence model and its heads."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class ModelConfig:
    name: str = "tiny"
    backbone: Literal["transformer", "hstu"] = "transformer"
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    ffn_mult: float = 2.6667  # SwiGLU hidden = ffn_mult * d_model (rounded to a multiple of 64 above tiny sizes)
    dropout: float = 0.0
    max_tokens_per_seq: int = 1024  # tokens (not events) per sequence after truncation; also the HSTU normaliser
    num_pos_buckets: int = 64
    num_time_buckets: int = 32
    attention_backend: Literal["auto", "reference", "triton", "torch"] = "auto"
    calibration_hidden: int = 128
    activation_checkpointing: bool = False
    tie_code_embeddings: bool = True

    def validate(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
