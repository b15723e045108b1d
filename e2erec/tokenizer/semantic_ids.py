"""The semantic-ID artifact: unique codes per item, the reverse map (a prefix trie), and how they were made.

On disk (a folder written atomically)::

    codes.safetensors   codes int64 [n_items, n_levels] (+ RQ-KMeans centroids, one [K, d] tensor per level)
    meta.json           version, dataset name + fingerprint + n_items, embedding, encoder, template, quantizer,
                        levels, codebook_sizes (incl. the disambiguation level), metrics
    prefixes.json       what each code prefix means: its items' category and decade shares, in words
                        (`e2erec.tokenizer.describe`); absent in artifacts built before it, then computed on load
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from e2erec.data.types import Interactions, Split
from e2erec.errors import ArtifactMismatchError, IntegrityError
from e2erec.tokenizer import metrics as M
from e2erec.tokenizer.config import TokenizerConfig
from e2erec.tokenizer.embed import data_fingerprint, embed_items
from e2erec.tokenizer.quantize import Quantized, quantize
from e2erec.tokenizer.trie import PrefixTrie
from e2erec.utils.io import atomic_dir, atomic_write_json, fingerprint, to_dict
from e2erec.utils.manifest import verify_manifest, write_manifest

VERSION = 1  # the artifact's format: what `load` reads
# How the codes are computed, part of the cache key only (an artifact of an older build still loads): 2 = items
# without training events get a collaborative half predicted from their text (hybrid), float32 SVD products.
BUILD = 2
PREFIXES_FILE = "prefixes.json"


@dataclass
class SemanticIDs:
    codes: torch.Tensor  # long [n_items, n_levels]
    codebook_sizes: list[int]  # per level, including the disambiguation level when there is one
    meta: dict = field(default_factory=dict)
    centroids: list[torch.Tensor] = field(default_factory=list)
    prefixes: dict = field(default_factory=dict)  # prefix key -> description (`e2erec.tokenizer.describe`)
    _trie: PrefixTrie | None = field(default=None, repr=False)

    @property
    def n_items(self) -> int:
        return self.codes.shape[0]

    @property
    def n_levels(self) -> int:
        return self.codes.shape[1]

    @property
    def trie(self) -> PrefixTrie:
        if self._trie is None:
            self._trie = PrefixTrie.build(self.codes, self.codebook_sizes)
        return self._trie

    def item_of(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes long [..., n_levels] -> item ids long [...]; -1 where the codes name no item."""
        return self.trie.lookup(codes)

    @property
    def described_levels(self) -> int:
        """Prefix depths with descriptions: the quantizer's levels but the last (whose groups are a few items
        each) and never the disambiguation level."""
        return max(1, int(self.meta.get("levels", self.n_levels)) - 1)

    def describe(self, items) -> dict:
        """The prefix descriptions, computed from the item table (`ItemTable`) when the artifact has none."""
        if not self.prefixes:
            from e2erec.tokenizer.describe import describe_prefixes

            self.prefixes = describe_prefixes(self.codes.numpy(), items.categories, items.year, self.described_levels)
        return self.prefixes

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        with atomic_dir(directory) as tmp:
            tensors = {"codes": self.codes.cpu().contiguous()}
            tensors.update({f"centroids.{i}": c.cpu().contiguous() for i, c in enumerate(self.centroids)})
            save_file(tensors, str(tmp / "codes.safetensors"))
            atomic_write_json(tmp / "meta.json", {**self.meta, "codebook_sizes": self.codebook_sizes,
                                                  "version": VERSION})
            if self.prefixes:
                atomic_write_json(tmp / PREFIXES_FILE, self.prefixes)
            write_manifest(tmp)
        return directory

    @classmethod
    def load(cls, directory: str | Path, inter: Interactions | None = None) -> SemanticIDs:
        """Load a saved artifact; with `inter`, check it was built for this dataset (ArtifactMismatchError if not)."""
        directory = Path(directory)
        meta_file, codes_file = directory / "meta.json", directory / "codes.safetensors"
        if not meta_file.exists() or not codes_file.exists():
            raise ArtifactMismatchError(f"{directory}: not a semantic-ID artifact (meta.json / codes.safetensors "
                                        "missing); build one with `e2erec tokenize`")
        # A few MB: digests checked. An export's copy has no manifest of its own; the export's covers it.
        verify_manifest(directory, what="semantic-ID artifact", required=False)
        try:
            meta = json.loads(meta_file.read_text())
        except json.JSONDecodeError as e:
            raise ArtifactMismatchError(f"{meta_file}: line {e.lineno} column {e.colno}: invalid JSON ({e.msg})") \
                from None
        if meta.get("version") != VERSION:
            raise ArtifactMismatchError(f"{directory}: semantic-ID artifact version {meta.get('version')} but this "
                                        f"e2erec reads version {VERSION}; rebuild it with `e2erec tokenize`")
        tensors = load_file(str(codes_file))
        codes = tensors["codes"]
        sizes = [int(k) for k in meta["codebook_sizes"]]
        if codes.ndim != 2 or codes.shape[1] != len(sizes) or codes.shape[0] != meta.get("n_items"):
            raise ArtifactMismatchError(f"{codes_file}: codes of shape {tuple(codes.shape)} do not match meta.json "
                                        f"({meta.get('n_items')} items, codebook_sizes {sizes})")
        if inter is not None:
            check_matches(meta, inter, directory)
        n_centroids = sum(1 for k in tensors if k.startswith("centroids."))
        centroids = [tensors[f"centroids.{i}"] for i in range(n_centroids)]
        prefixes = {}
        if (directory / PREFIXES_FILE).exists():
            try:
                prefixes = json.loads((directory / PREFIXES_FILE).read_text())
            except json.JSONDecodeError as e:
                raise ArtifactMismatchError(f"{directory / PREFIXES_FILE}: line {e.lineno} column {e.colno}: "
                                            f"invalid JSON ({e.msg})") from None
        return cls(codes, sizes, meta, centroids, prefixes)


