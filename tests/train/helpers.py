"""Helpers shared by the training tests: run configs, launching `e2erec train`, reading logged losses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TOKENIZER = ["tokenizer.embedding=collaborative", "tokenizer.quantizer=random", "tokenizer.codebook_size=16"]
# Small steps: 50 events per history at most, 512-token micro-batches, per-step logging, checkpoints every 3 steps.
# No dropout (the run config's default has some): tests compare losses across separately built trainers.
TRAIN = [
    "model=tiny", "model.dropout=0.0", "data.max_seq_len=50", "train.batch_tokens=512", "train.max_steps=6",
    "train.warmup_steps=2",
    "train.log_every=1", "train.eval_every=0", "train.ckpt_every=3", "train.tensorboard=false", "train.lr=3e-3",
    "train.final_eval_max_targets=128",
]
LAUNCH_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK")



def overrides(run_dir: Path, sids: Path, *extra: str) -> list[str]:
    return [*TOKENIZER, *TRAIN, f"train.semantic_ids={sids}", f"out_dir={run_dir}", *extra]


def train_losses(run_dir: Path) -> dict[int, float]:
    """step -> loss of the LAST logged occurrence of each step (a resumed run re-logs steps after its checkpoint)."""
    out = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row["kind"] == "train":
            out[row["step"]] = row["loss"]
    return out


def subprocess_env() -> dict[str, str]:
    """The test process's environment minus any launcher variables (the in-process group sets RANK etc.)."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_ENV and not k.startswith("SLURM_")}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", DS_ACCELERATOR="cpu")
    return env


def e2erec_cmd() -> list[str]:
    return [sys.executable, "-m", "e2erec", "train"]


def run_checked(cmd: list[str], env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc
