"""Writes the consolidated model export (the format and its reader: `e2erec.model.export`), loadable without DeepSpeed
and without the training cache: everything generation needs travels in the folder.

    <run_dir>/export/
        model.safetensors    weights, fp32 (the Platt scaling is two buffers in it)
        config.json          the model's config, Hugging Face style (model_type, architectures, sizes)
        config.yaml          the resolved run config (`e2erec train --config config.yaml` retrains it)
        meta.json            format, codebook sizes, catalogue size, step, record; the semantic IDs' digest
        semantic_ids/        the semantic-ID artifact the model was trained with (codes, trie source, centroids,
                             prefix descriptions)
        items.parquet        item index -> the dataset's raw id, title, categories, year
        README.md            the model card: training data, validation metrics, how it was trained and how to use it

Under `train.select=best` the engine also writes each new best-validation state to `<run_dir>/best` in this format
(without the Platt scaling, which is fitted once training ends), and ends the run with those weights. The two
artifacts that never change during a run (semantic IDs, item table) are hard-linked into every export when the
filesystem allows it, so a new best costs the weights only.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from e2erec.config import RunConfig, save_resolved
from e2erec.model.export import FORMAT_VERSION, ITEMS_FILE, SEMANTIC_IDS_DIR
from e2erec.train import distributed as D
from e2erec.utils.io import atomic_dir, atomic_write_json, atomic_write_text, to_dict
from e2erec.utils.manifest import write_manifest


def write_item_table(items, path: Path) -> Path:
    """The item side table an export carries (raw id, title, categories, year per contiguous item index)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"item": pa.array(range(len(items.raw_id)), pa.int64()), "raw_id": items.raw_id,
                      "title": items.title, "categories": pa.array(items.categories, pa.list_(pa.string())),
                      "year": pa.array(items.year, pa.int32())})
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)
    return path


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another filesystem, or one without hard links
        shutil.copy2(src, dst)


def export_model(out_dir: Path, state: dict[str, torch.Tensor], meta: dict[str, Any], cfg: RunConfig,
                 is_main: bool, semantic_ids: Path, item_table: Path) -> Path | None:
    """Write `state` (full, un-sharded weights, identical on every rank) with `meta` (what the run knows: codebook
    sizes, semantic-ID digest, step, record, validation metrics, dataset summary) as a self-contained export, with
    the semantic-ID folder `semantic_ids` and the item table `item_table` inside it. Every rank calls it; the main
    rank writes, atomically, so a reader never sees half an export."""
    if is_main:
        # clone(): tied or aliased tensors become separate entries, which safetensors requires.
        # Floating tensors as fp32; integer buffers (the calibration head's counts) keep their dtype.
        state = {k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).clone().contiguous()
                 for k, v in state.items()}
        meta = {
            "format": FORMAT_VERSION,
            # The catalogue size the model was built with (its calibration counts, or its item-ID table).
            "num_items": int(state["item_count"].numel()) if "item_count" in state else (
                int(state["item_emb.weight"].shape[0]) if "item_emb.weight" in state else 0),
            **meta,
        }
        # The artifact travels inside the export: its reference is relative to the export folder.
        meta["semantic_ids"] = {**meta.get("semantic_ids", {}), "path": SEMANTIC_IDS_DIR}
        with atomic_dir(out_dir) as tmp:
            save_file(state, str(tmp / "model.safetensors"), metadata={"format": str(FORMAT_VERSION)})
            save_resolved(cfg, tmp)
            atomic_write_json(tmp / "config.json", hf_config(cfg, meta))
            atomic_write_json(tmp / "meta.json", meta)
            (tmp / SEMANTIC_IDS_DIR).mkdir()
            for name in ("codes.safetensors", "meta.json", "prefixes.json"):
                if name != "prefixes.json" or (Path(semantic_ids) / name).exists():  # older artifacts have none
                    _link_or_copy(Path(semantic_ids) / name, tmp / SEMANTIC_IDS_DIR / name)
            _link_or_copy(Path(item_table), tmp / ITEMS_FILE)
            atomic_write_text(tmp / "README.md", model_card(cfg, meta))
            write_manifest(tmp)
    D.barrier()
    return out_dir if is_main else None


def hf_config(cfg: RunConfig, meta: dict[str, Any]) -> dict[str, Any]:
    """`config.json` as the Hugging Face Hub reads a model folder: what the model is, and its sizes."""
    m = cfg.model
    return {"model_type": "e2erec", "architectures": ["GenerativeRecommender"], "e2erec_export_format": meta["format"],
            "codebook_sizes": meta["codebook_sizes"], "num_items": meta["num_items"],
            "hidden_size": m.d_model, "num_hidden_layers": m.n_layers, "num_attention_heads": m.n_heads,
            "max_position_embeddings": cfg.data.max_seq_len, "model": to_dict(m)}


def model_card(cfg: RunConfig, meta: dict[str, Any]) -> str:
    """The export's README.md: Hub front matter, then training data, validation metrics, training and usage."""
    data = meta.get("dataset", {})
    name = data.get("name", cfg.data.name)
    fit = meta.get("fit_log", {})
    lines = ["---", "library_name: e2erec", "pipeline_tag: other",
             "tags: [recommendation, generative-retrieval, semantic-ids, sequential-recommendation]",
             f"datasets: [{json.dumps(name)}]", "---", "",
             f"# e2erec generative recommender — {cfg.model.name} on {name}", "",
             ("One sequence model over semantic IDs that generates the next items (trie-constrained beam search) and "
             "scores each with a calibration head, P(positive feedback | history, item)."), "",
             "## Model", "",
             (f"- architecture: {cfg.model.backbone}, {cfg.model.n_layers} layers, d_model {cfg.model.d_model}, "
             f"{cfg.model.n_heads} heads; {meta.get('params', 0):,} parameters"),
             (f"- semantic IDs: {len(meta['codebook_sizes'])} levels, codebook sizes {meta['codebook_sizes']} "
             f"({cfg.tokenizer.embedding} embeddings, {cfg.tokenizer.quantizer}); {meta['num_items']:,} items"), "",
             "## Training data", "",
             f"- dataset: `{name}` (fingerprint `{meta.get('data_fingerprint', '')}`)"]
    if data:
        lines.append(f"- {data.get('n_users', 0):,} users, {data.get('n_items', 0):,} items, "
                     f"{data.get('n_events', 0):,} events; split `{cfg.data.split}`")
    lines += ["", "## Training", "",
              (f"- weights of step {meta['step']} of {meta.get('trained_steps', meta['step'])} "
              f"(`train.select={cfg.train.select}`, metric `{cfg.train.select_metric}`); "
              f"{meta.get('tokens', 0):,} training tokens"),
              f"- stop: {fit.get('stop_reason') or 'max_steps / time limit of the run'}"]
    valid = meta.get("validation") or {}
    flat = {k: v for k, v in {**valid, **valid.get("metrics", {})}.items() if isinstance(v, (int, float))}
    if flat:
        lines += ["", "## Validation metrics", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" for k, v in sorted(flat.items())]
    lines += ["", "## Use", "", "```bash",
              "e2erec generate --export . --users <raw user ids> --k 10        # top-10 per user, in raw item ids",
              "e2erec generate --export . --users all --output predictions.jsonl",
              "e2erec eval --export . --predictions test_top50.parquet          # against the baselines",
              "e2erec train --config config.yaml                                 # retrain from scratch",
              "```", "",
              ("The user histories are read from the dataset named in `config.yaml` (prepared again from its source when "
              "this machine has no cache); the semantic IDs and the item table are in this folder."), ""]
    return "\n".join(lines)
