"""Training tests: the real GenerativeRecommender on real MovieLens-100K batches, through DeepSpeed on CPU (gloo).

Semantic IDs are built once per session with the cheapest real tokenizer settings (collaborative embedding, random
quantizer, 16 codes per level) and passed to every run as `train.semantic_ids`, so no test re-tokenizes.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from .helpers import LAUNCH_ENV, TOKENIZER


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def sids_dir(tmp_path_factory, ml100k, ml100k_split) -> Path:
    from e2erec.config import load_run_config
    from e2erec.tokenizer import build_semantic_ids

    cfg = load_run_config(None, TOKENIZER)
    out = tmp_path_factory.mktemp("sids") / "ml100k"
    sids, _ = build_semantic_ids(ml100k, ml100k_split, cfg.tokenizer, os.environ["E2EREC_CACHE"], progress=False)
    sids.save(out)
    return out


@pytest.fixture(scope="session")
def dist_info():
    """A world-size-1 gloo process group for in-process Trainers (one per test session; tests/faults shares it)."""
    from e2erec.train import distributed as D

    saved = {k: os.environ.get(k) for k in LAUNCH_ENV}
    info = D.init_distributed("cpu")
    # The group exists now. Its rendezvous port is held by this process's store: MASTER_ADDR / MASTER_PORT must not
    # reach the subprocesses later tests start with os.environ, which would try to bind the same port (DeepSpeed
    # still reads RANK / LOCAL_RANK / WORLD_SIZE in-process, so those stay until the end).
    for k in ("MASTER_ADDR", "MASTER_PORT"):
        if saved[k] is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = saved[k]
    yield info
    D.shutdown()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
