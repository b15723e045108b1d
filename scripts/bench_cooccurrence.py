"""What a windowed or sampled co-occurrence costs the collaborative semantic IDs, on real data (ml-100k default).

    .venv/bin/python scripts/bench_cooccurrence.py                          # ml-100k, writes bench_out/cooccurrence.json
    .venv/bin/python scripts/bench_cooccurrence.py --variants 0:0 20:4 50:4 --data ml-1m

Each variant `window:samples` builds the collaborative embedding (`tokenizer.cooccurrence_window` /
`tokenizer.cooccurrence_samples`; 0:0 is X^T X over whole histories, the exact reference) and RQ-KMeans semantic IDs
(3 x 256) on the training split, and reports:

    pairs      co-occurring item pairs held (the upper triangle's entries): the tokenizer's memory
    embed_s    wall seconds of the embedding (shared machine: compare within one run)
    knn_hr@10  validation next item among the 10 nearest items (cosine) to the user's last training item, and its
               paired difference from the first variant with a 95% interval (same targets)
    sid_hit    validation next item shares its first-level code with the user's last training item
    genre_lift P(same genre | same first code) / P(same genre), collisions: the tokenizer's own quality metrics

Validation targets only: the test split is not read.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def knn_hits(emb, queries, targets, k: int = 10, block: int = 4096):
    """Per target: is it among the k items most similar (cosine) to its query item, the query itself excluded."""
    import numpy as np

    hits = np.zeros(len(queries), bool)
    for s in range(0, len(queries), block):
        q, t = queries[s:s + block], targets[s:s + block]
        sim = emb[q] @ emb.T
        sim[np.arange(len(q)), q] = -np.inf
        top = np.argpartition(-sim, k, axis=1)[:, :k]
        hits[s:s + block] = (top == t[:, None]).any(axis=1)
    return hits


def paired_delta(a, b) -> tuple[float, float]:
    """Mean of a - b over the same targets and its 95% half-width (normal approximation of the paired difference)."""
    d = a.astype(float) - b.astype(float)
    return float(d.mean()), float(1.96 * d.std(ddof=1) / len(d) ** 0.5)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="ml-100k", help="a configs/data preset")
    p.add_argument("--variants", nargs="*", default=["0:0", "20:0", "20:4", "50:4", "10:2"],
                   help="window:samples pairs (0:0 = whole histories)")
    p.add_argument("--out", type=Path, default=Path("bench_out/cooccurrence.json"))
    args = p.parse_args()

    import numpy as np
    import scipy.sparse as sp

    from e2erec.config import load_run_config
    from e2erec.data import load_dataset, make_split
    from e2erec.tokenizer import embed
    from e2erec.tokenizer.semantic_ids import build_semantic_ids

    cfg = load_run_config(None, [f"data={args.data}", "tokenizer=collaborative"])
    inter = load_dataset(cfg.data, progress=False)
    split = make_split(inter, cfg.data)
    valid = np.asarray(split.valid)
    users = inter.user_of(valid)
    keep = split.train_end[users] > inter.offsets[:-1][users]  # a training event to query from
    targets = np.asarray(inter.item)[valid[keep]]
    queries = np.asarray(inter.item)[split.train_end[users[keep]] - 1]

    rows, hits = [], []
    for variant in args.variants:
        window, samples = (int(v) for v in variant.split(":"))
        tcfg = load_run_config(None, [f"data={args.data}", "tokenizer=collaborative",
                                      f"tokenizer.cooccurrence_window={window}",
                                      f"tokenizer.cooccurrence_samples={samples}"]).tokenizer
        if window:
            pairs = embed.windowed_cooccurrence(inter, split, window, samples, tcfg.seed).nnz
        else:
            x = embed.training_matrix(inter, split)
            pairs = sp.triu(x.T @ x, k=1).nnz
        t0 = time.perf_counter()
        emb, _ = embed.collaborative_embeddings(inter, split, tcfg.collaborative_dim, tcfg.seed, window, samples)
        embed_s = time.perf_counter() - t0
        sem, metrics = build_semantic_ids(inter, split, tcfg, cfg.data.cache_dir, embeddings=emb, progress=False)
        first = np.asarray(sem.codes)[:, 0]
        hits.append(knn_hits(emb, queries, targets))
        delta, half = paired_delta(hits[-1], hits[0])
        rows.append({
            "window": window, "samples": samples, "pairs": int(pairs), "embed_s": round(embed_s, 2),
            "knn_hr@10": float(hits[-1].mean()), "knn_hr@10_delta": delta, "knn_hr@10_delta_95": half,
            "sid_hit": float((first[queries] == first[targets]).mean()),
            "genre_lift": metrics.get("genre_lift"), "collision_rate": metrics.get("collision_rate"),
        })
        print(json.dumps(rows[-1]), flush=True)

    ref = rows[0]
    print(f"\n{args.data}: {len(targets)} validation targets; relative to {ref['window']}:{ref['samples']}")
    print(f"{'window:samples':>15} {'pairs':>10} {'embed_s':>8} {'knn_hr@10':>10} {'paired delta (95%)':>20} "
          f"{'sid_hit':>8} {'genre_lift':>10}")
    for r in rows:
        lift = f"{r['genre_lift']:.3f}" if isinstance(r["genre_lift"], float) else "-"
        delta = f"{r['knn_hr@10_delta']:+.4f} ± {r['knn_hr@10_delta_95']:.4f}"
        print(f"{r['window']:>7}:{r['samples']:<7} {r['pairs']:>10,} {r['embed_s']:>8.2f} {r['knn_hr@10']:>10.4f} "
              f"{delta:>20} {r['sid_hit']:>8.4f} {lift:>10}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"data": args.data, "n_targets": len(targets), "rows": rows}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
