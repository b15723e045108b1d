"""The `e2erec` command: a thin entry point; each subcommand lives in `e2erec/commands/<name>.py`.

A command module defines `HELP` (one line), `add_arguments(parser)` and `run(args) -> int`. Modules are imported
only when their subcommand runs, so `e2erec --help` stays fast and a broken optional stage cannot break the others.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "data": "Prepare datasets and print their statistics.",
    "tokenize": "Build semantic IDs for a dataset's items.",
    "train": "Train the end-to-end model (DeepSpeed; torchrun, deepspeed launcher or Slurm).",
    "eval": "Evaluate the end-to-end model and the baselines under one protocol; write a report.",
    "generate": "Generate top-K items per user with trie-constrained, steerable beam search.",
    "sweep": "Run a scaling-law sweep and fit the laws.",
    "plan": "Parameter count, FLOPs per token and memory per GPU for a model config.",
    "run": "The whole pipeline on a dataset: prepare -> tokenize -> train -> evaluate -> report.",
    "verify": "Check checkpoints, exports, semantic IDs or dataset caches against their manifests.",
}


def _load(name: str):
    return importlib.import_module(f"e2erec.commands.{name}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="e2erec", description="End-to-end generative recommenders.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_command=name)
        # Subcommand arguments are added lazily below, only for the command being run (or asked for --help).
        p.set_defaults(_parser=p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    name = next((a for a in argv if not a.startswith("-")), None)
    if name in COMMANDS:
        module = _load(name)
        sub = parser._subparsers._group_actions[0].choices[name]
        module.add_arguments(sub)
    args = parser.parse_args(argv)
    from e2erec.config import ConfigError
    from e2erec.errors import E2ERecError

    try:
        return int(_load(args._command).run(args) or 0)
    except ConfigError as e:
        print(f"e2erec {args._command}: config error: {e}", file=sys.stderr)
        return 2
    except E2ERecError as e:
        print(f"e2erec {args._command}: error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 2)
    except KeyboardInterrupt:
        return 130
    except RuntimeError as e:  # a rank of `eval` / `generate` lost its peers: say which, not a collective's traceback
        import torch.distributed as dist

        from e2erec.errors import RankLostError
        from e2erec.train.distributed import lost_ranks

        lost = lost_ranks(e)
        if lost is None:
            raise
        print(f"e2erec {args._command}: error: rank {dist.get_rank()}: a collective failed and {lost}; nothing was "
              f"written as final. Relaunch the job. The collective said: {str(e).splitlines()[0][:300]}",
              file=sys.stderr)
        return RankLostError.exit_code


if __name__ == "__main__":
    sys.exit(main())
