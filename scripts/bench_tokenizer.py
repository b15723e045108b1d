"""Tokenizer benchmark: RQ-KMeans and RQ-VAE on 1M synthetic 384-d items (L=3, K=256), and MiniLM encode time.

    .venv/bin/python scripts/bench_tokenizer.py                 # full: 1M items, writes runs/bench/bench_tokenizer.{json,png}
    .venv/bin/python scripts/bench_tokenizer.py --items 100000 --out /tmp/bench

Each quantizer runs in its own subprocess so its peak resident memory (ru_maxrss, which includes the input embeddings,
1.5 GB for 1M x 384 float32) is its own. Synthetic embeddings: normalised Gaussians with a power-law spectrum (see
`synthetic_embeddings`). Goal: RQ-KMeans on 1M items < 5 min and < 4 GB.
The machine is shared: wall times are only comparable within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path


def synthetic_embeddings(n: int, d: int = 384, seed: int = 0):
    """Unit vectors from a Gaussian whose per-direction scale falls as 1/sqrt(rank) in a random basis — the decaying
    spectrum of real sentence embeddings (a few strong directions, a long tail)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(d, d, generator=g))[0] * torch.arange(1, d + 1).rsqrt()[:, None]  # (d, d)
    x = torch.empty(n, d)
    for s in range(0, n, 65536):  # in blocks, so generation does not double the peak memory
        m = min(65536, n - s)
        x[s:s + m] = torch.randn(m, d, generator=g) @ basis
    return torch.nn.functional.normalize(x, dim=1, out=x)


def run_one(method: str, n: int, steps: int) -> dict:
    """Run one quantizer (+ disambiguation + trie) in this process; print its row as JSON."""
    import torch

    from e2erec.tokenizer.config import RQVAEConfig, TokenizerConfig
    from e2erec.tokenizer.quantize import quantize
    from e2erec.tokenizer.semantic_ids import disambiguate
    from e2erec.tokenizer.trie import PrefixTrie

    x = synthetic_embeddings(n)
    cfg = TokenizerConfig(levels=3, codebook_size=256, quantizer=method, rq_vae=RQVAEConfig(steps=steps))
    t0 = time.perf_counter()
    q = quantize(x, cfg, progress=True)
    t_quant = time.perf_counter() - t0
    codes, dedup = disambiguate(q.codes)
    PrefixTrie.build(codes, [256] * 3 + ([dedup] if dedup else []))
    t_total = time.perf_counter() - t0
    collision = 1 - torch.unique(q.codes, dim=0).shape[0] / n
    return {
        "method": method, "items": n, "quantize_s": round(t_quant, 1), "total_s": round(t_total, 1),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "recon_error": [round(e, 4) for e in q.level_errors], "collision_rate": round(collision, 4),
        "dedup_level": dedup, "torch_threads": torch.get_num_threads(),
        **({"rq_vae_steps": steps} if method == "rq_vae" else {}),
    }


def encode_ml100k() -> dict:
    """Wall time to encode ml-100k's 1,682 item texts with MiniLM (no cache)."""
    from e2erec.data import load_dataset
    from e2erec.data.config import DataConfig
    from e2erec.tokenizer.config import TokenizerConfig
    from e2erec.tokenizer.embed import encode_item_texts

    inter = load_dataset(DataConfig(name="ml-100k"), progress=False)
    t0 = time.perf_counter()
    emb = encode_item_texts(inter, TokenizerConfig(), None, progress=True)
    return {"method": "minilm_encode_ml100k", "items": emb.shape[0], "total_s": round(time.perf_counter() - t0, 1),
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--rq-vae-steps", type=int, default=1000)
    p.add_argument("--methods", default="rq_kmeans,rq_vae,encode")
    p.add_argument("--out", default="runs/bench/bench_tokenizer", help="output path stem (.json, .png)")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: run one method in this process
    args = p.parse_args()
    if args.one:
        row = encode_ml100k() if args.one == "encode" else run_one(args.one, args.items, args.rq_vae_steps)
        print("ROW " + json.dumps(row))
        return 0

    rows = []
    for method in args.methods.split(","):
        cmd = [sys.executable, __file__, "--one", method, "--items", str(args.items),
               "--rq-vae-steps", str(args.rq_vae_steps)]
        out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=os.environ, check=False)
        if out.returncode != 0:
            print(f"{method}: failed (exit {out.returncode})", file=sys.stderr)
            return 1
        rows.append(json.loads(next(l for l in out.stdout.splitlines() if l.startswith("ROW "))[4:]))
    print(f"\n{'method':<22}{'items':>9}{'wall s':>9}{'peak GB':>9}  recon error/level    collisions")
    for r in rows:
        recon = "/".join(f"{e:.3f}" for e in r.get("recon_error", [])) or "-"
        coll = f"{r['collision_rate']:.4f}" if "collision_rate" in r else "-"
        print(f"{r['method']:<22}{r['items']:>9}{r['total_s']:>9}{r['peak_rss_gb']:>9}  {recon:<20} {coll}")
    load = os.getloadavg()
    report = {"rows": rows, "cpus": os.cpu_count(), "loadavg_1_5_15": load,
              "note": "shared machine: other engineers' jobs ran concurrently"}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3))
    ax.barh([r["method"] for r in rows], [r["total_s"] for r in rows])
    ax.set_xlabel("wall time (s)")
    ax.set_title(f"tokenizer on {args.items:,} items, L=3, K=256 (load avg {load[0]:.1f})")
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=120)
    print(f"saved {out.with_suffix('.json')} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
