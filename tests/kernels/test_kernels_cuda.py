"""The compiled Triton kernels on a GPU against the reference: output and every gradient, fp32 and bf16.

Runs where there is a CUDA device and the kernels were not imported under the interpreter: `scripts/gpu_check.sh`
sets E2EREC_KERNEL_TESTS=cuda for that (tests/kernels/conftest.py). bf16 is only checked here: the interpreter
truncates fp32 -> bf16 instead of rounding. The model's variant (targets + position and time biases) at its head
dims, ragged batches that cross every tile size, and one long sequence.
"""

import functools

import pytest
import torch
from e2erec_kernels import jagged_attention, jagged_attention_reference
from e2erec_kernels import triton_attention as T
from e2erec_kernels.testing import check, make_inputs, skewed_lengths

pytestmark = pytest.mark.skipif(not torch.cuda.is_available() or T.INTERPRETED,
                                reason="needs a CUDA device and the compiled kernels (E2EREC_KERNEL_TESTS=cuda)")

triton_impl = functools.partial(jagged_attention, backend="triton")
EDGE = [0, 1, 5, 16, 17, 33, 0, 2, 64, 129, 300, 9]
FEATURES = {
    "plain": {},
    "model": {"targets": "random", "pos_buckets": 64, "time_buckets": 32},  # what the model launches
    "all": {"targets": "random", "window": 100, "pos_buckets": 16, "time_buckets": 40},
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("dim", [64, 128])
@pytest.mark.parametrize("feature", list(FEATURES))
@pytest.mark.parametrize("kind", ["softmax", "hstu"])
def test_compiled_kernels_match_the_reference(kind, feature, dim, dtype):
    check(jagged_attention_reference, triton_impl,
          make_inputs(EDGE, heads=4, dim=dim, kind=kind, dtype=dtype, device="cuda", **FEATURES[feature]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("kind", ["softmax", "hstu"])
def test_long_skewed_batch(kind, dtype):
    lengths = skewed_lengths(24, 4096, 0.25, seed=3)
    check(jagged_attention_reference, triton_impl,
          make_inputs(lengths, heads=2, dim=64, kind=kind, dtype=dtype, device="cuda", **FEATURES["model"]))
