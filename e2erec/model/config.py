"""The `model` section: the jagged semantic-ID sequence model and its heads."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# The codebook the documented `param_count`s are computed for: rq_kmeans defaults (3 levels x 256 codes) plus a
# 16-way dedup level. The real count depends on the tokenizer only through the code embedding tables
# (sum(codebook_sizes) * d_model parameters).
REFERENCE_CODEBOOK = [256, 256, 256, 16]


@dataclass
class ModelConfig:
    name: str = "tiny"
    backbone: Literal["transformer", "hstu"] = "transformer"
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    ffn_mult: float = 2.6667  # SwiGLU hidden = ffn_mult * d_model (rounded to a multiple of 64 above tiny sizes)
    dropout: float = 0.0
    # History events (= tokens: one token per event, see e2erec/model/model.py) kept per sequence, the most recent;
    # also the fixed normaliser n of HSTU attention so outputs do not depend on the batch.
    max_tokens_per_seq: int = 1024
    num_pos_buckets: int = 64
    num_time_buckets: int = 32
    attention_backend: Literal["auto", "reference", "triton", "torch"] = "auto"
    calibration_hidden: int = 128
    # The calibration head also reads the candidate item's and the user's smoothed positive rates (model.py);
    # applies to models built with their catalogue size (training, exports), not to benchmarks.
    calibration_priors: bool = True
    # The item rate's prior: 0 = the global base rate; l > 0 = the rate of the items sharing the item's first l codes
    # (smoothed toward the base rate in turn), so an item with few or no events (a cold item) gets the rate of its
    # content cluster. Off: on ml-100k's cold run (configs/run/cold.yaml) l = 1 left the ranking as it was and made
    # the cold targets' LogLoss worse, 0.652 -> 0.665 (paired +0.013 [+0.010, +0.016]; issue-15 note, session 12).
    prior_prefix_levels: int = 0
    # Item-ID embeddings added to every event and target token beside its semantic-ID code embeddings (applies to
    # models built with their catalogue size): "none", "full" (one row per item) or "hashed" (item_hash_buckets
    # rows shared by hash, for catalogues too large for a row each). Semantic-ID papers report that the item's own
    # identity matters on small catalogues, where codes shared by many items blur it.
    item_embeddings: Literal["none", "full", "hashed"] = "none"
    item_hash_buckets: int = 0
    # Code-level label smoothing of the generative loss while training: this share of each level's target mass is
    # spread uniformly over the codes the trie allows after the true prefix. Evaluation losses are unsmoothed.
    label_smoothing: float = 0.0
    activation_checkpointing: bool = False
    tie_code_embeddings: bool = True
    num_feedback: int = 6  # feedback values 0..num_feedback-1 (MovieLens stars 1-5; implicit data: 1)
    # Documented total parameter count with REFERENCE_CODEBOOK (0 = not documented); tests/model checks it.
    param_count: int = 0

    def validate(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if min(self.d_model, self.n_layers, self.n_heads, self.max_tokens_per_seq, self.num_feedback) < 1:
            raise ValueError("d_model, n_layers, n_heads, max_tokens_per_seq and num_feedback must be >= 1")
        if self.num_pos_buckets < 1 or self.num_time_buckets < 1:
            raise ValueError("num_pos_buckets and num_time_buckets must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.prior_prefix_levels < 0:
            raise ValueError(f"prior_prefix_levels must be >= 0, got {self.prior_prefix_levels}")
        if self.item_embeddings == "hashed" and self.item_hash_buckets < 1:
            raise ValueError("item_embeddings=hashed needs item_hash_buckets >= 1")
        if self.param_count < 0:
            raise ValueError("param_count must be >= 0 (0 = not documented)")

    @property
    def ffn_hidden(self) -> int:
        """SwiGLU width: ffn_mult * d_model rounded up to a multiple of 64 (of 8 below d_model = 256)."""
        multiple = 64 if self.d_model >= 256 else 8
        raw = int(self.ffn_mult * self.d_model)
        return -(-raw // multiple) * multiple
