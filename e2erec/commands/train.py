"""`e2erec train [--config run.yaml] [key=value ...]`: the same command under every launcher.

    e2erec train model=small train.max_steps=2000                       # one process (CPU or one GPU)
    torchrun --nproc_per_node 8 -m e2erec train train.zero_stage=2      # one node
    deepspeed --num_gpus 8 --no_local_rank --module e2erec train ...    # the DeepSpeed launcher
    srun python -m e2erec train ...                                     # Slurm, one task per rank

Exit status: 0 done, 2 bad input/config, 85 checkpointed after SIGTERM/SIGUSR1 (requeue; resume with
`train.resume=auto`).
"""

from __future__ import annotations

import argparse

HELP = "Train the end-to-end model (DeepSpeed; torchrun, deepspeed launcher or Slurm)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="run config: a name under configs/run/ or a YAML path")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.lr=3e-4 model=small")


def run(args: argparse.Namespace) -> int:
    from e2erec.config import load_run_config

    cfg = load_run_config(args.config, args.overrides)  # a bad key fails here, before torch/DeepSpeed load
    from e2erec.train.engine import train

    return train(cfg)
