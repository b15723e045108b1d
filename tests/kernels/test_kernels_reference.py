"""Mask and bucket semantics (the definitions every backend follows), and the CPU torch path vs the reference."""

import functools

import pytest
import torch
from e2erec_kernels import (
    effective_positions,
    jagged_attention,
    jagged_attention_reference,
    jagged_mask,
    position_bucket,
    select_backend,
    sequence_mask,
    time_bucket,
)
from e2erec_kernels.reference import floor_log2
from e2erec_kernels.testing import check, make_inputs


def test_worked_example_from_docstring():
    # L = 5, two targets, window 3: pos = [0, 1, 2, 3, 3]; token 3 sees {1, 2, 3}, token 4 sees {1, 2, 4}.
    assert effective_positions(5, 2).tolist() == [0, 1, 2, 3, 3]
    m = sequence_mask(5, num_targets=2, window=3)
    seen = [torch.nonzero(row).flatten().tolist() for row in m]
    assert seen == [[0], [0, 1], [0, 1, 2], [1, 2, 3], [1, 2, 4]]


def test_no_token_sees_the_future_or_another_sequence():
    offsets = torch.tensor([0, 3, 3, 7, 8, 20])
    for targets in (None, torch.tensor([1, 0, 4, 1, 5])):
        for window in (None, 2):
            m = jagged_mask(offsets, targets, window)
            assert not torch.triu(m, 1).any()  # nothing above the diagonal
            seq = torch.repeat_interleave(torch.arange(5), offsets.diff())
            assert not (m & (seq[:, None] != seq[None, :])).any()
            assert m.diagonal().all()  # every token sees itself


def test_targets_do_not_see_each_other():
    m = sequence_mask(6, num_targets=3)
    assert m[3:, 3:].equal(torch.eye(3, dtype=torch.bool)) and m[3:, :3].all()


def test_floor_log2_exact_at_powers_of_two():
    for e in range(1, 50):
        x = torch.tensor([2**e - 1, 2**e, 2**e + 1])
        assert floor_log2(x).tolist() == [e - 1, e, e]


def test_buckets():
    d = torch.tensor([0, 1, 31, 32, 63, 64, 127, 128, 10**9, 10**12])
    assert position_bucket(d, 64).tolist() == [0, 1, 31, 32, 32, 33, 33, 34, 56, 63]
    assert position_bucket(d, 1).tolist() == [0] * 10
    assert time_bucket(torch.tensor([-5, 0, 1, 2, 3, 86_400, 10**12]), 32).tolist() == [0, 0, 1, 1, 2, 16, 31]


def test_backend_selection(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert select_backend(torch.zeros(1)) == "torch"
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert select_backend(torch.zeros(1)) == "triton"
    assert select_backend(torch.zeros(1), "reference") == "reference"
    with pytest.raises(ValueError):
        select_backend(torch.zeros(1), "cuda")


def test_bad_inputs_raise():
    x = make_inputs([3, 2])
    with pytest.raises(ValueError, match="time_bias needs timestamps"):
        jagged_attention(**{**x, "time_bias": torch.zeros(4, 2)}, backend="torch")
    with pytest.raises(ValueError, match="window"):
        jagged_attention(**{**x, "window": 0}, backend="torch")
    with pytest.raises(ValueError, match="kind"):
        jagged_attention(**{**x, "kind": "linear"}, backend="torch")


# ---------------------------------------------------------------------------------------------- torch CPU path

EDGE = [0, 1, 5, 16, 17, 33, 0, 2, 64, 9]
FEATURES = {
    "plain": {},
    "targets": {"targets": "random"},
    "window": {"window": 7},
    "bias": {"pos_buckets": 16, "time_buckets": 40},
    "all": {"targets": "random", "window": 9, "pos_buckets": 16, "time_buckets": 40},
    "all_targets": {"targets": "all", "pos_buckets": 8},
    "no_targets": {"targets": "none", "window": 3},
    "wide_window": {"window": 1000, "targets": "random"},
    "window_1": {"window": 1, "pos_buckets": 4},
}
torch_impl = functools.partial(jagged_attention, backend="torch")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("feature", list(FEATURES))
@pytest.mark.parametrize("kind", ["softmax", "hstu"])
def test_torch_path_matches_reference(kind, feature, dtype):
    check(jagged_attention_reference, torch_impl, make_inputs(EDGE, kind=kind, dtype=dtype, **FEATURES[feature]))


TINY = torch.randint(0, 4, (120,), generator=torch.Generator().manual_seed(0)).tolist()


@pytest.mark.parametrize("kind", ["softmax", "hstu"])
@pytest.mark.parametrize(
    "lengths", [[], [0, 0], [1], [1100], TINY], ids=["empty", "zeros", "one", "long", "many_tiny"]
)
def test_torch_path_ragged_extremes(kind, lengths):
    check(jagged_attention_reference, torch_impl, make_inputs(lengths, kind=kind, targets="random", pos_buckets=8))


@pytest.mark.parametrize("bucketing", ["exact", "ladder"])
def test_torch_path_bucketing_modes_agree(bucketing):
    from e2erec_kernels.torch_attention import jagged_attention_torch

    impl = functools.partial(jagged_attention_torch, bucketing=bucketing)
    check(jagged_attention_reference, impl, make_inputs(EDGE, **FEATURES["all"]))


def test_outputs_ignore_future_and_other_sequences():
    x = make_inputs([6, 9], kind="softmax", targets="random", requires_grad=False)
    out = jagged_attention(**x, backend="torch")
    y = dict(x, v=x["v"].clone(), k=x["k"].clone())
    y["v"][10:], y["k"][10:] = 5.0, -3.0  # tokens 10.. are the future of sequence 1 (and nothing of sequence 0)
    out2 = jagged_attention(**y, backend="torch")
    torch.testing.assert_close(out[:10], out2[:10])
