"""Model micro-benchmark: training step per backbone and checkpointing, and the cost split that motivated the token
layout (histories encoded once, then each beam-search step runs only the small decoder head).

    python -m e2erec.model.bench --model tiny --out runs/bench-model      # JSON + PNG in --out

Timings are medians over repeats within one run, single-threaded; compare ratios, not absolute numbers, across
machines. Inputs are random histories with random unique codes (the reference codebook).
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from pathlib import Path

import torch
from tqdm import tqdm

from e2erec.config import load_run_config
from e2erec.data.jagged import JaggedBatch
from e2erec.model import REFERENCE_CODEBOOK, GenerativeRecommender, build_model_batch
from e2erec.utils.io import atomic_write_bytes, atomic_write_json


def random_histories(n_seqs: int, mean_len: int, n_items: int, seed: int = 0) -> JaggedBatch:
    """Histories with lengths uniform in [mean_len / 2, 3 mean_len / 2], random items, ratings and hourly-ish gaps."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(mean_len // 2, mean_len * 3 // 2 + 1, (n_seqs,), generator=g)
    offsets = torch.zeros(n_seqs + 1, dtype=torch.int64)
    offsets[1:] = lengths.cumsum(0)
    n = int(offsets[-1])
    feedback = torch.randint(1, 6, (n,), generator=g).float()
    return JaggedBatch(
        offsets=offsets, user=torch.arange(n_seqs), item=torch.randint(0, n_items, (n,), generator=g),
        timestamp=torch.randint(0, 7200, (n,), generator=g).cumsum(0), feedback=feedback,
        label=(feedback >= 4).float(), max_len=int(lengths.max()),
    )


def unique_codes(n_items: int, sizes: list[int], seed: int = 0) -> torch.Tensor:
    """Random distinct code tuples (n_items, L): distinct mixed-radix numbers below prod(sizes), in random order."""
    g = torch.Generator().manual_seed(seed)
    total = 1
    for k in sizes:
        total *= k
    if total < n_items:
        raise ValueError(f"codebook {sizes} has only {total} tuples for {n_items} items")
    if total <= 4 * n_items:
        flat = torch.randperm(total, generator=g)[:n_items]
    else:  # rejection sampling: a permutation of a 2^28-tuple codebook would take seconds
        flat = torch.empty(0, dtype=torch.int64)
        while flat.numel() < n_items:
            flat = torch.cat([flat, torch.randint(0, total, (2 * n_items,), generator=g)]).unique()
        flat = flat[torch.randperm(flat.numel(), generator=g)[:n_items]]
    codes = []
    for k in reversed(sizes):
        codes.append(flat % k)
        flat = flat // k
    return torch.stack(codes[::-1], dim=1)


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up: lazy imports, allocator
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run_bench(model_name: str, n_seqs: int, mean_len: int, beams: int, candidates: int, repeats: int) -> dict:
    base = load_run_config(None, [f"model={model_name}"]).model
    sizes = list(REFERENCE_CODEBOOK)
    n_items = 2000
    codes = unique_codes(n_items, sizes)
    events = random_histories(n_seqs, mean_len, n_items)
    batch = build_model_batch(events, codes, num_candidates=4, max_history=base.max_tokens_per_seq)
    rows = []
    cases = [(b, c) for b in ("transformer", "hstu") for c in (False, True)]
    for backbone, ckpt in tqdm(cases, desc="train steps"):
        cfg = type(base)(**{**base.__dict__, "backbone": backbone, "activation_checkpointing": ckpt})
        torch.manual_seed(0)
        model = GenerativeRecommender(cfg, sizes).train()

        def step(model=model):
            model.zero_grad(set_to_none=True)
            model(batch)["loss"].backward()

        sec = _median_time(step, repeats)
        rows.append({"backbone": backbone, "checkpointing": ckpt, "step_s": sec, "tokens_per_s": batch.n_tokens / sec})

    torch.manual_seed(0)
    model = GenerativeRecommender(base, sizes).eval()
    state = model.encode_histories(events, codes)
    prefix = torch.randint(0, min(sizes), (n_seqs, beams, len(sizes) - 1))
    cand = torch.randint(0, n_items, (n_seqs, candidates))
    inference = {
        "encode_histories_s": _median_time(lambda: model.encode_histories(events, codes), repeats),
        "beam_step_s": _median_time(lambda: model.next_code_logprobs(state, prefix), repeats),
        "score_candidates_s": _median_time(lambda: model.score_candidates(events, cand, codes), repeats),
    }
    inference["beam_step_over_encode"] = inference["beam_step_s"] / inference["encode_histories_s"]
    return {
        "model": model_name, "params": model.num_params(), "n_seqs": n_seqs, "mean_len": mean_len,
        "tokens": batch.n_tokens, "beams": beams, "candidates": candidates, "repeats": repeats,
        "threads": torch.get_num_threads(), "train": rows, "inference": inference,
    }


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    labels = [f"{r['backbone']}\n{'ckpt' if r['checkpointing'] else 'no ckpt'}" for r in result["train"]]
    ax.bar(labels, [r["tokens_per_s"] for r in result["train"]], color=["C0", "C0", "C1", "C1"])
    ax.set_ylabel("training tokens / s (fwd + bwd)")
    ax.set_title(f"{result['model']} ({result['params'] / 1e6:.2f}M params), {result['n_seqs']} sequences, "
                 f"{result['tokens']} tokens, {result['threads']} thread(s)", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny", help="a config under configs/model/")
    p.add_argument("--n-seqs", type=int, default=32)
    p.add_argument("--mean-len", type=int, default=100, help="mean history length in events")
    p.add_argument("--beams", type=int, default=50)
    p.add_argument("--candidates", type=int, default=100)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="runs/bench-model")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = run_bench(args.model, args.n_seqs, args.mean_len, args.beams, args.candidates, args.repeats)
    out = Path(args.out)
    atomic_write_json(out / "bench_model.json", result)
    plot(result, out / "bench_model.png")
    for r in result["train"]:
        print(f"{r['backbone']:>11}  ckpt={r['checkpointing']!s:>5}  {r['step_s'] * 1e3:8.1f} ms/step  "
              f"{r['tokens_per_s']:9.0f} tokens/s")
    inf = result["inference"]
    print(f"encode {result['n_seqs']} histories: {inf['encode_histories_s'] * 1e3:.1f} ms; one beam step "
          f"({result['beams']} beams, last level): {inf['beam_step_s'] * 1e3:.2f} ms "
          f"(x{inf['beam_step_over_encode']:.3f} of encoding); score {result['candidates']} candidates/user: "
          f"{inf['score_candidates_s'] * 1e3:.1f} ms")
    print(f"wrote {out / 'bench_model.json'} and {out / 'bench_model.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
