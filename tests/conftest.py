"""Shared session fixtures: real MovieLens-100K (prepared once per cache) and a small synthetic dataset.

The dataset cache is `E2EREC_CACHE` when set, else `<repo>/.cache/e2erec` (git-ignored), so repeated runs and
subprocesses started by tests (CLI, torchrun) reuse one prepared copy instead of re-preparing per test.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("E2EREC_CACHE", str(REPO / ".cache" / "e2erec"))


@pytest.fixture(scope="session")
def data_cache() -> Path:
    """The dataset cache shared by the whole suite."""
    return Path(os.environ["E2EREC_CACHE"])


@pytest.fixture(scope="session")
def ml100k_config():
    from e2erec.data.config import DataConfig

    return DataConfig(name="ml-100k")


@pytest.fixture(scope="session")
def ml100k(ml100k_config):
    """Real MovieLens-100K (RecBole wheel): 943 users, 1682 items, 100000 events; arrays are read-only memory maps."""
    from e2erec.data import load_dataset

    return load_dataset(ml100k_config, progress=False)


@pytest.fixture(scope="session")
def ml100k_split(ml100k, ml100k_config):
    """Leave-one-out split of `ml100k` (sets `ml100k.items.popularity` from training events)."""
    from e2erec.data import make_split

    return make_split(ml100k, ml100k_config)


@pytest.fixture(scope="session")
def synthetic_small_config():
    from e2erec.data.config import DataConfig, SyntheticConfig

    return DataConfig(name="synthetic", source="synthetic",
                      synthetic=SyntheticConfig(n_users=200, n_items=300, n_events=5_000, n_interests=8, dim=8, seed=0))


@pytest.fixture(scope="session")
def synthetic_small(synthetic_small_config):
    """5000 synthetic events (200 users, <= 300 items) with planted ground truth in `.planted`."""
    from e2erec.data import load_dataset

    return load_dataset(synthetic_small_config, progress=False)


@pytest.fixture(scope="session")
def synthetic_small_split(synthetic_small, synthetic_small_config):
    from e2erec.data import make_split

    return make_split(synthetic_small, synthetic_small_config)
