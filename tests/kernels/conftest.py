"""Kernel tests run in the same pytest process as everything else.

Triton decides interpreter-vs-compiler when ``@triton.jit`` decorates, i.e. at import of
``e2erec_kernels.triton_attention``: import it here with TRITON_INTERPRET=1, then restore the environment so
other test folders keep the normal CPU dispatch. Triton also reads the variable while launching, so tests marked
``interpreter`` get it set again for their duration (the dispatcher reads it at call time: "auto" -> triton).

``E2EREC_KERNEL_TESTS=cuda`` (what `scripts/gpu_check.sh` sets on a GPU machine) keeps the compiled kernels
instead: the interpreter tests are skipped and `test_kernels_cuda.py` runs them compiled on the GPU.
"""

import importlib
import os
import sys

import pytest

ON_CUDA = os.environ.get("E2EREC_KERNEL_TESTS") == "cuda"

if not ON_CUDA:
    _previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        _tri = sys.modules.get("e2erec_kernels.triton_attention")
        if _tri is not None and not _tri.INTERPRETED:
            importlib.reload(_tri)
        else:
            importlib.import_module("e2erec_kernels.triton_attention")
    finally:
        if _previous is None:
            os.environ.pop("TRITON_INTERPRET")
        else:
            os.environ["TRITON_INTERPRET"] = _previous


@pytest.fixture(autouse=True)
def _interpreter_env(request, monkeypatch):
    if request.node.get_closest_marker("interpreter"):
        if ON_CUDA:
            pytest.skip("E2EREC_KERNEL_TESTS=cuda: the compiled kernels are tested instead (test_kernels_cuda.py)")
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    yield
