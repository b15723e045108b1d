"""Triton kernels under TRITON_INTERPRET=1 on CPU vs the reference: output and every gradient.

Budget: the whole file runs in well under 3 minutes on 2 cores (interpreter cost is ~8 ms per loop iteration;
the long case uses H=1, D=16). The interpreter tiles are 32x16 up to max_len 256, so EDGE crosses block
boundaries in both dimensions, and 128x64 beyond.
"""

import functools

import pytest
import torch
from e2erec_kernels import jagged_attention, jagged_attention_reference
from e2erec_kernels.testing import check, make_inputs

pytestmark = pytest.mark.interpreter

EDGE = [0, 1, 5, 16, 17, 33, 0, 2, 64, 9]
triton_impl = functools.partial(jagged_attention, backend="triton")
FEATURES = {
    "plain": {},
    "targets": {"targets": "random"},
    "window": {"window": 7},
    "bias": {"pos_buckets": 16, "time_buckets": 40},
    "all": {"targets": "random", "window": 9, "pos_buckets": 16, "time_buckets": 40},
}


@pytest.mark.parametrize("feature", list(FEATURES))
@pytest.mark.parametrize("kind", ["softmax", "hstu"])
def test_matches_reference_fp32(kind, feature):
    check(jagged_attention_reference, triton_impl, make_inputs(EDGE, kind=kind, **FEATURES[feature]))


@pytest.mark.parametrize("kind", ["softmax", "hstu"])
def test_matches_reference_fp16(kind):
    # fp16 storage, fp32 compute (the interpreter's fp16 tl.dot is wrong, so tiles are upcast). bf16 is left to
    # GPU runs: the interpreter truncates fp32->bf16 instead of rounding.
    check(jagged_attention_reference, triton_impl, make_inputs(EDGE, kind=kind, dtype=torch.float16, **FEATURES["all"]))


@pytest.mark.parametrize(
    "options",
    [{"targets": "all", "pos_buckets": 8}, {"targets": "none", "window": 3}, {"window": 1000, "targets": "random"},
     {"window": 1, "pos_buckets": 4}],
    ids=["all_targets", "no_targets", "window_wider_than_seq", "window_1"],
)
@pytest.mark.parametrize("kind", ["softmax", "hstu"])
def test_targets_and_window_extremes(kind, options):
    check(jagged_attention_reference, triton_impl, make_inputs([1, 7, 40, 0, 19], kind=kind, **options))


@pytest.mark.parametrize("kind", ["softmax", "hstu"])
def test_long_sequence(kind):
    # 1100: past 1024 and not a multiple of the 128x64 tiles; a short one beside it shares the launch.
    check(jagged_attention_reference, triton_impl, make_inputs([1100, 3], heads=1, dim=16, kind=kind, targets="random",
                                                               pos_buckets=32))


@pytest.mark.parametrize("kind", ["softmax", "hstu"])
def test_many_tiny_sequences(kind):
    # Interpreter cost is per program (~20-60 ms each, one per sequence x head x block): 40 sequences, 1 head.
    lengths = torch.randint(0, 4, (40,), generator=torch.Generator().manual_seed(0)).tolist()
    check(jagged_attention_reference, triton_impl,
          make_inputs(lengths, heads=1, kind=kind, targets="random", time_buckets=8))


@pytest.mark.parametrize("lengths", [[], [0, 0, 0]], ids=["no_sequences", "all_empty"])
def test_empty_batches(lengths):
    check(jagged_attention_reference, triton_impl, make_inputs(lengths))


def test_auto_dispatch_uses_triton_and_strided_inputs():
    # q, k, v as views of one fused projection (token stride 3*H*D): the kernels take strides, no copies.
    x = make_inputs([5, 20, 3], heads=2, dim=8, requires_grad=False)
    qkv = torch.randn(28, 3, 2, 8).requires_grad_()
    x.update(q=qkv[:, 0], k=qkv[:, 1], v=qkv[:, 2])
    out = jagged_attention(**x)  # backend="auto" + TRITON_INTERPRET=1 -> triton
    ref = jagged_attention_reference(**x)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    (g,) = torch.autograd.grad(out.square().sum(), qkv)
    (g_ref,) = torch.autograd.grad(ref.square().sum(), qkv)
    torch.testing.assert_close(g, g_ref, atol=1e-5, rtol=1e-5)
