"""`e2erec plan [--config run.yaml] --gpus N [--micro-batch-tokens T] [key=value ...]`: size a model for a cluster.

    e2erec plan model=1b --gpus 8                          # params, FLOPs/token, GiB per GPU for ZeRO 0-3
    e2erec plan model=8b --gpus 64 --micro-batch-tokens 16384
    e2erec plan model=small --gpus 1 --precision fp32 --codebook-sizes 256,256,256
    e2erec plan model=base --gpus 4 --json plan.json       # the same numbers, machine-readable
    e2erec plan model=1b --gpus 8 --plot plan.png          # stacked bars: GiB per GPU by ZeRO stage

The model is built on the meta device, so any size plans in a second on a laptop. Formulas (model states as
DeepSpeed counts them, activations per block) are in `e2erec/model/plan.py`.
"""

from __future__ import annotations

import argparse

HELP = "Parameter count, FLOPs per token and memory per GPU for a model config."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="run config: a name under configs/run/ or a YAML path")
    parser.add_argument("--gpus", type=int, default=1, help="data-parallel GPUs the ZeRO states are sharded over")
    parser.add_argument("--micro-batch-tokens", type=int, default=None,
                        help="tokens in one micro-batch per GPU (default: train.batch_tokens)")
    parser.add_argument("--seq-len", type=int, default=None,
                        help="tokens per sequence for the attention FLOPs (default: the longest training sequence, "
                             "BOS + min(data.max_seq_len, model.max_tokens_per_seq + train.num_candidates))")
    parser.add_argument("--precision", choices=("bf16", "fp32"), default=None,
                        help="training precision (default bf16, as on GPUs; fp32 as on CPUs)")
    parser.add_argument("--codebook-sizes", default=None,
                        help="semantic-ID codebook sizes per level, e.g. 256,256,256,16 (default: the reference "
                             "codebook the configs document their parameter counts with)")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the plan as JSON (atomically)")
    parser.add_argument("--plot", default=None, metavar="PATH", help="also save a PNG of memory per GPU by ZeRO stage")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. model=1b model.n_layers=24")


def _codebook(text: str | None) -> list[int]:
    from e2erec.config import ConfigError
    from e2erec.model import REFERENCE_CODEBOOK

    if text is None:
        return list(REFERENCE_CODEBOOK)
    try:
        sizes = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise ConfigError(f"command line: --codebook-sizes {text!r} must be positive integers, e.g. 256,256,256,16")
    return sizes


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from e2erec.config import ConfigError, load_run_config
    from e2erec.model.plan import make_plan, plot_plan
    from e2erec.utils.io import atomic_write_json

    cfg = load_run_config(args.config, args.overrides)
    if args.gpus < 1:
        raise ConfigError(f"command line: --gpus must be >= 1, got {args.gpus}")
    tokens = cfg.train.batch_tokens if args.micro_batch_tokens is None else args.micro_batch_tokens
    if tokens < 1:
        raise ConfigError(f"command line: --micro-batch-tokens must be >= 1, got {tokens}")
    longest = min(cfg.data.max_seq_len, cfg.model.max_tokens_per_seq + cfg.train.num_candidates)
    seq_len = args.seq_len or 1 + longest
    precision = args.precision or "bf16"
    plan = make_plan(cfg.model, _codebook(args.codebook_sizes), args.gpus, tokens, seq_len=seq_len, precision=precision)
    print(plan.table())
    if args.plot:
        plot_plan(plan, args.plot)
    if args.json:
        stages = [dict(dataclasses.asdict(s), model_states=s.model_states, total=s.total, total_ckpt=s.total_ckpt)
                  for s in plan.stages]
        atomic_write_json(args.json, {
            "model": dataclasses.asdict(plan.cfg), "codebook_sizes": plan.codebook_sizes, "gpus": plan.gpus,
            "micro_batch_tokens": plan.micro_batch_tokens, "seq_len": plan.seq_len, "precision": plan.precision,
            "num_params": plan.num_params, "non_embedding_params": plan.non_embedding_params,
            "largest_layer_params": plan.largest_layer_params, "flops_per_token": plan.flops_per_token,
            "stages_bytes_per_gpu": stages,
        })
    return 0
