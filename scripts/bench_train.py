"""Training throughput, and what the jagged layout saves over padding. Table on stdout, JSON + plot in --out.

    python scripts/bench_train.py                      # CPU: tokens/s (tiny, small on ml-100k) + jagged vs padded
    python scripts/bench_train.py --mode gpu           # GPU: tokens/s + MFU for base and 1b in bf16

1. Engine throughput: the real DeepSpeed engine (world size 1, ZeRO-0, fp32 on CPU / bf16 on GPU) training
   `GenerativeRecommender` on MovieLens-100K batches; tokens/s = training tokens / wall time over the timed steps
   (after warm-up steps). MFU (GPU) = flops_per_token(mean sequence length) x tokens/s / peak (PaLM appendix B).
2. Jagged vs padded (CPU, same model and weights): a skewed length distribution (lognormal, mean/max ~= 0.25)
   trained as the engine does (packed tokens + offsets, `e2erec_kernels.jagged_attention`) and as a padded
   [B, max_len] batch through dense masked attention (SDPA over [B, heads, max_len, max_len] with the same bias
   and mask; the left padding is masked out as keys, its queries attend only themselves). Step = forward + backward.
   Activation memory = bytes of the tensors autograd saves for backward (distinct storages), the memory that grows
   with the batch; peak RSS is process-wide and noisy on a shared machine. The script checks both variants give the
   same loss before timing them.
Timings are medians over repeats within one run; report their ratios, not absolute numbers, on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from e2erec_kernels.reference import pair_bias

from e2erec.config import load_run_config
from e2erec.model import GenerativeRecommender, ModelBatch, build_model_batch

ROOT = Path(__file__).resolve().parent.parent

FAST_TOKENIZER = ["tokenizer.embedding=collaborative", "tokenizer.quantizer=random"]


# ------------------------------------------------------------------------------------------ 1. engine throughput


def engine_throughput(model_name: str, steps: int, warmup: int, batch_tokens: int, device: str, out: Path,
                      workers: int = 0) -> dict:
    """tokens/s of the real engine; the semantic IDs' values do not change the cost, only their codebook sizes.
    `workers`: train.num_workers, threads building batches ahead of the step (0 = in the step)."""
    from e2erec.train import distributed as D
    from e2erec.train.engine import Trainer
    from e2erec.train.observe import peak_tflops
    from e2erec.train.task import RecTask

    precision = "bf16" if device == "cuda" else "fp32"
    cfg = load_run_config(None, [
        *FAST_TOKENIZER, f"model={model_name}", f"train.batch_tokens={batch_tokens}", f"train.precision={precision}",
        f"train.device={device}", f"train.max_steps={steps + warmup}", "train.tensorboard=false",
        f"train.num_workers={workers}", f"out_dir={out / ('run-' + model_name)}",
    ])
    info = D.init_distributed(device)
    task = RecTask.from_config(cfg, info)
    trainer = Trainer(cfg, task, info)
    for _ in range(warmup):
        trainer.train_step()
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    tokens0, t0 = trainer.tokens, time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    sync()
    dt = time.perf_counter() - t0
    tokens = trainer.tokens - tokens0
    trainer._close_stream()
    row = {"model": model_name, "device": device, "precision": precision, "workers": workers,
           "params": trainer.n_params,
           "tokens": tokens, "seconds": dt, "tokens_per_s": tokens / dt, "steps": steps}
    peak = peak_tflops(info.device, 0.0)
    if peak:
        seq_len = trainer.tokens / max(trainer.n_seqs, 1)
        row["mfu"] = trainer.engine.module.flops_per_token(round(seq_len)) * tokens / dt / (peak * 1e12)
    return row


# ------------------------------------------------------------------------------------------ 2. jagged vs padded


def skewed_events(n_seqs: int, max_len: int, mean_ratio: float, seed: int, n_items: int):
    """Histories with lognormal lengths clipped to [2, max_len], tuned so mean/max ~= mean_ratio."""
    rng = np.random.default_rng(seed)
    raw = rng.lognormal(0.0, 1.0, n_seqs)
    lengths = np.clip(np.round(raw * mean_ratio * max_len / raw.mean()), 2, max_len).astype(np.int64)
    lengths[0] = max_len  # the batch's longest sequence sets the padded width
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    n = int(offsets[-1])
    ts = np.cumsum(rng.integers(1, 5000, n))
    events = type("Events", (), {})()
    events.offsets = torch.from_numpy(offsets)
    events.item = torch.from_numpy(rng.integers(0, n_items, n))
    events.timestamp = torch.from_numpy(ts)
    events.feedback = torch.from_numpy(rng.integers(1, 6, n).astype(np.float32))
    events.label = (events.feedback >= 4).float()
    return events, lengths


def pad_batch(mb: ModelBatch) -> tuple[ModelBatch, torch.Tensor]:
    """Left-pad every sequence of a token batch to max_len: (padded batch with uniform offsets, pad lengths [B]).

    Left padding keeps each sequence's targets last (where the target-aware mask expects them); pad rows are
    BOS-like tokens that no real query attends (see `padded_attention`) and no loss reads.
    """
    B, L = mb.offsets.numel() - 1, mb.max_len
    lengths = mb.offsets.diff()
    pad = L - lengths  # [B]
    # Row of real token j of sequence b in the padded [B * L] layout.
    seq = torch.repeat_interleave(torch.arange(B), lengths)
    new_row = seq * L + pad[seq] + (torch.arange(mb.n_tokens) - mb.offsets[:-1][seq])  # [N]

    def scatter(x: torch.Tensor, fill) -> torch.Tensor:
        out = torch.full((B * L, *x.shape[1:]), fill, dtype=x.dtype)
        out[new_row] = x
        return out

    first_ts = mb.timestamp[mb.offsets[:-1]]
    timestamp = first_ts.repeat_interleave(L)
    timestamp[new_row] = mb.timestamp
    padded = ModelBatch(
        offsets=torch.arange(B + 1) * L, max_len=L, codes=scatter(mb.codes, 0), item=scatter(mb.item, 0), is_bos=scatter(mb.is_bos, True),
        feedback_id=scatter(mb.feedback_id, 0), label_id=scatter(mb.label_id, 0),
        gap_id=scatter(mb.gap_id, int(mb.gap_id.max())), timestamp=timestamp, num_targets=mb.num_targets,
        gen_index=new_row[mb.gen_index], gen_codes=mb.gen_codes, gen_mask=mb.gen_mask, calib_index=new_row[mb.calib_index],
        calib_label=mb.calib_label, calib_item=mb.calib_item, last_index=new_row[mb.last_index],
        loss_weights=mb.loss_weights, targets_counted=mb.targets_counted,
    )
    return padded, pad


def padded_attention(pad: torch.Tensor):
    """Dense masked attention over [B, heads, L, L] with the kernels' mask and bias semantics (softmax kind)."""

    def attend(q, k, v, offsets, max_len, *, num_targets=None, timestamps=None, pos_bias=None, time_bias=None,
               kind="softmax", **_):
        B, L = offsets.numel() - 1, max_len
        H, D = q.shape[1], q.shape[2]
        q4, k4, v4 = (x.view(B, L, H, D).transpose(1, 2) for x in (q, k, v))  # (B, heads, L, head_dim)
        i = torch.arange(L)
        col = i[None, :] - pad[:, None]  # (B, L): index inside the real sequence, < 0 on padding
        length = L - pad
        hist = (length - num_targets)[:, None]  # (B, 1)
        pos = col.clamp(min=0).minimum(hist)  # effective positions (targets share the slot after the history)
        allowed = (i[None, None, :] <= i[None, :, None]) & (col[:, None, :] >= 0)  # causal, real keys only
        both_targets = (col[:, :, None] >= hist[:, :, None]) & (col[:, None, :] >= hist[:, :, None])
        allowed &= ~(both_targets & (i[None, :, None] != i[None, None, :]))
        allowed |= torch.eye(L, dtype=torch.bool)[None]  # a padding query sees itself: no empty softmax row
        bias = pair_bias(pos, timestamps.view(B, L), pos_bias, time_bias)  # (B, heads, L, L)
        mask = bias.masked_fill(~allowed[:, None], float("-inf")).to(q.dtype)
        out = F.scaled_dot_product_attention(q4, k4, v4, attn_mask=mask)  # (B, heads, L, head_dim)
        return out.transpose(1, 2).reshape(B * L, H, D)

    return attend


