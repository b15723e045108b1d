"""The data pipeline: sources -> cached, memory-mapped `Interactions` -> splits -> jagged batches.

    inter = load_dataset(cfg.data)            # prepares once (cached by a fingerprint of source + config)
    split = make_split(inter, cfg.data)       # also sets inter.items.popularity from training events
    users = np.flatnonzero(split.train_end > inter.offsets[:-1])       # users with >= 1 training event
    loader = HistoryLoader(inter, users, split.train_end[users], cfg.data.max_seq_len, max_tokens=4096,
                           seed=cfg.seed, rank=rank, world_size=world)  # = TokenBudgetSampler + gather_histories
    for epoch in range(start_epoch, epochs):
        loader.set_epoch(epoch)
        for batch in loader: ...              # JaggedBatch; loader.state_dict() after the step, for exact resume
    # evaluation: the history before target t of user u is gather_histories(inter, [u], [t], max_len)

`ItemTable.text` holds the source's description where it has one, else a text built from title, year and
categories (MovieLens: "Toy Story (1995). Genres: Animation, Children's, Comedy"), so a content embedder can always
read `text`. Synthetic data's planted ground truth and how to rank items by it: `e2erec.data.synthetic`.
"""

from __future__ import annotations

from e2erec.data.config import DataConfig
from e2erec.data.jagged import HistoryLoader, JaggedBatch, TokenBudgetSampler, gather_histories, to_padded
from e2erec.data.process import open_prepared, prepare
from e2erec.data.split import make_split, training_mask
from e2erec.data.stats import dataset_stats, format_stats
from e2erec.data.types import Interactions, ItemTable, Split

__all__ = [
    "DataConfig", "HistoryLoader", "Interactions", "ItemTable", "JaggedBatch", "Split", "TokenBudgetSampler", "dataset_stats",
    "format_stats", "gather_histories", "load_dataset", "make_split", "prepare", "to_padded", "training_mask",
]


def load_dataset(cfg: DataConfig, *, progress: bool = True) -> Interactions:
    """Prepare the dataset `cfg` names (or reuse its cache) and return it with memory-mapped arrays; under the
    cold-start protocols (`cfg.cold_items`, `cfg.new_users`), rewritten or marked by `e2erec.data.cold` (in
    memory)."""
    inter = open_prepared(prepare(cfg, progress=progress))
    if cfg.cold_items.active:
        from e2erec.data.cold import hold_out_items

        inter = hold_out_items(inter, cfg.cold_items, cfg.max_seq_len)
    if cfg.new_users.active:
        from e2erec.data.cold import hold_out_users

        inter = hold_out_users(inter, cfg.new_users)
    return inter
