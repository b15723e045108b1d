"""Semantic IDs: item content -> embedding -> residual codes -> unique IDs + prefix trie.

Public API (imported lazily so that loading configs does not import torch/transformers)::

    build_semantic_ids(inter, split, cfg, cache_dir) -> (SemanticIDs, metrics)
    SemanticIDs.load(dir, inter=None) / .save(dir); .codes, .codebook_sizes, .item_of(codes), .trie
    encode_item_texts(inter, cfg, cache_dir) -> np.ndarray [n_items, d]   (reused by the LLM-as-plugin baseline)
"""

from __future__ import annotations

_EXPORTS = {
    "SemanticIDs": "e2erec.tokenizer.semantic_ids",
    "build_semantic_ids": "e2erec.tokenizer.semantic_ids",
    "PrefixTrie": "e2erec.tokenizer.trie",
    "encode_item_texts": "e2erec.tokenizer.embed",
    "embed_items": "e2erec.tokenizer.embed",
    "render_item_texts": "e2erec.tokenizer.embed",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'e2erec.tokenizer' has no attribute {name!r}")


__all__ = list(_EXPORTS)