@contextmanager
def saved_tensor_bytes():
    """Counts the distinct storages autograd saves for backward while the block runs: result["bytes"]."""
    seen: dict[int, int] = {}
    result = {"bytes": 0}

    def pack(t: torch.Tensor):
        st = t.untyped_storage()
        seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield result
    result["bytes"] = sum(seen.values())


@contextmanager
def model_attention(fn):
    import e2erec.model.model as M

    before = M.jagged_attention
    M.jagged_attention = fn
    try:
        yield
    finally:
        M.jagged_attention = before


def jagged_vs_padded(model_name: str, n_seqs: int, max_len: int, repeats: int) -> dict:
    cfg = load_run_config(None, [f"model={model_name}"])
    sizes = [256, 256, 256]
    torch.manual_seed(0)
    model = GenerativeRecommender(cfg.model, sizes)
    events, lengths = skewed_events(n_seqs, max_len, 0.25, seed=0, n_items=4000)
    codes = torch.randint(0, 256, (4000, 3))
    mb = build_model_batch(events, codes, num_candidates=4, generator=torch.Generator().manual_seed(0),
                           num_time_buckets=cfg.model.num_time_buckets)
    padded, pad = pad_batch(mb)

    def step(batch, attention=None):
        model.zero_grad(set_to_none=True)
        with model_attention(attention) if attention else _null(), saved_tensor_bytes() as mem:
            out = model(batch)
        out["loss"].backward()
        return float(out["loss"].detach()), mem["bytes"]

    loss_j, mem_j = step(mb)
    loss_p, mem_p = step(padded, padded_attention(pad))
    if not math.isclose(loss_j, loss_p, rel_tol=1e-4):
        raise AssertionError(f"padded and jagged disagree: loss {loss_p} vs {loss_j}")
    times = {"jagged": [], "padded": []}
    for _ in range(repeats):  # interleaved, so machine noise hits both alike
        t = time.perf_counter()
        step(mb)
        times["jagged"].append(time.perf_counter() - t)
        t = time.perf_counter()
        step(padded, padded_attention(pad))
        times["padded"].append(time.perf_counter() - t)
    tj, tp = statistics.median(times["jagged"]), statistics.median(times["padded"])
    return {
        "model": model_name, "n_seqs": n_seqs, "max_len": max_len, "mean_over_max": float(lengths.mean() / max_len),
        "tokens_jagged": mb.n_tokens, "tokens_padded": padded.n_tokens, "loss": loss_j,
        "step_s_jagged": tj, "step_s_padded": tp, "speedup": tp / tj,
        "act_mib_jagged": mem_j / 2**20, "act_mib_padded": mem_p / 2**20, "memory_ratio": mem_p / mem_j,
        "repeats": repeats,
    }


