"""The token layout of `build_model_batch`: the docstring's worked example, truncation, random holdout, scoring."""

import pytest
import torch

from e2erec.errors import ArtifactMismatchError
from e2erec.model import build_model_batch
from e2erec.model.batch import HIDDEN, trie_code_mask
from e2erec.tokenizer.trie import PrefixTrie

from .helpers import Events, random_codes, random_events


def _docstring_example():
    codes = torch.zeros(10, 3, dtype=torch.int64)
    codes[7], codes[3], codes[9], codes[2] = torch.tensor([1, 4, 0]), torch.tensor([1, 2, 0]), torch.tensor([6, 0, 0]), torch.tensor([6, 0, 1])
    ev = Events(
        offsets=torch.tensor([0, 4]), user=torch.tensor([0]), item=torch.tensor([7, 3, 9, 2]),
        timestamp=torch.tensor([100, 160, 200, 260]), feedback=torch.tensor([5.0, 2.0, 4.0, 1.0]),
        label=torch.tensor([1.0, 0.0, 1.0, 0.0]), max_len=4,
    )
    return ev, codes


def test_worked_example_from_the_docstring():
    ev, codes = _docstring_example()
    b = build_model_batch(ev, codes, num_candidates=2, num_time_buckets=32)
    assert b.offsets.tolist() == [0, 5] and b.max_len == 5 and b.num_targets.tolist() == [2]
    assert b.is_bos.tolist() == [True, False, False, False, False]
    assert b.codes.tolist() == [[0, 0, 0], [1, 4, 0], [1, 2, 0], [6, 0, 0], [6, 0, 1]]
    assert b.feedback_id.tolist() == [HIDDEN, 1 + 5, 1 + 2, HIDDEN, HIDDEN]
    assert b.label_id.tolist() == [HIDDEN, 2, 1, HIDDEN, HIDDEN]
    assert b.gap_id.tolist() == [32, 32, 5, 32, 32]  # 60 s -> floor(log2(61)) = 5; 32 = unknown
    assert b.timestamp.tolist() == [100, 100, 160, 160, 160]
    assert b.gen_index.tolist() == [0, 1, 2]
    assert b.gen_codes.tolist() == [[1, 4, 0], [1, 2, 0], [6, 0, 0]]
    assert b.calib_index.tolist() == [3, 4] and b.calib_label.tolist() == [1.0, 0.0]
    assert b.last_index.tolist() == [2]


def test_trie_code_mask_allows_exactly_the_codes_of_real_items_after_each_prefix():
    """Worked example's codes (items 2, 3, 7, 9 on 3 levels of 8 codes): after (1,) only 2 and 4 exist; after (6, 0)
    only 0 and 1; the first level allows the first codes of all four items."""
    ev, codes = _docstring_example()
    used = torch.tensor([2, 3, 7, 9])
    remap = torch.full((10,), -1, dtype=torch.int64)
    remap[used] = torch.arange(4)
    trie = PrefixTrie.build(codes[used], [8, 8, 8])
    mask = trie_code_mask(trie, remap[torch.tensor([7, 9])])  # items (1,4,0) and (6,0,0)
    assert mask.shape == (2, 24)
    allowed = [[c for c in range(8) if mask[i, 8 * level + c]] for i in range(2) for level in range(3)]
    assert allowed == [[1, 6], [2, 4], [0], [1, 6], [0], [0, 1]]
    b = build_model_batch(ev, codes, num_candidates=2)
    assert b.gen_mask is None  # no trie: the loss normalises over the whole codebook


def test_short_and_empty_histories_keep_one_history_event():
    codes = random_codes(20, [4, 4, 2])
    ev = random_events([0, 1, 2, 9], n_items=20)
    b = build_model_batch(ev, codes, num_candidates=4)
    assert b.num_targets.tolist() == [0, 0, 1, 4]
    assert b.offsets.diff().tolist() == [1, 2, 3, 10]  # BOS + events
    # every predicted item is a real event of its sequence, in order
    assert b.gen_index.numel() == 0 + 1 + 2 + 6
    assert b.calib_label.tolist() == ev.label[[2, 8, 9, 10, 11]].tolist()


def test_max_history_keeps_the_most_recent_events():
    codes = random_codes(50, [8, 8])
    ev = random_events([30], n_items=50)
    b = build_model_batch(ev, codes, num_candidates=3, max_history=5)
    assert b.offsets.tolist() == [0, 1 + 5 + 3]
    assert b.codes[1:6].tolist() == codes[ev.item[22:27]].tolist()
    assert b.codes[6:].tolist() == codes[ev.item[27:30]].tolist()


def test_generator_draws_the_number_of_targets():
    codes = random_codes(50, [8, 8])
    ev = random_events([12] * 200, n_items=50)
    b = build_model_batch(ev, codes, num_candidates=4, generator=torch.Generator().manual_seed(0))
    counts = torch.bincount(b.num_targets, minlength=5)
    assert counts[0] == 0 and all(c > 20 for c in counts[1:5].tolist())
    again = build_model_batch(ev, codes, num_candidates=4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(b.num_targets, again.num_targets)


def test_per_sequence_targets_and_generative_choice():
    """One window per role: sequence 0 all history (bound 0, every event after the first is predicted), sequence 1
    calibration only (3 labelled targets, no generative targets)."""
    codes = random_codes(40, [8, 8])
    ev = random_events([6, 6], n_items=40)
    b = build_model_batch(ev, codes, num_candidates=torch.tensor([0, 3]), generative=torch.tensor([True, False]))
    assert b.num_targets.tolist() == [0, 3]
    assert b.offsets.tolist() == [0, 7, 14]
    assert b.gen_index.tolist() == [0, 1, 2, 3, 4, 5]  # BOS + 5 events of sequence 0 predict events 0..5
    assert b.gen_codes.tolist() == codes[ev.item[0:6]].tolist()
    assert b.calib_index.tolist() == [11, 12, 13] and b.calib_label.tolist() == ev.label[9:12].tolist()
    with pytest.raises(ValueError, match="num_candidates"):
        build_model_batch(ev, codes, num_candidates=torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="generative"):
        build_model_batch(ev, codes, num_candidates=1, generative=torch.tensor([True]))


def test_scoring_batch_appends_candidates_after_the_full_history():
    codes = random_codes(30, [6, 6])
    ev = random_events([4, 0], n_items=30)
    cand = torch.tensor([[1, 2, 3], [4, 5, 6]])
    b = build_model_batch(ev, codes, num_candidates=0, candidates=cand)
    assert b.offsets.tolist() == [0, 8, 12] and b.num_targets.tolist() == [3, 3]
    assert b.codes[b.calib_index].tolist() == codes[cand.flatten()].tolist()
    assert (b.feedback_id[b.calib_index] == HIDDEN).all() and (b.label_id[b.calib_index] == HIDDEN).all()
    assert b.last_index.tolist() == [4, 8]
    # targets carry the last history timestamp ("now")
    assert b.timestamp[5:8].tolist() == [int(ev.timestamp[3])] * 3


def test_bad_item_ids_are_a_clear_error():
    codes = random_codes(10, [4, 4])
    ev = random_events([3], n_items=12, seed=3)
    ev.item[1] = 11
    with pytest.raises(ArtifactMismatchError, match=r"item ids must be in \[0, 10\) .* got 11"):
        build_model_batch(ev, codes, num_candidates=1)
