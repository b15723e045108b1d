"""The `train` section: optimisation, distribution, checkpoints and logging."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# train.select_metric -> whether higher is better.
SELECT_METRICS = {"eval_loss": False, "eval_gen_loss": False, "eval_calib_loss": False,
                  "sid_recall@10": True, "sid_exact_match": True}


@dataclass
class TrainConfig:
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.98
    warmup_steps: int = 100
    max_steps: int = 1000
    # The first of max_steps / max_tokens / time_budget_s to be reached stops the run (0 = that limit is off).
    max_tokens: int = 0  # training tokens over all ranks
    time_budget_s: float = 0.0  # wall time, summed over resumes
    batch_tokens: int = 8192  # token budget of one micro-batch (sequences are packed, never padded)
    grad_accum: int = 1
    grad_clip: float = 1.0
    zero_stage: Literal[0, 1, 2, 3] = 0
    zero3_persistence_threshold: int = 100_000  # ZeRO-3: parameters with fewer elements stay replicated
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    gen_loss_weight: float = 1.0
    calib_loss_weight: float = 1.0
    # Calibration targets of each user's calibration sequence (`e2erec.train.task.training_units`; 0 = no such
    # sequences, no calibration training): up to this many of its last events (k drawn per sequence and epoch). More
    # targets = more labels for the head: on ml-100k, 32 instead of 4 cut the raw validation LogLoss at step 400
    # from 0.85 to 0.60.
    num_candidates: int = 32
    # Share of the calibration sequences that end at the user's last training event, as validation and test
    # targets do; the others end after a uniformly drawn earlier event (drawn per batch), so that over the epochs
    # the head learns from the labels of all training events instead of memorising the same last 32 of each user.
    # ml-100k, mini, 600 steps (issue-6 note, session 4), share 1.0 / 0.5 / 0.0: raw validation calib LogLoss
    # 0.567 / 0.555 / 0.566, after Platt 0.559 / 0.554 / 0.566 (Platt slope 0.78 / 0.92 / 1.03), item NLL
    # 5.987 / 5.961 / 5.954, Recall@10 0.123 / 0.135 / 0.125.
    calib_recent_share: float = 0.5
    # Generative loss: each level's softmax over the codes the semantic-ID trie allows after the true prefix (the
    # beam search's support) instead of the whole codebook. See e2erec/model/model.py.
    trie_softmax: bool = True
    # Under the cold-item protocol: the trie-softmax renormalises over the warm items' codes only (the held-out items
    # do not exist while training), instead of pushing every cold item's codes down as an alternative never seen.
    warm_trie_softmax: bool = True
    log_every: int = 10
    eval_every: int = 200
    ckpt_every: int = 500
    keep_last: int = 3
    # Before each checkpoint write: prune what it would prune anyway, then refuse to start the write with less free
    # space (GB) than this (0 = no check; a write that fails still stops the run with a clear error, exit code 74).
    min_free_gb: float = 0.0
    verify_checkpoints: bool = False  # resume checks every checkpoint file's SHA-256 (else sizes, digests if small)
    max_bad_steps: int = 10  # NaN/inf losses tolerated (each skipped) before aborting
    # How long a rank waits in a collective for the others (seconds) before it gives up: bounds the wait when a
    # rank dies or hangs. Above the longest step, evaluation or checkpoint write of the run.
    collective_timeout_s: float = 600.0
    # Threads that build training batches ahead of the step (e2erec/train/prefetch.py; 0 = in the step). Either way
    # the same batches in the same order: golden losses and resumes do not depend on it.
    num_workers: int = 0
    threads: int = 0  # torch CPU threads of each rank (0 = the cores per rank); `e2erec run` leaves one to the baselines
    seed: int = 0
    semantic_ids: str = ""  # a saved artifact (`e2erec tokenize`); "" = build it into <run_dir>/semantic_ids once
    resume: str = ""  # "" = fresh run, "auto" = newest checkpoint in <run_dir>/checkpoints if any, or a checkpoint path
    eval_max_targets: int = 1024  # validation targets scored at each periodic eval (0 = all)
    final_eval_max_targets: int = 0  # ... and at the end, for final.json (0 = all)
    calibration_targets: int = 20_000  # validation targets for the post-hoc Platt scaling at the end (0 = none)
    # The weights a run ends with (final evaluation, Platt fit, export): "last", or "best" = those of the periodic
    # evaluation (every eval_every steps, and the last step) with the best `select_metric`, the same early-stopping
    # rule the baselines follow. Each new best is written to <run_dir>/best in the export format. With
    # eval_every=0 there are no periodic evaluations and "best" is the last step. Scaling-law sweeps keep "last":
    # their fits pair the loss with the tokens trained.
    select: Literal["last", "best"] = "last"
    # Stop when `eval.patience` periodic evaluations in a row bring no better select_metric: the protocol's
    # early-stopping rule (e2erec/eval/stopping.py), the one the baselines of a report train under. Acts only with
    # select=best and eval_every > 0 (a sweep's select=last keeps it off); max_steps caps the run and sets the cosine
    # schedule's horizon.
    early_stop: bool = False
    select_metric: str = "eval_loss"  # eval_loss / eval_gen_loss / eval_calib_loss (lower is better), or a metric
    # of the periodic evaluation: sid_recall@10, sid_exact_match (higher is better)
    tensorboard: bool = True
    export: bool = True  # write <run_dir>/export (safetensors, loadable without DeepSpeed) when the run ends
    device: Literal["auto", "cpu", "cuda"] = "auto"
    peak_tflops: float = 0.0  # per-device peak for MFU (0 = look it up from the GPU name; CPU reports no MFU)

    def validate(self) -> None:
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0 (0 = automatic), got {self.threads}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0 (0 = batches built in the step), got {self.num_workers}")
        if self.grad_accum < 1 or self.batch_tokens < 1:
            raise ValueError("grad_accum and batch_tokens must be >= 1")
        if self.max_steps < 1 and self.max_tokens <= 0 and self.time_budget_s <= 0:
            raise ValueError("set max_steps, max_tokens or time_budget_s > 0: the run needs a stopping rule")
        if self.keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {self.keep_last}")
        if self.collective_timeout_s <= 0:
            raise ValueError(f"collective_timeout_s must be > 0, got {self.collective_timeout_s}")
        if self.min_free_gb < 0:
            raise ValueError(f"min_free_gb must be >= 0 (0 = no check), got {self.min_free_gb}")
        if self.log_every < 1 or self.eval_every < 0 or self.ckpt_every < 0:
            raise ValueError("log_every must be >= 1; eval_every and ckpt_every >= 0 (0 = only at the end)")
        if not 0.0 <= self.calib_recent_share <= 1.0:
            raise ValueError(f"calib_recent_share must be in [0, 1], got {self.calib_recent_share}")
        if self.select_metric not in SELECT_METRICS:
            raise ValueError(f"select_metric must be one of {sorted(SELECT_METRICS)}, got {self.select_metric!r}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
