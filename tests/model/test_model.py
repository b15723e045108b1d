"""Shapes, masking (no token sees the future, another sequence, or another candidate), heads and counts."""

import dataclasses

import pytest
import torch

from e2erec.config import load_run_config
from e2erec.model import REFERENCE_CODEBOOK, GenerativeRecommender, ModelConfig, build_model_batch

from .helpers import random_codes, random_events

SIZES = [4, 4, 3]
BACKBONES = ["transformer", "hstu"]


def _model(backbone: str, **kw) -> GenerativeRecommender:
    torch.manual_seed(0)
    cfg = ModelConfig(backbone=backbone, d_model=32, n_layers=2, n_heads=2, calibration_hidden=16, **kw)
    return GenerativeRecommender(cfg, SIZES).eval()


def _batch(lengths=(6, 0, 1, 9), num_candidates=3, seed=0):
    codes = random_codes(40, SIZES, seed=seed)
    ev = random_events(list(lengths), n_items=40, seed=seed)
    return build_model_batch(ev, codes, num_candidates=num_candidates), ev, codes


@pytest.mark.parametrize("backbone", BACKBONES)
def test_forward_shapes_and_losses(backbone):
    model = _model(backbone)
    batch, _, _ = _batch()
    h = model.encode(batch)
    assert h.shape == (batch.n_tokens, 32)
    out = model(batch)
    assert set(out) >= {"loss", "gen_loss", "calib_loss", "gen_loss_l0", "gen_loss_l1", "gen_loss_l2", "n_tokens"}
    assert int(out["n_tokens"]) == batch.n_tokens
    total = out["gen_loss_l0"] + out["gen_loss_l1"] + out["gen_loss_l2"]
    torch.testing.assert_close(out["gen_loss"], total)
    torch.testing.assert_close(out["loss"], out["gen_loss"] + out["calib_loss"])
    # at init the heads are near uniform: NLL ~ log(4 * 4 * 3), BCE ~ log 2
    assert abs(out["gen_loss"].item() - torch.log(torch.tensor(48.0)).item()) < 0.3
    assert abs(out["calib_loss"].item() - 0.6931) < 0.05


@pytest.mark.parametrize("backbone", BACKBONES)
def test_trie_normalised_loss_is_the_nll_among_real_items(backbone):
    """With the trie mask every level normalises over the codes some item has after the true prefix: the item
    probabilities of one position then sum to 1 over the catalogue, the loss is their NLL (brute force from the code
    rows alone), it is below the unmasked loss, and gradients stay finite."""
    from e2erec.tokenizer.trie import PrefixTrie

    model = _model(backbone)
    codes = random_codes(40, SIZES, seed=0)
    ev = random_events([6, 3, 9], n_items=40, seed=0)
    plain = build_model_batch(ev, codes, num_candidates=1)
    masked = build_model_batch(ev, codes, num_candidates=1, trie=PrefixTrie.build(codes, SIZES))
    out_plain, out_masked = model(plain), model(masked)
    assert out_masked["gen_loss"].item() < out_plain["gen_loss"].item()

    rows = codes.tolist()
    h = model.encode(masked)[masked.gen_index].detach()  # (G, d)
    G, n_items = h.shape[0], len(rows)
    logits = model.generative_logits(h.repeat_interleave(n_items, 0), codes.repeat(G, 1))
    logp = torch.zeros(G, n_items)
    for level, lg in enumerate(logits):
        allowed = torch.zeros(n_items, SIZES[level], dtype=torch.bool)
        for j, row in enumerate(rows):
            allowed[j, [r[level] for r in rows if r[:level] == row[:level]]] = True
        lg = lg.view(G, n_items, -1).masked_fill(~allowed, float("-inf"))
        logp += lg.log_softmax(-1).gather(-1, codes[:, level].expand(G, -1)[..., None]).squeeze(-1)
    torch.testing.assert_close(logp.exp().sum(1), torch.ones(G))
    target = torch.tensor([rows.index(r) for r in masked.gen_codes.tolist()])
    torch.testing.assert_close(out_masked["gen_loss"].detach(), -logp.gather(1, target[:, None]).mean(),
                               rtol=1e-5, atol=1e-5)
    out_masked["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_label_smoothing_spreads_mass_over_the_tries_codes_only_while_training():
    """Smoothed loss = (1 - e) NLL + e * mean over allowed codes of -log p; masked codes never enter (the loss stays
    finite), evaluation mode and the reported gen_loss are the unsmoothed NLL, and e = 0 is the plain loss."""
    from e2erec.tokenizer.trie import PrefixTrie

    codes = random_codes(40, SIZES, seed=0)
    ev = random_events([6, 3, 9], n_items=40, seed=0)
    batch = build_model_batch(ev, codes, num_candidates=1, trie=PrefixTrie.build(codes, SIZES))
    plain, smooth = _model("transformer").train(), _model("transformer", label_smoothing=0.2).train()
    torch.manual_seed(1)
    out_plain = plain(batch)
    torch.manual_seed(1)
    out = smooth(batch)
    torch.testing.assert_close(out["gen_loss"], out_plain["gen_loss"])  # reported: the NLL, same weights
    h = smooth.encode(batch)[batch.gen_index]
    expected = 0.0
    for level, logits in enumerate(smooth.generative_logits(h, batch.gen_codes, batch.gen_mask)):
        logp = logits.log_softmax(-1)
        allowed = torch.isfinite(logp)
        nll = -logp.gather(1, batch.gen_codes[:, level:level + 1]).squeeze(1)
        uniform = torch.stack([-logp[i][allowed[i]].mean() for i in range(len(logp))])
        expected = expected + (0.8 * nll + 0.2 * uniform).mean()
    torch.testing.assert_close(out["gen_loss_smoothed"], expected)
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in smooth.parameters() if p.grad is not None)
    assert "gen_loss_smoothed" not in smooth.eval()(batch)
    with pytest.raises(ValueError, match="label_smoothing"):
        ModelConfig(label_smoothing=1.0).validate()


