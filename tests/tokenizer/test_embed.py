"""Item texts, the collaborative embedding (training events only) and the explicit no-text fallback."""

from __future__ import annotations

import numpy as np
import pytest

from e2erec.config import ConfigError, from_dict
from e2erec.errors import DataError
from e2erec.tokenizer.config import TokenizerConfig
from e2erec.tokenizer.embed import (
    collaborative_embeddings,
    embed_items,
    render_item_texts,
    training_matrix,
    windowed_cooccurrence,
)


def test_template_rendering_drops_unknowns_and_repeats(make_tiny):
    inter, _ = make_tiny(n_items=3)
    inter.items.year[1] = -1
    inter.items.text[2] = inter.items.title[2] + " (1992). Genres: Drama"  # a loader-built text repeating the title
    texts = render_item_texts(inter, "{title} ({year}). Genres: {categories}. {text}")
    assert texts[0] == "Explosive movie number 0 (1990). Genres: Action."
    assert texts[1] == "Funny movie number 1. Genres: Comedy."
    assert texts[2] == "Tearful movie number 2 (1992). Genres: Drama."


def test_unknown_template_field_is_a_config_error():
    with pytest.raises(ConfigError, match=r"template field \{plot\} is unknown; valid fields: title, year"):
        from_dict(TokenizerConfig, {"template": "{title}: {plot}"}, "configs/tokenizer/x.yaml")


def test_collaborative_embedding_reads_training_events_only(make_tiny):
    inter, split = make_tiny()
    a, cold = collaborative_embeddings(inter, split, 8)
    assert a.shape == (24, 8) and cold == 0
    assert np.allclose(np.linalg.norm(a, axis=1), 1, atol=1e-5)
    held_out = np.concatenate([split.valid, split.test])
    inter.item[held_out] = (inter.item[held_out] + 7) % 24  # change only validation/test events
    b, _ = collaborative_embeddings(inter, split, 8)
    assert np.allclose(a, b, atol=1e-5)


def test_windowed_cooccurrence_counts_close_training_pairs_and_covers_whole_histories(make_tiny):
    """Brute force over each user's training history: pairs at most w apart, both orders, held as the strict upper
    triangle; a window as long as the longest history sees every pair that X^T X does (X^T X counts a user's pair
    once, the window every time)."""
    inter, split = make_tiny()
    w = 3
    upper = windowed_cooccurrence(inter, split, w).toarray()
    assert not np.tril(upper).any()
    c = upper + upper.T
    want = np.zeros_like(c)
    longest = 0
    for u in range(inter.n_users):
        hist = inter.item[inter.offsets[u]:split.train_end[u]]
        longest = max(longest, len(hist))
        for i in range(len(hist)):
            for j in range(i + 1, min(i + w + 1, len(hist))):
                want[hist[i], hist[j]] += 1
                want[hist[j], hist[i]] += 1
    np.fill_diagonal(want, 0)
    np.testing.assert_array_equal(c, want)
    full = windowed_cooccurrence(inter, split, longest).toarray()
    full = (full + full.T) > 0
    x = training_matrix(inter, split)
    xtx = (x.T @ x).toarray()
    np.fill_diagonal(xtx, 0)
    off = ~np.eye(len(c), dtype=bool)
    np.testing.assert_array_equal(full[off], (xtx > 0)[off])
    emb, cold = collaborative_embeddings(inter, split, 8, window=w)
    assert emb.shape == (24, 8) and cold == 0


def test_sampled_cooccurrence_keeps_a_seeded_fraction_of_window_pairs(make_tiny, monkeypatch):
    """samples s < w keeps each window pair with probability s / w: a subset of the window's pairs, about s / w of
    their count, the same for one seed; buffered flushes give the same matrix as one flush; s >= w is the full window."""
    from e2erec.tokenizer import embed

    inter, split = make_tiny()
    w = 4
    full = windowed_cooccurrence(inter, split, w)
    half = windowed_cooccurrence(inter, split, w, samples=2, seed=1)
    assert (half.toarray() <= full.toarray()).all() and half.nnz < full.nnz
    assert 0.4 < half.sum() / full.sum() < 0.6
    np.testing.assert_array_equal(half.toarray(), windowed_cooccurrence(inter, split, w, samples=2, seed=1).toarray())
    assert (half.toarray() != windowed_cooccurrence(inter, split, w, samples=2, seed=2).toarray()).any()
    np.testing.assert_array_equal(windowed_cooccurrence(inter, split, w, samples=w).toarray(), full.toarray())
    monkeypatch.setattr(embed, "PAIR_BUFFER", 7)  # a flush after every distance
    np.testing.assert_array_equal(windowed_cooccurrence(inter, split, w).toarray(), full.toarray())


def test_ppmi_in_place_equals_the_dense_formula_in_any_block_size(monkeypatch):
    import scipy.sparse as sp

    from e2erec.tokenizer import embed

    rng = np.random.default_rng(0)
    counts = np.triu(rng.poisson(0.4, (40, 40)).astype(np.float64), k=1)
    counts[7] = counts[:, 7] = 0  # an item without co-occurrence
    full = counts + counts.T
    row = full.sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        want = np.where(full > 0, np.maximum(np.log(full * full.sum() / np.outer(row, row)), 0), 0)
    for block in (5, 1 << 24):
        monkeypatch.setattr(embed, "PPMI_BLOCK", block)
        upper = sp.csr_matrix(counts)
        assert embed.ppmi_in_place(upper) == 1
        got = upper.toarray()
        np.testing.assert_allclose(got + got.T, want, rtol=1e-12)
        assert (upper.data > 0).all()
    with pytest.raises(DataError, match="no two items"):
        embed.ppmi_in_place(sp.csr_matrix((3, 3)))


def test_symmetric_svd_lowrank_equals_torch_svd_lowrank():
    """Same seeded draws and algorithm as torch.svd_lowrank on the full symmetric COO tensor, so the same factors to
    float32 rounding, from the strict upper triangle alone."""
    import scipy.sparse as sp
    import torch

    from e2erec.tokenizer.embed import symmetric_svd_lowrank

    upper = sp.triu(sp.random(200, 200, density=0.05, random_state=1), k=1, format="csr")
    m = (upper + upper.T).tocsr()
    u, s = symmetric_svd_lowrank(upper, 12, niter=6, seed=3)
    torch.manual_seed(3)
    coo = m.tocoo()
    a = torch.sparse_coo_tensor(np.vstack([coo.row, coo.col]), coo.data, m.shape)
    u_ref, s_ref, _ = torch.svd_lowrank(a.to(torch.float64), q=12, niter=6)
    # The products run in float32: singular values to float32 rounding, and the same subspace.
    torch.testing.assert_close(s, s_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(u @ u.T, u_ref @ u_ref.T, rtol=0, atol=1e-4)


def test_items_without_text_fall_back_to_collaborative_and_say_so(make_tiny, tmp_path, capsys):
    inter, split = make_tiny(n_items=30)
    for i in (4, 9):
        inter.items.title[i], inter.items.categories[i] = "", []
    cfg = TokenizerConfig(collaborative_dim=8)
    emb, report = embed_items(inter, split, cfg, tmp_path, progress=False)
    assert emb.shape == (30, 384) and report["items_without_text"] == 2
    assert "2 of 30 items have no text" in capsys.readouterr().out
    assert np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-4)
    # Each predicted row sits nearer to the texts of its genre than to the other genres' texts.
    genre = np.arange(30) % 3
    for i in (4, 9):
        sims = emb[genre != -1] @ emb[i]
        by_genre = [sims[(genre == g) & (np.arange(30) != i) & ~np.isin(np.arange(30), (4, 9))].mean() for g in range(3)]
        assert int(np.argmax(by_genre)) == genre[i]
    # The text encoding is cached: a second call does not re-encode.
    assert list((tmp_path / "embeddings").glob("text-*.npy"))


def test_items_without_training_events_get_a_collaborative_half_predicted_from_text(make_tiny, tmp_path, capsys):
    """A cold item (no training event) would have a zero collaborative half, a region no warm item shares; its half
    is predicted from its text instead, and lands among the warm items of its genre."""
    inter, split = make_tiny(n_items=30)
    train = np.zeros(len(inter.item), bool)
    for u in range(inter.n_users):
        train[inter.offsets[u]:split.train_end[u]] = True
    swap = {4: 7, 9: 3}  # same genres (i % 3): items 4 and 9 keep events only as held-out targets
    for cold, warm in swap.items():
        inter.item[train & (inter.item == cold)] = warm
    emb, report = embed_items(inter, split, TokenizerConfig(embedding="hybrid", collaborative_dim=8), tmp_path,
                              progress=False)
    assert report["collaborative_predicted_from_text"] == 2
    assert "2 of 30 items have no training events" in capsys.readouterr().out
    collab = emb[:, -8:]
    genre = np.arange(30) % 3
    warm = ~np.isin(np.arange(30), list(swap))
    for i in swap:
        assert np.linalg.norm(collab[i]) > 0.1
        sims = collab[warm] @ collab[i]
        assert int(np.argmax([sims[genre[warm] == g].mean() for g in range(3)])) == genre[i]


def test_hybrid_embedding_concatenates_normalised_parts(make_tiny, tmp_path):
    inter, split = make_tiny(n_items=30)
    emb, report = embed_items(inter, split, TokenizerConfig(embedding="hybrid", collaborative_dim=8), tmp_path,
                              progress=False)
    assert emb.shape == (30, 384 + 8) and report["dim"] == 392
    assert np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-4)
    assert (np.abs(emb[:, 384:]).sum(1) > 0).all()  # the collaborative part is present for every item
