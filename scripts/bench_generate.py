"""Generation throughput: users/s of trie-constrained beam search with exclude-seen, as `e2erec generate` runs it.

    python scripts/bench_generate.py --device cuda --model base --users 4096 --beam 50     # a GPU
    python scripts/bench_generate.py --device cpu --model tiny --users 64 --beam 8         # this machine

A model of the given size with random weights (throughput does not depend on what it learned), random semantic
IDs over `--items` items (levels of 256 codes + a disambiguation level, as built), random histories around
`--mean-len` events (`e2erec.model.bench.random_histories`). Per batch of `--batch` users: encode the histories once, then the beam search
(top-10 of `--beam` beams, the user's history excluded inside the search). Reports the median over `--repeats`
timed passes after one warm-up; writes `<out>/bench_generate_<device>.json`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from e2erec.config import load_run_config
from e2erec.generate.beam import constrained_beam_search
from e2erec.generate.config import SteeringConfig
from e2erec.model import GenerativeRecommender
from e2erec.model.bench import random_histories
from e2erec.tokenizer.semantic_ids import disambiguate
from e2erec.tokenizer.trie import PrefixTrie

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--model", default="base")
    p.add_argument("--users", type=int, default=4096)
    p.add_argument("--batch", type=int, default=512, help="users per beam search")
    p.add_argument("--beam", type=int, default=50)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--mean-len", type=int, default=100, help="mean history length (uniform in [mean/2, 3 mean/2])")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dtype", choices=["fp32", "bf16"], default=None, help="default: bf16 on CUDA, fp32 on CPU")
    p.add_argument("--out", type=Path, default=ROOT / "bench_out")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    cfg = load_run_config(None, [f"model={args.model}"]).model
    g = torch.Generator().manual_seed(0)
    codes, dedup = disambiguate(torch.randint(0, 256, (args.items, 3), generator=g))
    sizes = [256, 256, 256] + ([dedup] if dedup else [])
    torch.manual_seed(0)
    model = GenerativeRecommender(cfg, sizes).to(device).eval()
    trie = PrefixTrie.build(codes, sizes).to(device)
    codes = codes.to(device)
    steering = SteeringConfig(exclude_seen=True)
    batches = []
    for start in range(0, args.users, args.batch):
        n = min(args.batch, args.users - start)
        batches.append(random_histories(n, args.mean_len, args.items, seed=start))

    def one_pass() -> int:
        emitted = 0
        for h in batches:
            with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                step, _ = model.make_step_fn(h, codes)
                items, _ = constrained_beam_search(
                    lambda level, prefix, state, step=step: step(level, prefix, pairs=state.pairs), trie, len(h),
                    args.beam, args.k, steering=steering, seen=(h.offsets, h.item))
            emitted += int((items >= 0).sum())
        if device.type == "cuda":
            torch.cuda.synchronize()
        return emitted

    one_pass()  # warm-up: kernels compiled and autotuned
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        emitted = one_pass()
        times.append(time.perf_counter() - t0)
    seconds = statistics.median(times)
    row = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "model": args.model,
           "params": model.num_params(), "dtype": str(dtype).removeprefix("torch."), "users": args.users,
           "batch": args.batch, "beam": args.beam, "k": args.k, "items": args.items, "mean_len": args.mean_len,
           "seconds": seconds, "users_per_s": args.users / seconds, "full_lists": emitted == args.users * args.k}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"bench_generate_{device.type}.json"
    path.write_text(json.dumps(row, indent=1) + "\n")
    print(f"{row['model']} ({row['params']:,} params, {row['dtype']}) on {row['device']}: {row['users']} users, "
          f"beam {args.beam}, {args.items:,} items: {seconds:.3f} s, {row['users_per_s']:,.0f} users/s")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
