"""The `baseline` section: the baselines' own hyperparameters (what the protocol in `eval` does not fix).

Widths, depth and learning rate are the winners of scripts/tune_baselines.py on ml-100k validation NDCG@10
(issue-14 notes): SASRec 64-d, dropout 0.2, lr 2e-3 at 2 blocks (0.1173; 128-d 0.1077, lr 1e-3 0.0934), then
depth x lr: 1 block 0.1287 (lr 4e-3: 0.1265), 2 blocks 0.1173 (0.1192), 3 blocks 0.1179 (0.1194); the cascade
128-d, lr 2e-3 (0.1123; 64-d 0.1055). The plugin cascade shares the cascade's architecture and width.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class BaselineConfig:
    sasrec_dim: int = 64  # embedding width of SASRec
    cascade_dim: int = 128  # embedding width of both cascades' two-tower and ranking models
    sasrec_layers: int = 1  # SASRec's self-attention blocks (the grid's winner on ml-100k; the paper's 2)
    sasrec_dropout: float = 0.2  # SASRec's dropout (the paper's 0.2 on MovieLens-1M)
    # SASRec's training softmax: 0 = over the whole catalogue (the default, and what every ml-100k number uses);
    # n > 0 = over the target and n uniform negatives shared by the batch. A full softmax costs positions x items
    # per batch, ~70 min an epoch at 10M events / 100K items on 2 cores; scripts/bench_scale.py uses 1024.
    sasrec_negatives: int = 0
    max_len: int = 50  # most recent history events a baseline reads
    batch_size: int = 128  # sequences per step (SASRec, two-tower); the ranker uses 16x this many events
    lr: float = 2e-3
    # torch CPU threads while baselines train. 1 by default: on a shared 2-core machine, 2 OpenMP threads spin-waited
    # and cost 8x the CPU time of 1 thread for a SASRec epoch (21 s vs 2.6 s, measured under load).
    threads: int = 1
    cascade_candidates: int = 100  # retrieval stage output (top-N handed to the ranker)
    cascade_negatives: int = 256  # uniformly sampled negatives per step, on top of the in-batch ones
    semantic_candidates: int = 50  # plugin cascade: candidates from the semantic-similarity channel

    def validate(self) -> None:
        if self.sasrec_layers < 1 or not 0.0 <= self.sasrec_dropout < 1.0:
            raise ValueError(f"sasrec_layers must be >= 1 and sasrec_dropout in [0, 1), got {self.sasrec_layers}, "
                             f"{self.sasrec_dropout}")
        if self.sasrec_negatives < 0:
            raise ValueError(f"sasrec_negatives must be >= 0 (0 = full softmax), got {self.sasrec_negatives}")
        for name in ("sasrec_dim", "cascade_dim", "max_len", "batch_size", "threads", "cascade_candidates"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