@pytest.mark.parametrize("backbone", BACKBONES)
def test_no_token_sees_the_future_another_sequence_or_another_candidate(backbone):
    model = _model(backbone)
    batch, _, _ = _batch()
    base = model.encode(batch)
    offsets = batch.offsets.tolist()
    n_targets = batch.num_targets.tolist()
    for b in range(len(offsets) - 1):
        start, end = offsets[b], offsets[b + 1]
        history_end = end - n_targets[b]
        history_tokens = list(range(start, history_end))
        # BOS, the first and last history events and every target (all tokens would cost one encode each).
        for j in sorted({*history_tokens[:2], *history_tokens[-1:], *range(history_end, end)}):
            # Perturb everything token j carries: its codes, feedback, label and timestamp.
            p = dataclasses.replace(batch, codes=batch.codes.clone(), feedback_id=batch.feedback_id.clone())
            p.codes[j] = (p.codes[j] + 1) % torch.tensor(SIZES)
            p.feedback_id[j] = (p.feedback_id[j] + 2) % 7
            p.is_bos = batch.is_bos.clone()
            p.is_bos[j] = False
            out = model.encode(p)
            changed = (out - base).abs().amax(dim=1) > 1e-5
            may_change = torch.zeros(batch.n_tokens, dtype=torch.bool)
            if j < history_end:
                may_change[j:end] = True  # a history token reaches itself, later history and every target
            else:
                may_change[j] = True  # a target reaches only itself
            assert changed[j], f"token {j} did not change its own output"
            assert not (changed & ~may_change).any(), f"token {j} leaked to {(changed & ~may_change).nonzero().tolist()}"


