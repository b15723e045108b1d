"""History helpers and top-K selection on the worked example of `e2erec.data.types` (users with 2, 0, 3 events)."""

import numpy as np
import pytest

from e2erec.data.types import Interactions, ItemTable, Split
from e2erec.eval.protocol import history_csr, mask_history, padded_histories, top_k, training_targets


@pytest.fixture
def tiny():
    items = ItemTable(raw_id=[str(i) for i in range(8)], title=[""] * 8, text=[""] * 8, categories=[[]] * 8,
                      year=np.full(8, -1, np.int32), popularity=np.zeros(8, np.int64))
    return Interactions(offsets=np.array([0, 2, 2, 5]), item=np.array([7, 3, 1, 7, 4]),
                        timestamp=np.array([10, 20, 5, 6, 9]), feedback=np.ones(5, np.float32),
                        label=np.array([1, 0, 1, 1, 0], np.int8), user_raw_id=["a", "b", "c"], items=items)


def test_padded_histories_right_aligned(tiny):
    items, labels, lengths = padded_histories(tiny, np.array([1, 4, 3]), max_len=3)
    np.testing.assert_array_equal(items, [[-1, -1, 7], [-1, 1, 7], [-1, -1, 1]])
    np.testing.assert_array_equal(labels, [[0, 0, 1], [0, 1, 1], [0, 0, 1]])
    np.testing.assert_array_equal(lengths, [1, 2, 1])
    items, _, lengths = padded_histories(tiny, np.array([4]), max_len=1)  # truncation keeps the most recent
    np.testing.assert_array_equal(items, [[7]])
    items, _, lengths = padded_histories(tiny, np.array([2]), max_len=2)  # a user's first event: empty history
    np.testing.assert_array_equal(items, [[-1, -1]])
    assert lengths[0] == 0


def test_history_csr_and_mask(tiny):
    rows, items = history_csr(tiny, np.array([4, 1]))
    np.testing.assert_array_equal(rows, [0, 0, 1])
    np.testing.assert_array_equal(items, [1, 7, 7])
    scores = mask_history(np.zeros((2, 8)), tiny, np.array([4, 1]))
    assert np.isneginf(scores[0, [1, 7]]).all() and np.isneginf(scores[1, 7])
    assert np.isfinite(scores).sum() == 13


def test_training_targets(tiny):
    split = Split("leave_one_out", train_end=np.array([1, 2, 3]), valid=np.array([3]), test=np.array([1, 4]))
    np.testing.assert_array_equal(training_targets(tiny, split, min_history=0), [0, 2])
    np.testing.assert_array_equal(training_targets(tiny, split, min_history=1), [])
    split.train_end = np.array([2, 2, 5])
    np.testing.assert_array_equal(training_targets(tiny, split, min_history=1), [1, 3, 4])


def test_top_k_ties_masking_and_padding():
    scores = np.array([[0.5, 0.9, 0.5, 0.1], [1.0, -np.inf, -np.inf, -np.inf]])
    np.testing.assert_array_equal(top_k(scores, 3), [[1, 0, 2], [0, -1, -1]])  # tie 0 vs 2: lower id first
    np.testing.assert_array_equal(top_k(scores, 6)[0], [1, 0, 2, 3, -1, -1])
    ids = np.array([[10, 11, 12, 13], [20, 21, 22, 23]])
    np.testing.assert_array_equal(top_k(scores, 2, ids=ids), [[11, 10], [20, -1]])