@contextmanager
def _null():
    yield


# ------------------------------------------------------------------------------------------ main


def plot(rows: list[dict], versus: dict | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = 1 + (versus is not None) * 2
    fig, axes = plt.subplots(1, n, figsize=(4 * n, 3.2))
    axes = np.atleast_1d(axes)
    axes[0].bar([f"{r['model']}\nworkers={r['workers']}" for r in rows], [r["tokens_per_s"] for r in rows],
                color="tab:blue")
    axes[0].set_ylabel("training tokens / s")
    axes[0].set_title(f"engine throughput ({rows[0]['device']}, {rows[0]['precision']})")
    if versus:
        axes[1].bar(["jagged", "padded"], [versus["step_s_jagged"] * 1e3, versus["step_s_padded"] * 1e3],
                    color=["tab:green", "tab:red"])
        axes[1].set_ylabel("fwd+bwd step (ms)")
        axes[1].set_title(f"{versus['model']}, mean/max={versus['mean_over_max']:.2f}")
        axes[2].bar(["jagged", "padded"], [versus["act_mib_jagged"], versus["act_mib_padded"]],
                    color=["tab:green", "tab:red"])
        axes[2].set_ylabel("saved activations (MiB)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mode", choices=["cpu", "gpu"], default="cpu")
    p.add_argument("--models", nargs="*", default=None, help="default: tiny small (cpu), base 1b (gpu)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch-tokens", type=int, default=None, help="default 4096 (cpu), 32768 (gpu)")
    p.add_argument("--workers", type=int, nargs="*", default=[0, 1],
                   help="train.num_workers values to compare (batches built in the step vs by threads ahead of it)")
    p.add_argument("--versus-model", default="tiny", help="model for jagged vs padded (cpu mode)")
    p.add_argument("--versus-seqs", type=int, default=32, help="sequences of the jagged vs padded step (0: skip it)")
    p.add_argument("--versus-max-len", type=int, default=256)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", type=Path, default=ROOT / "bench_out" / "train")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    gpu = args.mode == "gpu"
    if gpu and not torch.cuda.is_available():
        p.error("--mode gpu needs a CUDA device")
    if not gpu:
        torch.set_num_threads(1)  # one core, as a data-parallel rank on a laptop gets; stable timings
    models = args.models or (["base", "1b"] if gpu else ["tiny", "small"])
    batch_tokens = args.batch_tokens or (32768 if gpu else 4096)

    rows = [engine_throughput(m, args.steps, args.warmup, batch_tokens, "cuda" if gpu else "cpu", args.out, w)
            for m in models for w in args.workers]
    versus = None if gpu or args.versus_seqs == 0 else jagged_vs_padded(args.versus_model, args.versus_seqs, args.versus_max_len,
                                                args.repeats)
    print(f"\n{'model':<8}{'device':<8}{'prec':<6}{'workers':>8}{'params':>12}{'tokens/s':>12}{'vs 0':>7}{'MFU':>8}")
    base = {r["model"]: r["tokens_per_s"] for r in rows if r["workers"] == 0}
    for r in rows:
        mfu = f"{r['mfu']:.1%}" if "mfu" in r else "-"
        ratio = f"{r['tokens_per_s'] / base[r['model']]:.2f}x" if r["model"] in base else "-"
        print(f"{r['model']:<8}{r['device']:<8}{r['precision']:<6}{r['workers']:>8}{r['params']:>12,}"
              f"{r['tokens_per_s']:>12,.0f}{ratio:>7}{mfu:>8}")
    if versus:
        v = versus
        print(f"\njagged vs padded ({v['model']}, {v['n_seqs']} seqs, max_len {v['max_len']}, "
              f"mean/max {v['mean_over_max']:.2f}; tokens {v['tokens_jagged']} vs {v['tokens_padded']})")
        print(f"  fwd+bwd step  jagged {v['step_s_jagged'] * 1e3:8.1f} ms   padded {v['step_s_padded'] * 1e3:8.1f} ms"
              f"   padded/jagged {v['speedup']:.2f}x")
        print(f"  activations   jagged {v['act_mib_jagged']:8.1f} MiB  padded {v['act_mib_padded']:8.1f} MiB"
              f"  padded/jagged {v['memory_ratio']:.2f}x")
    result = {"mode": args.mode, "throughput": rows, "jagged_vs_padded": versus, "argv": sys.argv[1:]}
    (args.out / f"bench_train_{args.mode}.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(rows, versus, args.out / f"bench_train_{args.mode}.png")
    print(f"\nwrote {args.out / f'bench_train_{args.mode}.json'} and .png")
    from e2erec.train import distributed as D

    D.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