@pytest.mark.parametrize("backbone", BACKBONES)
def test_activation_checkpointing_gives_the_same_loss_and_gradients(backbone):
    batch, _, _ = _batch()
    grads = []
    for ckpt in (False, True):
        model = _model(backbone, activation_checkpointing=ckpt).train()
        out = model(batch)
        out["loss"].backward()
        grads.append((out["loss"].detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    for g0, g1 in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(g0, g1)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_step_fn_matches_teacher_forced_likelihood(backbone):
    """Beam search's log p(item | history) = sum of step log-probs = -NLL of the teacher-forced head."""
    model = _model(backbone)
    _, ev, codes = _batch(lengths=(5, 0, 7))
    step_fn, state = model.make_step_fn(ev, codes)
    items = torch.tensor([[3, 8], [0, 39], [17, 17]])  # (B, beams) candidate next items
    prefix = codes[items]  # (B, beams, L)
    logp = torch.zeros(items.shape)
    for level in range(len(SIZES)):
        lp = step_fn(level, prefix[..., :level], state)
        assert lp.shape == (3, 2, SIZES[level])
        torch.testing.assert_close(lp.exp().sum(-1), torch.ones(3, 2))
        logp += lp.gather(-1, prefix[..., level : level + 1]).squeeze(-1)
    logits = model.generative_logits(state.hidden[:, None].expand(-1, 2, -1).reshape(6, -1), prefix.reshape(6, -1))
    nll = sum(
        torch.nn.functional.cross_entropy(lg, prefix.reshape(6, -1)[:, i], reduction="none")
        for i, lg in enumerate(logits)
    )
    torch.testing.assert_close(logp.reshape(6), -nll)


@pytest.mark.parametrize("tied", [True, False])
def test_step_fn_logits_at_pairs_renormalise_to_the_dense_log_probs(tied):
    """What a compact trie level asks for: the logits of (row, beam, code) triples only; renormalised over a beam's
    codes they are the dense head's log-probs."""
    model = _model("transformer", tie_code_embeddings=tied)
    _, ev, codes = _batch(lengths=(5, 0, 7))
    step_fn, state = model.make_step_fn(ev, codes)
    prefix = codes[torch.tensor([[3, 8], [0, 39], [17, 2]])][..., :2]  # (B, beams, 2): choosing the last code
    dense = step_fn(2, prefix, state)  # (3, 2, K)
    row, beam, code = (t.reshape(-1) for t in torch.meshgrid(torch.arange(3), torch.arange(2),
                                                             torch.arange(SIZES[2]), indexing="ij"))
    sparse = step_fn(2, prefix, state, pairs=(row, beam, code)).view(3, 2, SIZES[2])
    torch.testing.assert_close(sparse.log_softmax(-1), dense)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_score_candidates_are_probabilities_independent_of_their_company(backbone):
    model = _model(backbone)
    _, ev, codes = _batch(lengths=(5, 0, 7))
    cand = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]])
    p = model.score_candidates(ev, cand, codes)
    assert p.shape == (3, 4) and ((p > 0) & (p < 1)).all()
    torch.testing.assert_close(model.score_candidates(ev, cand, codes, chunk=1), p)
    torch.testing.assert_close(model.score_candidates(ev, cand[:, [2, 0]], codes), p[:, [2, 0]])


def test_documented_parameter_counts_on_meta_device():
    """Every shipped config's documented count equals num_params (reference codebook), built on meta."""
    names = ["tiny", "mini", "small", "base", "1b", "8b"]
    for name in names:
        cfg = load_run_config(None, [f"model={name}"]).model
        assert cfg.param_count > 0, f"configs/model/{name}.yaml documents no param_count"
        with torch.device("meta"):
            model = GenerativeRecommender(cfg, REFERENCE_CODEBOOK)
        assert model.num_params() == cfg.param_count, name
    tiny = load_run_config(None, ["model=tiny"]).model
    assert tiny.param_count < 1_000_000


@pytest.mark.parametrize("backbone", BACKBONES)
def test_flops_per_token_matches_counted_matmul_flops(backbone):
    """The 6N + attention formula vs torch's FlopCounterMode over one forward+backward of equal-length sequences.

    The reference backend computes the full dense score matrix, masked half included, so it is compared with the
    formula plus that half (6 * n_layers * d * T); the formula itself counts only the causal half."""
    from torch.utils.flop_counter import FlopCounterMode

    cfg = ModelConfig(backbone=backbone, d_model=64, n_layers=2, n_heads=4, calibration_hidden=16,
                      attention_backend="reference")
    model = GenerativeRecommender(cfg, [16, 16, 8]).train()
    for T in (32, 128):  # tokens per sequence, BOS included
        batch = build_model_batch(random_events([T] * 3, n_items=100), random_codes(100, [16, 16, 8]), num_candidates=1)
        with FlopCounterMode(display=False) as counter:
            model(batch)["loss"].backward()
        measured = counter.get_total_flops() / batch.n_tokens
        dense = model.flops_per_token(T) + 6 * cfg.n_layers * cfg.d_model * T
        assert abs(measured / dense - 1) < 0.05, (T, measured, dense)