def check_matches(meta: dict, inter: Interactions, where: str | Path) -> None:
    """Raise ArtifactMismatchError naming what differs between an artifact's dataset and `inter`."""
    fp, name = data_fingerprint(inter), inter.meta.get("name", "?")
    diffs = []
    if meta.get("n_items") != inter.n_items:
        diffs.append(f"{meta.get('n_items')} items vs {inter.n_items}")
    if meta.get("data_fingerprint") != fp:
        diffs.append(f"data fingerprint {meta.get('data_fingerprint')} vs {fp}")
    if diffs:
        raise ArtifactMismatchError(
            f"{where}: semantic IDs were built for dataset {meta.get('dataset')!r} but are used with {name!r}: "
            + "; ".join(diffs) + ". Rebuild them with `e2erec tokenize`."
        )


def disambiguate(codes: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Append a level numbering items that share all codes (0, 1, 2, ... in item order); (codes, its size).

    Returns the codes unchanged and size 0 when every tuple is already unique.
    """
    _, inverse, counts = torch.unique(codes, dim=0, return_inverse=True, return_counts=True)
    if int(counts.max()) == 1:
        return codes, 0
    order = torch.argsort(inverse, stable=True)  # items grouped by tuple, item order within a group
    first = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(inverse)
    rank[order] = torch.arange(len(inverse), device=codes.device) - first[inverse[order]]
    return torch.cat([codes, rank[:, None]], 1), int(counts.max())


def build_semantic_ids(
    inter: Interactions, split: Split | None, cfg: TokenizerConfig, cache_dir: str | Path | None,
    progress: bool = True, *, embeddings: np.ndarray | None = None,
) -> tuple[SemanticIDs, dict]:
    """Embed items (cached), quantize, make every ID unique, compute metrics. `embeddings` skips the embedding step
    (used by `--compare` so all quantizers see the same input)."""
    report: dict = {}
    if embeddings is None:
        embeddings, report = embed_items(inter, split, cfg, cache_dir, progress=progress)
    t0 = time.perf_counter()
    q = quantize(embeddings, cfg, progress=progress)
    report["quantize_s"] = round(time.perf_counter() - t0, 2)
    codes_np = q.codes.cpu().numpy()
    metrics = quality_metrics(q, codes_np, inter, cfg, embeddings)
    codes, dedup = disambiguate(q.codes.cpu())
    sizes = [cfg.codebook_size] * cfg.levels + ([dedup] if dedup else [])
    metrics.update(report)
    metrics["dedup_level_size"] = dedup
    meta = {
        "dataset": inter.meta.get("name", "?"), "data_fingerprint": data_fingerprint(inter),
        "n_items": inter.n_items, "embedding": cfg.embedding, "encoder": cfg.encoder, "template": cfg.template,
        "quantizer": cfg.quantizer, "levels": cfg.levels, "tokenizer_config": to_dict(cfg), "metrics": metrics,
    }
    sem = SemanticIDs(codes, sizes, meta, [c.cpu() for c in q.centroids])
    sem.describe(inter.items)
    return sem, metrics


def quality_metrics(q: Quantized, codes: np.ndarray, inter: Interactions, cfg: TokenizerConfig,
                    embeddings: np.ndarray) -> dict:
    """Codebook utilization per level, collision rate (before disambiguation), relative reconstruction error per
    level, and first-level category lift where items have categories."""
    util = M.utilization(codes, [cfg.codebook_size] * cfg.levels)
    out = {
        "quantizer": cfg.quantizer,
        "used": [u["used"] for u in util],
        "entropy": [u["entropy"] for u in util],
        **M.collisions(codes),
        "recon_error": q.level_errors[-1],
        "recon_error_per_level": q.level_errors,
        "genre_lift": M.genre_lift(codes[:, 0], inter.items.categories),
        **q.info,
    }
    return out


TABLE_COLUMNS = [
    ("used", "used/level"), ("entropy", "entropy/level"), ("collision_rate", "collisions"), ("max_group", "max group"),
    ("recon_error_per_level", "recon err/level"), ("genre_lift", "genre lift"), ("quantize_s", "time s"),
]


def metrics_table(rows: dict[str, dict]) -> str:
    return M.format_table(rows, TABLE_COLUMNS)


def artifact_dir(cache_dir: str | Path, inter: Interactions, split: Split | None, cfg: TokenizerConfig) -> Path:
    """Where the artifact for (dataset, split, tokenizer config) lives: `<cache>/semantic_ids/<name>-<key>/`."""
    split_digest = None
    if split is not None:  # the collaborative embedding (and the no-text fallback) read the training split
        split_digest = hashlib.sha256(np.ascontiguousarray(split.train_end, dtype=np.int64).tobytes()).hexdigest()
    key = fingerprint("semantic-ids", VERSION, BUILD, data_fingerprint(inter), split_digest, to_dict(cfg))
    return Path(cache_dir) / "semantic_ids" / f"{inter.meta.get('name', 'data')}-{key}"


def load_or_build_semantic_ids(
    inter: Interactions, split: Split | None, cfg: TokenizerConfig, cache_dir: str | Path, *, force: bool = False,
    progress: bool = True,
) -> tuple[SemanticIDs, Path, bool]:
    """The cached artifact for this dataset + tokenizer config, built and saved first if missing.

    Returns (semantic IDs, their folder, whether they were built now). Train/eval/run use this so that they share
    one artifact with `e2erec tokenize`.
    """
    directory = artifact_dir(cache_dir, inter, split, cfg)
    if not force and (directory / "meta.json").exists():
        try:
            return SemanticIDs.load(directory, inter), directory, False
        except IntegrityError as e:  # a cache: rebuilt from the dataset, which is what it was built from
            print(f"[e2erec] warning: {e}; rebuilding it", file=sys.stderr, flush=True)
    sem, _ = build_semantic_ids(inter, split, cfg, cache_dir, progress=progress)
    sem.save(directory)
    return sem, directory, True