def test_bad_codebook_is_a_clear_error():
    with pytest.raises(ValueError, match="codebook_sizes"):
        GenerativeRecommender(ModelConfig(), [])


def test_prior_features_are_smoothed_rates_without_the_targets_own_label():
    """The calibration head's item and user features against hand-computed smoothed rates. A counted training
    target's own label is left out of its item's counts: whichever that label (in the counts and the batch alike),
    the item feature is computed from the other events' 2 positives of 3, so the head cannot read it there."""
    from e2erec.model.model import PRIOR_WEIGHT

    from .helpers import events_from_lists

    cfg = ModelConfig(d_model=32, n_layers=1, n_heads=2, calibration_hidden=16)
    model = GenerativeRecommender(cfg, SIZES, num_items=6).eval()
    codes = random_codes(6, SIZES)
    # The counted events: item 3 has 3 positives out of 4; the base rate is 5 / 8 (4 / 8 when the target's is 0).
    items, labels = torch.tensor([3, 3, 3, 3, 1, 1, 2, 5]), torch.tensor([1, 1, 1, 0, 1, 0, 1, 0])

    def _counts(item, label):  # (positives, events) per item
        return torch.bincount(item[label > 0], minlength=6), torch.bincount(item, minlength=6)

    def logit(pos, n, base=5 / 8):
        p = (pos + PRIOR_WEIGHT * base) / (n + PRIOR_WEIGHT)
        return torch.logit(torch.tensor(p)).item()

    # One sequence: history (1: +, 2: +, 5: -), target item 3 with label 1 (one of item 3's counted events).
    for target_label, item3_pos in ((1, 3), (0, 2)):
        labels_now = labels.clone()
        labels_now[0] = target_label  # the counted event that is this target
        model.set_feedback_priors(*_counts(items, labels_now))
        ev = events_from_lists([[1, 2, 5, 3]], [[1, 1, 0, target_label]])
        counted = build_model_batch(ev, codes, num_candidates=1, targets_counted=True)
        feats = model.prior_features(counted)
        base = labels_now.float().mean().item()
        assert feats[0, 0].item() == pytest.approx(logit(2, 3, base), abs=1e-5)  # item 3 without this target: 2 of 3
        assert feats[0, 1].item() == pytest.approx(logit(2, 3, base), abs=1e-5)  # history: 2 positives of 3
        # Scored as an uncounted target (validation, test, candidates): the item's full counts.
        held_out = build_model_batch(ev, codes, num_candidates=1)
        assert model.prior_features(held_out)[0, 0].item() == pytest.approx(logit(item3_pos, 4, base), abs=1e-5)
    model.set_feedback_priors(*_counts(items, labels))
    scored = build_model_batch(events_from_lists([[1], []]), codes, num_candidates=0,
                               candidates=torch.tensor([[0, 3], [5, 2]]))
    feats = model.prior_features(scored)
    assert feats[:, 0].tolist() == pytest.approx([logit(0, 0), logit(3, 4), logit(0, 1), logit(1, 1)], abs=1e-5)
    assert feats[:, 1].tolist() == pytest.approx([logit(1, 1)] * 2 + [logit(0, 0)] * 2, abs=1e-5)
    assert model.calibrated_probs(model.encode(scored), scored).shape == (4,)
    with pytest.raises(ValueError, match="targets_counted"):
        build_model_batch(ev, codes, num_candidates=0, candidates=torch.tensor([[3]]), targets_counted=True)
    # Without a catalogue (benchmarks) or with the option off, the head reads the hidden state only.
    assert GenerativeRecommender(cfg, SIZES).calib_mlp[0].in_features == 32
    off = dataclasses.replace(cfg, calibration_priors=False)
    assert GenerativeRecommender(off, SIZES, num_items=6).calib_mlp[0].in_features == 32
    assert model.calib_mlp[0].in_features == 34


def test_a_prefix_prior_gives_an_item_without_events_its_code_clusters_rate():
    """model.prior_prefix_levels=1: an item's rate is smoothed toward the pooled rate of the items sharing its first
    code, itself smoothed toward the base rate; a counted target leaves its own event out of both."""
    from e2erec.model.model import PRIOR_WEIGHT

    from .helpers import events_from_lists

    cfg = ModelConfig(d_model=32, n_layers=1, n_heads=2, calibration_hidden=16, prior_prefix_levels=1)
    model = GenerativeRecommender(cfg, SIZES, num_items=4).eval()
    codes = torch.tensor([[0, 1, 0], [0, 2, 0], [1, 0, 0], [1, 1, 0]])  # items 0, 1 share code 0; 2, 3 share 1
    pos, events = torch.tensor([3, 0, 0, 0]), torch.tensor([4, 0, 6, 0])  # items 1 and 3 have no events
    model.set_feedback_priors(pos, events, codes=codes)
    base = 3 / 10

    def rate(p, n, prior):
        return (p + PRIOR_WEIGHT * prior) / (n + PRIOR_WEIGHT)

    scored = build_model_batch(events_from_lists([[2]]), codes, num_candidates=0, candidates=torch.tensor([[1, 3]]))
    got = torch.sigmoid(model.prior_features(scored)[:, 0]).tolist()
    assert got == pytest.approx([rate(0, 0, rate(3, 4, base)), rate(0, 0, rate(0, 6, base))], abs=1e-6)
    counted = build_model_batch(events_from_lists([[2, 0]], [[0, 1]]), codes, num_candidates=1, targets_counted=True)
    item0 = torch.sigmoid(model.prior_features(counted)[0, 0]).item()
    assert item0 == pytest.approx(rate(2, 3, rate(2, 3, base)), abs=1e-6)
    with pytest.raises(ValueError, match="needs the items' codes"):
        model.set_feedback_priors(pos, events)


@pytest.mark.parametrize("kind", ["full", "hashed"])
def test_item_id_embeddings_tell_apart_items_that_share_their_codes(kind):
    """model.item_embeddings adds a per-item (or per-hash-bucket) row to each token: two items with the same semantic
    ID embed differently, the table is a lookup table (not counted in non-embedding parameters), and "none" adds
    nothing."""
    codes = random_codes(40, SIZES, seed=0)
    codes[7] = codes[3]  # items 3 and 7 share their semantic ID
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=32, n_layers=1, n_heads=2, calibration_hidden=16, item_embeddings=kind,
                      item_hash_buckets=16 if kind == "hashed" else 0)
    model = GenerativeRecommender(cfg, SIZES, num_items=40).eval()
    plain = GenerativeRecommender(dataclasses.replace(cfg, item_embeddings="none"), SIZES, num_items=40)
    assert model.item_emb.num_embeddings == (40 if kind == "full" else 16) and plain.item_emb is None
    assert model.num_params(non_embedding=True) == plain.num_params(non_embedding=True)
    plain.load_state_dict(model.state_dict(), strict=False)  # the same weights, less the item table
    ev = random_events([2, 2], n_items=40, seed=0)
    ev.item[:] = torch.as_tensor([3, 3, 7, 7], dtype=ev.item.dtype) if torch.is_tensor(ev.item) else [3, 3, 7, 7]
    batch = build_model_batch(ev, codes, num_candidates=0)
    added = model.embed(batch) - plain.embed(batch)
    first, second = int(batch.offsets[0]) + 1, int(batch.offsets[1]) + 1  # each sequence's first event token
    assert torch.equal(batch.codes[first], batch.codes[second])
    rows = torch.tensor([3, 7]) if kind == "full" else (torch.tensor([3, 7]) * 2654435761) % 16
    torch.testing.assert_close(added[[first, second]], model.item_emb.weight[rows])
    assert rows[0] != rows[1] and not torch.allclose(added[first], added[second])
    assert torch.isfinite(model(build_model_batch(random_events([5, 3], n_items=40), codes, num_candidates=2))["loss"])
